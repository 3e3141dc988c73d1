//! Word error rate of the transcriber on the evaluation clips (`../shared/audio/eval/manifest.tsv`),
//! next to faster-whisper's published figures (`../shared/audio/README.md`).
//!
//! ```text
//! cargo run --release --example eval -- [--model base|tiny.en|DIR] [--manifest PATH]
//!     [--language en|auto] [--beam N] [--no-prompt] [--threads N] [--verbose]
//!     [--file WAV ...]            transcribe these files instead, printing the segments
//!     [--decoder-speed]           time one decoder step (batch 1 and 5) instead
//! ```
//!
//! The audio is pushed in 0.5 s chunks as a live stream would bring it; windows are decoded as soon
//! as they are full, and the rest at the end of the clip.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gstwhisperencnpu::model::{default_models_root, WhisperModel};
use gstwhisperencnpu::npu::{BackendChoice, Precision};
use gstwhisperencnpu::transcribe::text::{normalize_english, read_wav, word_errors};
use gstwhisperencnpu::transcribe::{Segment, TranscribeOptions, Transcriber, WindowResult};
use gstwhisperencnpu::window::EncoderOptions;

struct Args {
    model: PathBuf,
    manifest: PathBuf,
    options: TranscribeOptions,
    threads: usize,
    verbose: bool,
    files: Vec<PathBuf>,
    decoder_speed: bool,
}

fn shared_dir() -> PathBuf {
    std::env::var_os("WHISPERENCNPU_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

fn usage() -> ! {
    eprintln!(
        "usage: eval [--model base|tiny.en|DIR] [--manifest PATH] [--language CODE|auto] \
         [--beam N] [--no-prompt] [--threads N] [--verbose] [--file WAV ...] [--decoder-speed]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        model: default_models_root().join("base"),
        manifest: shared_dir().join("audio/eval/manifest.tsv"),
        options: TranscribeOptions {
            language: Some("en".into()),
            ..TranscribeOptions::default()
        },
        threads: 0,
        verbose: false,
        files: Vec::new(),
        decoder_speed: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--model" => {
                let v = value();
                let p = PathBuf::from(&v);
                a.model = if p.is_dir() {
                    p
                } else {
                    default_models_root().join(v)
                };
            }
            "--manifest" => a.manifest = PathBuf::from(value()),
            "--language" => {
                let v = value();
                a.options.language = (v != "auto").then_some(v);
            }
            "--beam" => a.options.beam_size = value().parse().unwrap_or_else(|_| usage()),
            "--no-prompt" => a.options.use_prompt = false,
            "--threads" => a.threads = value().parse().unwrap_or_else(|_| usage()),
            "--verbose" | "-v" => a.verbose = true,
            "--file" => a.files.push(PathBuf::from(value())),
            "--decoder-speed" => a.decoder_speed = true,
            "--help" | "-h" => usage(),
            _ => usage(),
        }
    }
    a
}

/// Transcribes a file as a stream; returns the windows.
fn transcribe(
    t: &mut Transcriber,
    path: &Path,
    verbose: bool,
) -> Result<Vec<WindowResult>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (audio, rate) = read_wav(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if rate != 16_000 {
        return Err(format!("{}: {rate} Hz, 16000 needed", path.display()));
    }
    t.reset(0);
    let mut windows = Vec::new();
    let show = |w: &WindowResult| {
        if verbose {
            for s in &w.segments {
                println!("  [{:7.2} -> {:7.2}] {}", s.start, s.end, s.text.trim());
            }
        }
    };
    for chunk in audio.chunks(8000) {
        t.push_audio(chunk);
        while let Some(w) = t.next_window() {
            show(&w);
            windows.push(w);
        }
    }
    for w in t.finish() {
        show(&w);
        windows.push(w);
    }
    Ok(windows)
}

/// faster-whisper's figures from the README of the audio folder, by file name.
fn reference_figures(readme: &Path) -> (Option<f64>, HashMap<String, f64>) {
    let text = std::fs::read_to_string(readme).unwrap_or_default();
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let overall = flat
        .split("overall word error rate ")
        .nth(1)
        .and_then(|r| r.split([' ', ';', ',']).next())
        .and_then(|v| v.parse().ok());
    let mut per_clip = HashMap::new();
    if let Some(list) = flat.split("per clip:").nth(1) {
        let list = list.split('.').collect::<Vec<_>>();
        // Numbers have a dot: re-join "0" "118" pieces.
        let list = list.join(".");
        for item in list.split(',') {
            let item = item.trim();
            let Some((name, value)) = item.rsplit_once(' ') else {
                continue;
            };
            let value: String = value
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let value = value.trim_end_matches('.');
            if let Ok(v) = value.parse::<f64>() {
                per_clip.insert(name.to_string(), v);
            }
        }
    }
    (overall, per_clip)
}

/// The README's name of a clip: `jfk`, `espeak-1`, `espeak-1 noisy`, `long-form`.
fn clip_name(file: &str) -> String {
    let stem = Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem.starts_with("long-form") {
        return "long-form".into();
    }
    if let Some(rest) = stem.strip_prefix("espeak-") {
        let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let noisy = if stem.ends_with("-noisy") {
            " noisy"
        } else {
            ""
        };
        return format!("espeak-{n}{noisy}");
    }
    stem
}

