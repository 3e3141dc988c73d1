//! Caption delay and word error rate of the streaming (low-latency) transcriber, offline, in
//! simulated real time: the audio arrives in 20 ms pieces; whenever a step is due it runs, and the
//! audio that arrives while it computes (its wall-clock time) is pushed before the next one.
//! Each step's committed words are one caption (as the element pushes them); its delay is
//! `(live edge at the step + processing time) - its first word's start`.
//!
//! ```text
//! cargo run --release --example stream_delay -- [--model base|DIR] [--step S] [--force S]
//!     [--pause S] [--min-age S] [--min-prob P] [--alone-prob P] [--prompt N] [--threads N] [--verbose] [--debug] [--processing S]
//!     [--manifest TSV] [--all-real] [--all-eval] WAV...
//! ```
//! `--processing S` lets S seconds of audio arrive during every step instead of the step's
//! measured wall-clock time (to judge the policy apart from the load of a shared machine).
//! A WAV listed in the manifest (`file<TAB>reference`, default: the manifests of
//! `../shared/audio/real` and `../shared/audio/eval`) is also scored (English normalisation of
//! `transcribe::text`). `--all-real` / `--all-eval` take every clip of those manifests.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gstwhisperencnpu::model::{default_models_root, WhisperModel};
use gstwhisperencnpu::npu::{BackendChoice, Precision};
use gstwhisperencnpu::transcribe::streaming::{StreamOptions, StreamingTranscriber};
use gstwhisperencnpu::transcribe::text::{normalize_english, read_wav, word_errors};
use gstwhisperencnpu::transcribe::{TranscribeOptions, Transcriber};
use gstwhisperencnpu::window::EncoderOptions;

const PIECE: usize = 320; // 20 ms

