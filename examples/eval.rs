//! Word error rate of the transcriber on the evaluation clips (`../shared/audio/eval/manifest.tsv`),
//! next to faster-whisper's published figures (`../shared/audio/README.md`), or next to
//! faster-whisper's figures measured in the same run (`--faster-whisper`).
//!
//! ```text
//! cargo run --release --example eval -- [--model base|tiny.en|DIR] [--manifest PATH]
//!     [--language en|auto] [--beam N] [--no-prompt] [--precision f32|int8] [--decoder-precision f32|int8] [--threads N] [--verbose]
//!     [--faster-whisper]          also run faster-whisper on the clips (see below)
//!     [--file WAV ...]            transcribe these files instead, printing the segments
//!     [--decoder-speed]           time one decoder step (batch 1 and 5) instead
//!     [--hypotheses FILE]         write each clip's text there, for scripts/score_eval.py
//!     [--latency-mode full|low]   how the stream is decoded (the element's latency-mode)
//!     [--write-join N DIR]        write the manifest's clips joined (1 s of silence after each),
//!                                 N times over, as DIR/joined-xN.wav with DIR/manifest.tsv (and
//!                                 DIR/parts.tsv: round, clip and reference of each part); stop
//! ```
//!
//! `--verbose` (or `WHISPERENCNPU_DEBUG_DECODE=1`) also prints the transcriber's decisions for
//! every window on stderr (its `log` records; in the element: `GST_DEBUG=whisperencnpu:6`).
//!
//! The audio is pushed in 0.5 s chunks as a live stream would bring it; windows are decoded as soon
//! as they are full, and the rest at the end of the clip.
//!
//! `--faster-whisper` runs `scripts/faster_whisper_eval.py` first, with the Python of
//! `$WHISPERENCNPU_FW_PYTHON` (set by `scripts/eval --faster-whisper`, which creates the virtual
//! environment), else of `${CARGO_TARGET_DIR:-target}/fw-venv`: the same model directory in
//! float32, the same thread count, language, beam size and prompt setting, everything else at
//! faster-whisper's defaults (best_of 5, temperature fallback, no VAD). Its text is scored with our
//! normalisation and word error count, like ours.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gstwhisperencnpu::model::{default_models_root, WhisperModel};
use gstwhisperencnpu::npu::{BackendChoice, Precision};
use gstwhisperencnpu::transcribe::streaming::{StreamOptions, StreamingTranscriber};
use gstwhisperencnpu::transcribe::text::{normalize_english, read_wav, word_errors};
use gstwhisperencnpu::transcribe::{Segment, TranscribeOptions, Transcriber, WindowResult};
use gstwhisperencnpu::window::EncoderOptions;

/// The transcriber's decoding diagnostics (the `log` crate, target `whisperencnpu`) on stderr:
/// every window's decisions. The element routes them to its GStreamer debug category instead.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target().starts_with("whisperencnpu")
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("{}", record.args());
        }
    }

    fn flush(&self) {}
}

static STDERR_LOGGER: StderrLogger = StderrLogger;

struct Args {
    model: PathBuf,
    manifest: PathBuf,
    options: TranscribeOptions,
    threads: usize,
    verbose: bool,
    files: Vec<PathBuf>,
    decoder_speed: bool,
    faster_whisper: bool,
    /// Encoder and decoder precision (the element's `precision`).
    precision: Precision,
    /// Where to write each clip's text (`FILE<TAB>TEXT<TAB>SECONDS<TAB>AUDIO_SECONDS`), for
    /// `scripts/score_eval.py`.
    hypotheses: Option<PathBuf>,
    latency_mode: LatencyMode,
    /// Write the manifest's clips joined, this many times over, into this folder, and stop.
    write_join: Option<(usize, PathBuf)>,
}

/// The element's `latency-mode`: how the stream is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LatencyMode {
    /// Whole 10.24 s windows ([`Transcriber`]), as for files.
    Full,
    /// The window sliding with the live edge, words committed as they stabilise.
    Low,
}

