//! Load time and peak memory of a model in each format (issue 11).
//!
//! ```sh
//! # base written in every format into a temporary folder, each loaded in its own process
//! cargo run --release --example model_load -- --formats-of base
//! # models given by path or name
//! cargo run --release --example model_load -- base openai/whisper-base ggml-base.en.bin
//! ```
//!
//! For each model, a child process (so that peak memory is the model's own) loads it
//! (`WhisperModel::load`: maps the files and reads the headers), then prepares the encoder and the
//! decoder on the float32 CPU engine (which converts the weights), and prints one line: the load
//! time, the preparation time, the peak resident memory (`VmHWM`) and the size of the files.
//! The times are only meaningful on an idle machine.
#[path = "../tests/convert/mod.rs"]
mod convert;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Instant;

use gstwhisperencnpu::model::decoder::Decoder;
use gstwhisperencnpu::model::{default_models_root, Encoder, WhisperModel};
use gstwhisperencnpu::npu::CpuF32Engine;

/// Peak resident set of this process, from /proc/self/status (kB).
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Bytes of the files a model path holds (a directory's files, or the file).
fn size_bytes(path: &Path) -> u64 {
    let resolved = gstwhisperencnpu::model::locate::resolve(path).unwrap_or(path.to_path_buf());
    if resolved.is_dir() {
        std::fs::read_dir(&resolved)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::metadata(e.path()).ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(&resolved).map(|m| m.len()).unwrap_or(0)
    }
}

/// The child: loads and prepares one model, prints its line.
fn measure(label: &str, path: &Path) -> Result<(), String> {
    let t = Instant::now();
    let model = WhisperModel::load(path).map_err(|e| e.to_string())?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let engine = Arc::new(CpuF32Engine::new());
    let encoder = Encoder::new(&model, engine.clone(), 0).map_err(|e| e.to_string())?;
    let decoder = Decoder::new(&model, engine, 0).map_err(|e| e.to_string())?;
    let tokenizer = model.tokenizer().map_err(|e| e.to_string())?;
    let prepare_ms = t.elapsed().as_secs_f64() * 1e3;
    let peak = peak_rss_kb().unwrap_or(0);
    println!(
        "{label:<34} {:<24} load {load_ms:8.1} ms  prepare {prepare_ms:8.1} ms  peak {:6.0} MB  files {:6.0} MB",
        model.format().name(),
        peak as f64 / 1024.0,
        size_bytes(path) as f64 / 1048576.0
    );
    drop((encoder, decoder, tokenizer));
    Ok(())
}

/// Writes the CTranslate2 model `name` in every format into `dir`; returns (label, path) pairs.
fn write_formats(name: &str, dir: &Path) -> Vec<(String, PathBuf)> {
    let src = default_models_root().join(name);
    let model = WhisperModel::load(&src).expect("the CTranslate2 model (scripts/fetch-models)");
    let tok = model.tokenizer().expect("its tokenizer");
    let tokens: Vec<Vec<u8>> = (0..tok.eot())
        .map(|i| tok.token_bytes(i).to_vec())
        .collect();
    let filters = gstwhisperencnpu::mel::mel_filterbank(model.dims().n_mels, 16_000, 400);
    let mut out = vec![(format!("{name} CTranslate2 (as fetched)"), src.clone())];
    let p = dir.join("ct2-int8");
    convert::write_ct2_int8(&src, &p);
    out.push((format!("{name} CTranslate2 int8"), p));
    let p = dir.join("hf-f16");
    convert::write_hf(&src, &p, convert::StDtype::F16, 1);
    out.push((format!("{name} safetensors f16"), p));
    let p = dir.join("hf-f32-sharded");
    convert::write_hf(&src, &p, convert::StDtype::F32, 2);
    out.push((format!("{name} safetensors f32, 2 shards"), p));
    for (ty, tag) in [
        (convert::GgmlType::F16, "f16"),
        (convert::GgmlType::Q8_0, "q8_0"),
    ] {
        let p = dir.join(format!("ggml-{name}-{tag}.bin"));
        convert::write_ggml(&src, &p, ty, &tokens, &filters);
        out.push((format!("{name} ggml {tag}"), p));
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let (Some(label), Some(path)) = (args.get(1), args.get(2)) else {
            return ExitCode::FAILURE;
        };
        return match measure(label, Path::new(path)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("{label}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let models: Vec<(String, PathBuf)> = match args.as_slice() {
        [flag, name] if flag == "--formats-of" => write_formats(name, tmp.path()),
        [] => {
            println!("usage: model_load --formats-of NAME | MODEL...");
            return ExitCode::FAILURE;
        }
        paths => paths
            .iter()
            .map(|p| (p.clone(), PathBuf::from(p)))
            .collect(),
    };
    let exe = std::env::current_exe().expect("own path");
    let mut ok = true;
    for (label, path) in models {
        let status = Command::new(&exe)
            .arg("--child")
            .arg(&label)
            .arg(&path)
            .status();
        ok &= status.is_ok_and(|s| s.success());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