fn shared_dir() -> PathBuf {
    std::env::var_os("WHISPERENCNPU_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

fn read_manifest(path: &Path, refs: &mut HashMap<String, String>, order: &mut Vec<PathBuf>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    for line in text.lines().skip(1) {
        if let Some((file, reference)) = line.split_once('\t') {
            refs.insert(file.to_string(), reference.to_string());
            order.push(dir.join(file));
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// `--debug`: the transcriber's `log` records on stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        eprintln!("{}", record.args());
    }
    fn flush(&self) {}
}

fn main() {
    let mut model = default_models_root().join("base");
    let mut options = StreamOptions::default();
    let mut threads = 0;
    let mut verbose = false;
    // Simulated processing time of every step instead of the measured one (the machine shared).
    let mut processing: Option<f64> = None;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut refs = HashMap::new();
    let (mut real, mut eval) = (Vec::new(), Vec::new());
    read_manifest(
        &shared_dir().join("audio/real/manifest.tsv"),
        &mut refs,
        &mut real,
    );
    read_manifest(
        &shared_dir().join("audio/eval/manifest.tsv"),
        &mut refs,
        &mut eval,
    );
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        let secs = |v: String| Duration::from_secs_f64(v.parse().expect("seconds"));
        match a.as_str() {
            "--model" => {
                let v = value();
                model = if Path::new(&v).is_dir() {
                    PathBuf::from(v)
                } else {
                    default_models_root().join(v)
                };
            }
            "--step" => options.step = secs(value()),
            "--force" => options.force_after = secs(value()),
            "--pause" => options.pause = secs(value()),
            "--min-age" => options.min_age = secs(value()),
            "--min-prob" => options.min_word_prob = value().parse().expect("--min-prob P"),
            "--alone-prob" => options.alone_word_prob = value().parse().expect("--alone-prob P"),
            "--prompt" => options.prompt_tokens = value().parse().expect("tokens"),
            "--threads" => threads = value().parse().expect("threads"),
            "--processing" => processing = Some(value().parse().expect("seconds")),
            "--verbose" => verbose = true,
            "--debug" => {
                log::set_logger(&StderrLog).expect("one logger");
                log::set_max_level(log::LevelFilter::Debug);
            }
            "--all-real" => files.extend(real.iter().cloned()),
            "--all-eval" => files.extend(eval.iter().cloned()),
            "--manifest" => {
                let mut order = Vec::new();
                read_manifest(Path::new(&value()), &mut refs, &mut order);
            }
            f => files.push(PathBuf::from(f)),
        }
    }
    let whisper = WhisperModel::load(&model).expect("model");
    let enc = EncoderOptions {
        backend: BackendChoice::Cpu,
        precision: Precision::F32,
        threads,
    };
    let core = Transcriber::new(
        &whisper,
        &enc,
        TranscribeOptions {
            language: Some("en".into()),
            decoder_threads: threads,
            ..TranscribeOptions::default()
        },
    )
    .expect("transcriber");
    let mut st = StreamingTranscriber::new(core, options.clone());
    println!("{options:?}");
    let mut all_delays: Vec<f64> = Vec::new();
    let mut all_processing: Vec<f64> = Vec::new();
    // Sums over the steps: mel + encoder, decoder (with alignment), tokens decoded.
    let (mut t_enc, mut t_dec, mut tokens) = (0.0f64, 0.0f64, 0usize);
    let (mut errors, mut ref_words) = (0usize, 0usize);
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let (audio, rate) = read_wav(&bytes).expect("wav");
        assert_eq!(rate, 16_000, "{}: 16 kHz only", file.display());
        st.reset(0);
        let mut pos = 0usize;
        let mut delays: Vec<f64> = Vec::new();
        let mut text = String::new();
        let report = |r: &gstwhisperencnpu::transcribe::streaming::StepResult,
                      arrival: f64,
                      delays: &mut Vec<f64>,
                      text: &mut String| {
            if let Some(first) = r.committed.first() {
                let delay = arrival - first.start_sample as f64 / 16000.0;
                delays.push(delay);
                let words: Vec<&str> = r.committed.iter().map(|w| w.text.as_str()).collect();
                if verbose {
                    println!(
                        "  {:7.2} s +{delay:.2} s [{:.2}-{:.2}] {:?} {}",
                        arrival,
                        first.start_sample as f64 / 16000.0,
                        r.committed.last().unwrap().end_sample as f64 / 16000.0,
                        r.reason,
                        words.join(" ")
                    );
                }
                for w in words {
                    text.push(' ');
                    text.push_str(w);
                }
            }
            if verbose {
                for s in &r.closed {
                    println!("  segment [{:.2}-{:.2}]{}", s.start, s.end, s.text);
                }
            }
        };
        while pos < audio.len() {
            let end = (pos + PIECE).min(audio.len());
            st.push_audio(&audio[pos..end]);
            pos = end;
            if st.wants_step() {
                let edge = st.pushed_end() as f64 / 16000.0;
                let t0 = Instant::now();
                let r = st.step();
                let measured = t0.elapsed().as_secs_f64();
                all_processing.push(measured);
                let took = processing.unwrap_or(measured);
                t_enc += (r.timing.mel + r.timing.encoder).as_secs_f64();
                t_dec += r.timing.decoder.as_secs_f64();
                tokens += r.timing.decoded_tokens;
                report(&r, edge + took, &mut delays, &mut text);
                // The audio that came while the step ran.
                let target = (pos + (took * 16000.0) as usize).min(audio.len());
                while pos < target {
                    let end = (pos + PIECE).min(target);
                    st.push_audio(&audio[pos..end]);
                    pos = end;
                }
            }
        }
        let edge = st.pushed_end() as f64 / 16000.0;
        let t0 = Instant::now();
        let r = st.finish();
        report(
            &r,
            edge + t0.elapsed().as_secs_f64(),
            &mut delays,
            &mut text,
        );
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let mut sorted = delays.clone();
        sorted.sort_by(f64::total_cmp);
        let mean = sorted.iter().sum::<f64>() / sorted.len().max(1) as f64;
        let wer = refs.get(&name).map(|reference| {
            let r = normalize_english(reference);
            let h = normalize_english(&text);
            let e = word_errors(&r, &h);
            errors += e;
            ref_words += r.len();
            e as f64 / r.len().max(1) as f64
        });
        println!(
            "{name}: {} captions, delay mean {mean:.2} p95 {:.2} max {:.2} s; WER {}",
            delays.len(),
            percentile(&sorted, 0.95),
            sorted.last().copied().unwrap_or(f64::NAN),
            wer.map_or("-".into(), |w| format!("{w:.3}"))
        );
        if verbose || wer.is_some_and(|w| w > 0.15) {
            println!("   text:{text}");
        }
        all_delays.extend(delays);
    }
    let steps = all_processing.len().max(1) as f64;
    println!(
        "per step: mel+encoder {:.3} s, decoder {:.3} s, {:.1} tokens decoded",
        t_enc / steps,
        t_dec / steps,
        tokens as f64 / steps
    );
    all_delays.sort_by(f64::total_cmp);
    all_processing.sort_by(f64::total_cmp);
    let mean = all_delays.iter().sum::<f64>() / all_delays.len().max(1) as f64;
    let proc_mean = all_processing.iter().sum::<f64>() / all_processing.len().max(1) as f64;
    let proc_p95 = percentile(&all_processing, 0.95);
    println!(
        "ALL: {} captions, delay mean {mean:.2} p95 {:.2} max {:.2} s; step processing mean {proc_mean:.3} p95 {proc_p95:.3} max {:.3} s; delay bound at p95 processing {:.2} s; WER {} ({errors}/{ref_words})",
        all_delays.len(),
        percentile(&all_delays, 0.95),
        all_delays.last().copied().unwrap_or(f64::NAN),
        all_processing.last().copied().unwrap_or(f64::NAN),
        st.delay_bound(Duration::from_secs_f64(proc_p95.max(0.0))).as_secs_f64(),
        if ref_words > 0 {
            format!("{:.3}", errors as f64 / ref_words as f64)
        } else {
            "-".into()
        }
    );
}
