//! What the benches share: the installed models (a missing one fails with what to run) and one
//! window of input.
#![allow(dead_code)]

use std::path::PathBuf;

use gstwhisperencnpu::mel::{LogMel, WINDOW_SAMPLES};
use gstwhisperencnpu::model::{default_models_root, WhisperModel};
use ndarray::Array2;

/// An installed model (`base`, `tiny.en`); panics with what to run when it is not there.
pub fn model(name: &str) -> WhisperModel {
    let dir = default_models_root().join(name);
    if !dir.join("model.bin").is_file() {
        panic!(
            "bench needs the Whisper model {name:?} in {}: run scripts/fetch-models (or set \
             WHISPERENCNPU_MODELS to the folder holding {name}/model.bin)",
            dir.display()
        );
    }
    WhisperModel::load(&dir).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// 10.24 s of deterministic audio: a chirp with a little noise (the cost of the front end and
/// the encoder does not depend on what is said).
pub fn window_audio() -> Vec<f32> {
    let mut st = 0x9e37_79b9u32;
    (0..WINDOW_SAMPLES)
        .map(|i| {
            st ^= st << 13;
            st ^= st >> 17;
            st ^= st << 5;
            let t = i as f32 / 16_000.0;
            let noise = (st % 2001) as f32 / 1000.0 - 1.0;
            0.3 * (2.0 * std::f32::consts::PI * (200.0 + 150.0 * t) * t).sin() + 0.02 * noise
        })
        .collect()
}

/// The log-mel of one window (n_mels x 1024): the golden jfk mel when the shared data is there
/// (80 bands), else computed from [`window_audio`].
pub fn window_mel(n_mels: usize) -> Array2<f32> {
    let shared = std::env::var_os("WHISPERENCNPU_SHARED")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let golden = shared.join("golden/mel_jfk.npy");
    if n_mels == 80 && golden.is_file() {
        if let Ok(mel) = ndarray_npy::read_npy::<_, Array2<f32>>(&golden) {
            return mel;
        }
    }
    LogMel::new(n_mels).compute(&window_audio())
}
