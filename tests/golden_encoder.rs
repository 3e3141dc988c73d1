//! The encoder against CTranslate2 4.8's float32 encoder on the same fp16 weights
//! (`shared/golden/enc_<model>_<clip>.npy`, made from `mel_<clip>.npy`).
//!
//! Needs the models installed by scripts/fetch-models; fails (never skips) without them.
use std::path::PathBuf;
use std::sync::Arc;

use gstwhisperencnpu::model::{default_models_root, Encoder, WhisperModel};
use gstwhisperencnpu::npu::CpuF32Engine;
use ndarray::Array2;
use ndarray_npy::read_npy;

/// Required accuracy: relative L2 error against the reference.
const MAX_REL_L2: f64 = 1e-4;

fn golden_dir() -> PathBuf {
    let shared = std::env::var_os("WHISPERENCNPU_SHARED")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    shared.join("golden")
}

fn load_npy(name: &str) -> Array2<f32> {
    let path = golden_dir().join(name);
    assert!(
        path.is_file(),
        "golden file {} is missing: run scripts/fetch-models and make sure the shared data is \
         there (or set WHISPERENCNPU_SHARED to the directory holding golden/)",
        path.display()
    );
    read_npy(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn load_model(name: &str) -> WhisperModel {
    let dir = default_models_root().join(name);
    assert!(
        dir.join("model.bin").is_file(),
        "Whisper model {name:?} is not installed in {}: run scripts/fetch-models \
         (or set WHISPERENCNPU_MODELS to where the models are)",
        dir.display()
    );
    WhisperModel::load(&dir).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn rel_l2(ours: &Array2<f32>, reference: &Array2<f32>) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in ours.iter().zip(reference.iter()) {
        num += (a as f64 - b as f64).powi(2);
        den += (b as f64).powi(2);
    }
    (num / den).sqrt()
}

fn check(model_name: &str, clip: &str) {
    let model = load_model(model_name);
    let mel = load_npy(&format!("mel_{clip}.npy"));
    let reference = load_npy(&format!("enc_{model_name}_{clip}.npy"));
    let mut encoder = Encoder::new(&model, Arc::new(CpuF32Engine::new()), 0).unwrap();
    assert_eq!(mel.nrows(), encoder.n_mels());

    let ours = encoder.forward(mel.view());
    assert_eq!(ours.dim(), reference.dim(), "output shape");
    assert_eq!(ours.nrows(), Encoder::positions_for(mel.ncols()));
    assert!(ours.iter().all(|v| v.is_finite()), "non-finite output");
    let err = rel_l2(&ours, &reference);
    println!("{model_name} {clip}: relative L2 error {err:.3e}");
    assert!(
        err <= MAX_REL_L2,
        "{model_name} {clip}: relative L2 error {err:.3e} > {MAX_REL_L2:e}"
    );

    // A second window through the same (warm) encoder gives the same numbers.
    let again = encoder.forward(mel.view());
    let drift = rel_l2(&again, &ours);
    assert!(drift < 1e-6, "second run differs by {drift:e}");
}

#[test]
fn base_jfk() {
    check("base", "jfk");
}

#[test]
fn base_espeak() {
    check("base", "espeak");
}

#[test]
fn tiny_en_jfk() {
    check("tiny.en", "jfk");
}

#[test]
fn tiny_en_espeak() {
    check("tiny.en", "espeak");
}

/// Shorter and odd-length inputs work and keep the shape contract.
#[test]
fn other_lengths() {
    let model = load_model("tiny.en");
    let mel = load_npy("mel_jfk.npy");
    let mut encoder = Encoder::new(&model, Arc::new(CpuF32Engine::new()), 2).unwrap();
    assert_eq!(encoder.threads(), 2);
    for frames in [2usize, 7, 100, 1024] {
        let out = encoder.forward(mel.slice(ndarray::s![.., ..frames]));
        assert_eq!(out.dim(), (frames.div_ceil(2), encoder.d_model()));
        assert!(out.iter().all(|v| v.is_finite()));
    }
    // Wrong inputs are errors, not panics.
    let wrong_bands = Array2::<f32>::zeros((79, 100));
    assert!(encoder.try_forward(wrong_bands.view()).is_err());
    let too_long = Array2::<f32>::zeros((80, encoder.max_frames() + 2));
    assert!(encoder.try_forward(too_long.view()).is_err());
    let empty = Array2::<f32>::zeros((80, 0));
    assert!(encoder.try_forward(empty.view()).is_err());
}
