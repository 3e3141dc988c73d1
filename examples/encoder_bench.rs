//! Times the encoder on one window of log-mel frames and prints the times as JSON; driven by
//! `scripts/bench-vs-ct2`, usable by hand.
//!
//! ```sh
//! cargo run --release --example encoder_bench -- --model base --precision int8 --threads 2 \
//!     --mel ../shared/golden/mel_jfk.npy --runs 30 [--batch N] [--save out.npy] [--serve]
//! ```
//!
//! `--batch N` encodes N copies of the window in one pass, as the shared encoder batches the
//! windows of N streams ([`Encoder::forward_batch_into`]); the times are then per window (the
//! pass's time / N), so they compare with `--batch 1` directly.
//!
//! Without `--serve`: `--warmup` untimed runs, then `--runs` timed ones, one JSON line
//! `{"model":..,"precision":..,"threads":..,"times_ms":[..],"median_ms":..}`.
//! With `--serve`: after the warm-up prints `{"ready":true,..}` and then reads commands on stdin,
//! one a line: `run` encodes once and prints `{"ms":..}`, `quit` (or end of input) exits. A driver
//! can so interleave our runs with another engine's, in one process each, sharing the machine's
//! noise. `--save PATH` writes the output of the last run as float32 `.npy`.
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use gstwhisperencnpu::model::{default_models_root, Encoder, WhisperModel};
use gstwhisperencnpu::npu::{open_engine, BackendChoice, Precision};
use ndarray::Array2;

struct Args {
    model: PathBuf,
    precision: Precision,
    threads: usize,
    mel: PathBuf,
    runs: usize,
    warmup: usize,
    save: Option<PathBuf>,
    serve: bool,
    batch: usize,
}

fn usage() -> &'static str {
    "usage: encoder_bench [--model NAME|DIR] [--precision f32|int8] [--threads N] [--mel FILE.npy] \
     [--runs N] [--warmup N] [--batch N] [--save OUT.npy] [--serve]"
}

fn parse() -> Result<Args, String> {
    let shared = std::env::var_os("WHISPERENCNPU_SHARED")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let mut a = Args {
        model: PathBuf::from("base"),
        precision: Precision::F32,
        threads: 2,
        mel: shared.join("golden/mel_jfk.npy"),
        runs: 30,
        warmup: 3,
        save: None,
        serve: false,
        batch: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = PathBuf::from(value()?),
            "--precision" => {
                a.precision = match value()?.as_str() {
                    "f32" | "float32" => Precision::F32,
                    "int8" => Precision::Int8,
                    p => return Err(format!("unknown precision {p:?}")),
                }
            }
            "--threads" => a.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--mel" => a.mel = PathBuf::from(value()?),
            "--runs" => a.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--warmup" => a.warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--save" => a.save = Some(PathBuf::from(value()?)),
            "--serve" => a.serve = true,
            "--batch" => {
                a.batch = value()?.parse().map_err(|e| format!("--batch: {e}"))?;
                if a.batch == 0 {
                    return Err("--batch: at least 1".to_string());
                }
            }
            "-h" | "--help" => return Err(usage().to_string()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    // A bare name is an installed model (scripts/fetch-models).
    if !a.model.is_dir() && a.model.components().count() == 1 {
        a.model = default_models_root().join(&a.model);
    }
    Ok(a)
}

/// CPU time of this process so far (user + system, all threads), from /proc (Linux), in ms.
fn process_cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux architecture that matters here.
    Some(ticks * 10.0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

fn run(a: &Args) -> Result<(), String> {
    if !a.model.join("model.bin").is_file() {
        return Err(format!(
            "no model in {}: run scripts/fetch-models (or set WHISPERENCNPU_MODELS)",
            a.model.display()
        ));
    }
    let model = WhisperModel::load(&a.model).map_err(|e| e.to_string())?;
    let mel: Array2<f32> = ndarray_npy::read_npy(&a.mel)
        .map_err(|e| format!("reading mel {}: {e}", a.mel.display()))?;
    let engine = open_engine(BackendChoice::Cpu, a.precision).map_err(|e| e.to_string())?;
    let mut encoder = Encoder::new(&model, engine, a.threads).map_err(|e| e.to_string())?;
    let shape = (Encoder::positions_for(mel.ncols()), encoder.d_model());
    let mut outs: Vec<Array2<f32>> = (0..a.batch).map(|_| Array2::zeros(shape)).collect();
    let mels = vec![mel.view(); a.batch];
    let per_window = a.batch as f64;
    let mut once = |outs: &mut Vec<Array2<f32>>| -> Result<f64, String> {
        let mut views: Vec<_> = outs.iter_mut().map(|o| o.view_mut()).collect();
        let t = Instant::now();
        encoder
            .forward_batch_into(&mels, &mut views)
            .map_err(|e| e.to_string())?;
        Ok(t.elapsed().as_secs_f64() * 1e3 / per_window)
    };
    for _ in 0..a.warmup {
        once(&mut outs)?;
    }
    let name = a.model.file_name().unwrap_or_default().to_string_lossy();
    let head = format!(
        "\"model\":\"{name}\",\"precision\":\"{}\",\"threads\":{},\"batch\":{}",
        a.precision, a.threads, a.batch
    );
    let stdout = std::io::stdout();
    if a.serve {
        writeln!(stdout.lock(), "{{\"ready\":true,{head}}}").map_err(|e| e.to_string())?;
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| e.to_string())?;
            match line.trim() {
                "run" => {
                    let ms = once(&mut outs)?;
                    writeln!(stdout.lock(), "{{\"ms\":{ms:.4}}}").map_err(|e| e.to_string())?;
                }
                "quit" => break,
                "" => {}
                other => return Err(format!("unknown command {other:?}")),
            }
        }
    } else {
        let cpu0 = process_cpu_ms();
        let times = (0..a.runs)
            .map(|_| once(&mut outs))
            .collect::<Result<Vec<f64>, String>>()?;
        // CPU time per window (all threads; includes the pool's spinning while it waits): with
        // --threads 1 a measure that other processes on the machine hardly disturb.
        let windows = (a.runs * a.batch) as f64;
        let cpu = match (cpu0, process_cpu_ms()) {
            (Some(a0), Some(a1)) if a.runs > 0 => format!("{:.2}", (a1 - a0) / windows),
            _ => "null".to_string(),
        };
        let list: Vec<String> = times.iter().map(|t| format!("{t:.4}")).collect();
        writeln!(
            stdout.lock(),
            "{{{head},\"times_ms\":[{}],\"median_ms\":{:.4},\"cpu_ms_per_run\":{cpu}}}",
            list.join(","),
            median(&times)
        )
        .map_err(|e| e.to_string())?;
    }
    if let Some(path) = &a.save {
        ndarray_npy::write_npy(path, &outs[0]).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("encoder_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