fn main() {
    let args = parse_args();
    let model = WhisperModel::load(&args.model).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let enc = EncoderOptions {
        backend: BackendChoice::Cpu,
        precision: Precision::F32,
        threads: args.threads,
    };
    let mut options = args.options.clone();
    options.decoder_threads = args.threads;
    let mut t = Transcriber::new(&model, &enc, options).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });

    if args.decoder_speed {
        decoder_speed(&model, args.threads);
        return;
    }
    if !args.files.is_empty() {
        for f in &args.files {
            println!("{}", f.display());
            match transcribe(&mut t, f, true) {
                Ok(ws) => print_timing(&ws),
                Err(e) => eprintln!("{e}"),
            }
        }
        return;
    }

    let manifest = std::fs::read_to_string(&args.manifest).unwrap_or_else(|e| {
        eprintln!("{}: {e}", args.manifest.display());
        std::process::exit(1)
    });
    let base = args.manifest.parent().unwrap_or(Path::new("."));
    let (fw_overall, fw_clips) = reference_figures(&base.join("../README.md"));
    println!(
        "model {} ({}), {}, language {}, prompt {}",
        args.model.display(),
        if model.dims().is_multilingual() {
            "multilingual"
        } else {
            "English-only"
        },
        if args.options.beam_size <= 1 {
            "greedy".to_string()
        } else {
            format!("beam {}", args.options.beam_size)
        },
        args.options.language.as_deref().unwrap_or("auto"),
        if args.options.use_prompt { "on" } else { "off" },
    );
    println!(
        "{:<28} {:>6} {:>6} {:>7} {:>14} {:>9}",
        "clip", "words", "errors", "WER", "faster-whisper", "RTF"
    );
    let (mut total_words, mut total_errors) = (0usize, 0usize);
    let mut total_audio = 0.0f64;
    let mut total_time = Duration::ZERO;
    for line in manifest.lines().skip(1) {
        let Some((file, reference)) = line.split_once('\t') else {
            continue;
        };
        let path = base.join(file);
        let started = Instant::now();
        let windows = match transcribe(&mut t, &path, args.verbose) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1)
            }
        };
        let elapsed = started.elapsed();
        let audio: f64 = windows.last().map_or(0.0, |w| {
            (w.start_sample + w.audio_samples as u64) as f64 / 16000.0
        });
        let hyp: String = windows
            .iter()
            .flat_map(|w| w.segments.iter())
            .map(|s: &Segment| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let r = normalize_english(reference);
        let h = normalize_english(&hyp);
        let errors = word_errors(&r, &h);
        total_words += r.len();
        total_errors += errors;
        total_audio += audio;
        total_time += elapsed;
        let name = clip_name(file);
        let fw = fw_clips
            .get(&name)
            .map_or("-".to_string(), |v| format!("{v:.3}"));
        println!(
            "{:<28} {:>6} {:>6} {:>7.3} {:>14} {:>9.3}",
            file,
            r.len(),
            errors,
            errors as f64 / r.len().max(1) as f64,
            fw,
            elapsed.as_secs_f64() / audio.max(1e-9)
        );
        if args.verbose {
            println!("  hyp: {}", h.join(" "));
            println!("  ref: {}", r.join(" "));
        }
    }
    println!(
        "{:<28} {:>6} {:>6} {:>7.3} {:>14} {:>9.3}",
        "overall",
        total_words,
        total_errors,
        total_errors as f64 / total_words.max(1) as f64,
        fw_overall.map_or("-".to_string(), |v| format!("{v:.3}")),
        total_time.as_secs_f64() / total_audio.max(1e-9)
    );
}

fn print_timing(ws: &[WindowResult]) {
    for w in ws {
        println!(
            "  window {} at {:.2} s: {:.2} s audio, next seek {:.2} s, encoder {:.0} ms, decoder {:.0} ms \
             ({} tokens), T={}{}{}",
            w.index,
            w.start_sample as f64 / 16000.0,
            w.audio_samples as f64 / 16000.0,
            w.next_seek as f64 / 16000.0,
            w.timing.encoder.as_secs_f64() * 1e3,
            w.timing.decoder.as_secs_f64() * 1e3,
            w.timing.decoded_tokens,
            w.temperature,
            if w.no_speech { ", no speech" } else { "" },
            if w.failed { ", failed" } else { "" },
        );
    }
}

/// Milliseconds per decoder step (one token through the layers and the logits), for a batch of one
/// (greedy) and of five (beam search, best-of), after a prompt of 100 tokens.
fn decoder_speed(model: &WhisperModel, threads: usize) {
    use gstwhisperencnpu::model::decoder::Decoder;
    use gstwhisperencnpu::npu::CpuF32Engine;
    let dec = Decoder::new(model, std::sync::Arc::new(CpuF32Engine::new()), threads)
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
    let d = model.dims();
    let enc = ndarray::Array2::<f32>::from_shape_fn((512, d.d_model), |(i, j)| {
        ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5
    });
    let started = Instant::now();
    let cross = dec.cross_kv(enc.view());
    println!(
        "cross-attention keys/values of a window: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    for batch in [1usize, 5] {
        let mut cache = dec.new_cache();
        let prompt: Vec<u32> = (0..100).map(|i| 1000 + i).collect();
        let started = Instant::now();
        dec.forward(&mut cache, &cross, &prompt, prompt.len());
        let prompt_ms = started.elapsed().as_secs_f64() * 1e3;
        cache.repeat(batch);
        let steps = 50;
        let started = Instant::now();
        for s in 0..steps {
            let h = dec.forward(&mut cache, &cross, &vec![2000 + s; batch], 1);
            std::hint::black_box(dec.logits(h.view()));
        }
        let per = started.elapsed().as_secs_f64() * 1e3 / f64::from(steps);
        println!(
            "batch {batch}: prompt of 100 tokens {prompt_ms:.1} ms, {per:.2} ms per step \
             ({:.2} ms per token)",
            per / batch as f64
        );
    }
}