fn shared_dir() -> PathBuf {
    std::env::var_os("WHISPERENCNPU_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

fn usage() -> ! {
    eprintln!(
        "usage: eval [--model base|tiny.en|DIR] [--manifest PATH] [--language CODE|auto] \
         [--beam N] [--no-prompt] [--precision f32|int8] [--decoder-precision f32|int8] [--threads N] [--verbose] [--faster-whisper] [--file WAV ...] \
         [--decoder-speed] [--hypotheses FILE] [--latency-mode full|low] [--write-join N DIR]"
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
        faster_whisper: false,
        precision: Precision::F32,
        hypotheses: None,
        latency_mode: LatencyMode::Full,
        write_join: None,
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
            "--precision" => {
                a.precision = match value().as_str() {
                    "f32" => Precision::F32,
                    "int8" => Precision::Int8,
                    _ => usage(),
                };
                a.options.decoder_precision = a.precision;
            }
            "--decoder-precision" => {
                a.options.decoder_precision = match value().as_str() {
                    "f32" => Precision::F32,
                    "int8" => Precision::Int8,
                    _ => usage(),
                }
            }
            "--threads" => a.threads = value().parse().unwrap_or_else(|_| usage()),
            "--verbose" | "-v" => a.verbose = true,
            "--file" => a.files.push(PathBuf::from(value())),
            "--decoder-speed" => a.decoder_speed = true,
            "--faster-whisper" => a.faster_whisper = true,
            "--hypotheses" => a.hypotheses = Some(PathBuf::from(value())),
            "--write-join" => {
                let n = value().parse().unwrap_or_else(|_| usage());
                a.write_join = Some((n, PathBuf::from(value())));
            }
            "--latency-mode" => {
                a.latency_mode = match value().as_str() {
                    "full" => LatencyMode::Full,
                    "low" => LatencyMode::Low,
                    _ => usage(),
                }
            }
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

/// What walks the clips, as the element's `latency-mode` says.
enum Engine {
    Full(Box<Transcriber>),
    Low(Box<StreamingTranscriber>),
}

/// Transcribes a file with the low-latency mode's streaming transcriber, the audio pushed in 20 ms
/// pieces and a step whenever one is due (as when processing keeps up with a live source); returns
/// the committed text and the audio's length in seconds.
fn transcribe_low_latency(
    s: &mut StreamingTranscriber,
    path: &Path,
    verbose: bool,
) -> Result<(String, f64), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (audio, rate) = read_wav(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if rate != 16_000 {
        return Err(format!("{}: {rate} Hz, 16000 needed", path.display()));
    }
    s.reset(0);
    let mut words: Vec<String> = Vec::new();
    let mut take = |r: gstwhisperencnpu::transcribe::streaming::StepResult| {
        if verbose && !r.committed.is_empty() {
            let text: Vec<&str> = r.committed.iter().map(|w| w.text.as_str()).collect();
            println!(
                "  [{:7.2} -> {:7.2}] {}",
                r.committed[0].start_sample as f64 / 16000.0,
                r.committed[r.committed.len() - 1].end_sample as f64 / 16000.0,
                text.join(" ")
            );
        }
        words.extend(r.committed.into_iter().map(|w| w.text));
    };
    for chunk in audio.chunks(320) {
        s.push_audio(chunk);
        if s.wants_step() {
            take(s.step());
        }
    }
    take(s.finish());
    Ok((words.join(" "), audio.len() as f64 / 16000.0))
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

/// faster-whisper's transcription of one file.
struct FwResult {
    text: String,
    seconds: f64,
    audio_seconds: f64,
}

/// faster-whisper's run: versions, results by file.
struct FwRun {
    versions: String,
    results: HashMap<String, FwResult>,
}

/// The Python of faster-whisper's virtual environment.
fn fw_python() -> PathBuf {
    if let Some(p) = std::env::var_os("WHISPERENCNPU_FW_PYTHON") {
        return PathBuf::from(p);
    }
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("target"));
    target.join("fw-venv/bin/python")
}

/// Runs `scripts/faster_whisper_eval.py` on the files with our settings; exits on failure.
fn run_faster_whisper(args: &Args, threads: usize, files: &[PathBuf]) -> FwRun {
    let python = fw_python();
    if !python.exists() {
        eprintln!(
            "eval: faster-whisper's Python {} is missing: run `scripts/eval --faster-whisper` \
             (or `make eval-vs-faster-whisper`), which creates its virtual environment, or set \
             WHISPERENCNPU_FW_PYTHON",
            python.display()
        );
        std::process::exit(1)
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/faster_whisper_eval.py");
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(&script)
        .arg("--model-dir")
        .arg(&args.model)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--language")
        .arg(args.options.language.as_deref().unwrap_or("auto"))
        .arg("--beam")
        .arg(args.options.beam_size.max(1).to_string());
    if !args.options.use_prompt {
        cmd.arg("--no-prompt");
    }
    cmd.args(files)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    eprintln!(
        "running faster-whisper on {} clips ({threads} threads)...",
        files.len()
    );
    let out = cmd.output().unwrap_or_else(|e| {
        eprintln!("eval: {} {}: {e}", python.display(), script.display());
        std::process::exit(1)
    });
    if !out.status.success() {
        eprintln!("eval: faster-whisper failed ({})", out.status);
        std::process::exit(1)
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut run = FwRun {
        versions: String::new(),
        results: HashMap::new(),
    };
    for line in stdout.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.first() == Some(&"#") {
            // #, faster-whisper, VERSION, ctranslate2, VERSION
            run.versions = cols[1..]
                .chunks(2)
                .map(|c| c.join(" "))
                .collect::<Vec<_>>()
                .join(" on ");
            continue;
        }
        if cols.len() < 4 {
            continue;
        }
        run.results.insert(
            cols[0].to_string(),
            FwResult {
                text: cols[1].to_string(),
                seconds: cols[2].parse().unwrap_or(f64::NAN),
                audio_seconds: cols[3].parse().unwrap_or(f64::NAN),
            },
        );
    }
    for f in files {
        if !run.results.contains_key(&f.to_string_lossy().into_owned()) {
            eprintln!("eval: faster-whisper gave no result for {}", f.display());
            std::process::exit(1)
        }
    }
    run
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

/// Seconds of silence after each clip of a join.
const JOIN_GAP_SECONDS: usize = 1;

/// The manifest's clips in order, 1 s of silence after each, `times` times over, as one 16 kHz
/// 16-bit WAV file with a manifest of its own (the references joined likewise) in `dir`.
fn write_join(manifest: &Path, times: usize, dir: &Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let base = manifest.parent().unwrap_or(Path::new("."));
    let mut audio: Vec<f32> = Vec::new();
    let mut references: Vec<&str> = Vec::new();
    // Round, clip and reference of each part, for scores per part (score_eval.py --parts).
    let mut parts = String::from("round\tclip\treference\n");
    for round in 1..=times {
        for (file, reference) in text.lines().skip(1).filter_map(|l| l.split_once('\t')) {
            let path = base.join(file);
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let (samples, rate) =
                read_wav(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            if rate != 16_000 {
                return Err(format!("{}: {rate} Hz, 16000 needed", path.display()));
            }
            audio.extend_from_slice(&samples);
            audio.resize(audio.len() + JOIN_GAP_SECONDS * 16_000, 0.0);
            references.push(reference.trim());
            parts.push_str(&format!("{round}\t{file}\t{}\n", reference.trim()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = format!("joined-x{times}.wav");
    let data: Vec<u8> = audio
        .iter()
        .flat_map(|&x| ((x.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
        .collect();
    let mut wav = Vec::with_capacity(44 + data.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&32_000u32.to_le_bytes()); // bytes a second
    wav.extend_from_slice(&2u16.to_le_bytes()); // bytes a frame
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    let wav_path = dir.join(&name);
    std::fs::write(&wav_path, wav).map_err(|e| format!("{}: {e}", wav_path.display()))?;
    let manifest_out = dir.join("manifest.tsv");
    std::fs::write(
        &manifest_out,
        format!("file\treference\n{name}\t{}\n", references.join(" ")),
    )
    .map_err(|e| format!("{}: {e}", manifest_out.display()))?;
    let parts_out = dir.join("parts.tsv");
    std::fs::write(&parts_out, parts).map_err(|e| format!("{}: {e}", parts_out.display()))?;
    eprintln!(
        "{}: {:.1} s, {} clips",
        wav_path.display(),
        audio.len() as f64 / 16_000.0,
        references.len()
    );
    Ok(())
}

fn main() {
    let args = parse_args();
    if let Some((times, dir)) = &args.write_join {
        if let Err(e) = write_join(&args.manifest, *times, dir) {
            eprintln!("eval: {e}");
            std::process::exit(1)
        }
        return;
    }
    // --verbose, or WHISPERENCNPU_DEBUG_DECODE set as before the diagnostics went through `log`.
    if (args.verbose || std::env::var_os("WHISPERENCNPU_DEBUG_DECODE").is_some())
        && log::set_logger(&STDERR_LOGGER).is_ok()
    {
        log::set_max_level(log::LevelFilter::Debug);
    }
    let model = WhisperModel::load(&args.model).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let enc = EncoderOptions {
        backend: BackendChoice::Cpu,
        precision: args.precision,
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
    let clips: Vec<(&str, &str)> = manifest
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once('\t'))
        .collect();
    let fw = args.faster_whisper.then(|| {
        let threads = if args.threads > 0 {
            args.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        let files: Vec<PathBuf> = clips.iter().map(|(f, _)| base.join(f)).collect();
        (run_faster_whisper(&args, threads, &files), threads)
    });
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
    if let Some((run, threads)) = &fw {
        println!(
            "{}, measured in this run: same model directory, float32, {threads} threads, same \
             decoding options, its text scored as ours (published: ../shared/audio/README.md)",
            run.versions
        );
        println!(
            "{:<28} {:>6} | {:<22} | {:<29} | {:>9}",
            "", "", "ours", "faster-whisper, this run", "faster-w."
        );
        println!(
            "{:<28} {:>6} | {:>6} {:>7} {:>7} | {:>9} {:>9} {:>9} | {:>9}",
            "clip", "words", "errors", "WER", "RTF", "errors", "WER", "RTF", "published"
        );
    } else {
        println!(
            "{:<28} {:>6} {:>6} {:>7} {:>14} {:>9}",
            "clip", "words", "errors", "WER", "faster-whisper", "RTF"
        );
    }
    let (mut total_words, mut total_errors) = (0usize, 0usize);
    let mut total_audio = 0.0f64;
    let mut total_time = Duration::ZERO;
    let (mut fw_errors_total, mut fw_time, mut fw_audio) = (0usize, 0.0f64, 0.0f64);
    let mut hypotheses = format!(
        "#\twhisperencnpu\t{}\tlatency-mode\t{:?}\n",
        args.model.display(),
        args.latency_mode
    );
    // The low-latency mode walks the clips with the streaming transcriber (on the same prepared
    // model); its text is the committed words.
    let mut engine = match args.latency_mode {
        LatencyMode::Low => Engine::Low(Box::new(StreamingTranscriber::new(
            t,
            StreamOptions::default(),
        ))),
        LatencyMode::Full => Engine::Full(Box::new(t)),
    };
    for &(file, reference) in &clips {
        let path = base.join(file);
        let started = Instant::now();
        let result = match &mut engine {
            Engine::Low(s) => transcribe_low_latency(s, &path, args.verbose),
            Engine::Full(t) => transcribe(t, &path, args.verbose).map(|windows| {
                let audio = windows.last().map_or(0.0, |w| {
                    (w.start_sample + w.audio_samples as u64) as f64 / 16000.0
                });
                let text = windows
                    .iter()
                    .flat_map(|w| w.segments.iter())
                    .map(|s: &Segment| s.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                (text, audio)
            }),
        };
        let (hyp, audio) = result.unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
        let elapsed = started.elapsed();
        hypotheses.push_str(&format!(
            "{file}\t{}\t{:.3}\t{audio:.3}\n",
            hyp.replace(['\t', '\n'], " ").trim(),
            elapsed.as_secs_f64()
        ));
        let r = normalize_english(reference);
        let h = normalize_english(&hyp);
        let errors = word_errors(&r, &h);
        total_words += r.len();
        total_errors += errors;
        total_audio += audio;
        total_time += elapsed;
        let name = clip_name(file);
        let published = fw_clips
            .get(&name)
            .map_or("-".to_string(), |v| format!("{v:.3}"));
        let wer = errors as f64 / r.len().max(1) as f64;
        let rtf = elapsed.as_secs_f64() / audio.max(1e-9);
        let mut fw_hyp = None;
        if let Some((run, _)) = &fw {
            let res = &run.results[&path.to_string_lossy().into_owned()];
            let fh = normalize_english(&res.text);
            let fe = word_errors(&r, &fh);
            fw_errors_total += fe;
            fw_time += res.seconds;
            fw_audio += res.audio_seconds;
            println!(
                "{:<28} {:>6} | {:>6} {:>7.3} {:>7.3} | {:>9} {:>9.3} {:>9.3} | {:>9}",
                file,
                r.len(),
                errors,
                wer,
                rtf,
                fe,
                fe as f64 / r.len().max(1) as f64,
                res.seconds / res.audio_seconds.max(1e-9),
                published
            );
            fw_hyp = Some(fh);
        } else {
            println!(
                "{:<28} {:>6} {:>6} {:>7.3} {:>14} {:>9.3}",
                file,
                r.len(),
                errors,
                wer,
                published,
                rtf
            );
        }
        if args.verbose {
            println!("  hyp: {}", h.join(" "));
            if let Some(fh) = fw_hyp {
                println!("  fw:  {}", fh.join(" "));
            }
            println!("  ref: {}", r.join(" "));
        }
    }
    if let Some(path) = &args.hypotheses {
        if let Err(e) = std::fs::write(path, hypotheses) {
            eprintln!("eval: {}: {e}", path.display());
            std::process::exit(1)
        }
    }
    let published = fw_overall.map_or("-".to_string(), |v| format!("{v:.3}"));
    let wer = total_errors as f64 / total_words.max(1) as f64;
    let rtf = total_time.as_secs_f64() / total_audio.max(1e-9);
    if fw.is_some() {
        println!(
            "{:<28} {:>6} | {:>6} {:>7.3} {:>7.3} | {:>9} {:>9.3} {:>9.3} | {:>9}",
            "overall",
            total_words,
            total_errors,
            wer,
            rtf,
            fw_errors_total,
            fw_errors_total as f64 / total_words.max(1) as f64,
            fw_time / fw_audio.max(1e-9),
            published
        );
    } else {
        println!(
            "{:<28} {:>6} {:>6} {:>7.3} {:>14} {:>9.3}",
            "overall", total_words, total_errors, wer, published, rtf
        );
    }
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
