//! Where the tests find models and reference data, and how they compare arrays.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared` beside the project (WHISPERENCNPU_SHARED overrides).
pub fn shared_dir() -> PathBuf {
    std::env::var_os("WHISPERENCNPU_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

pub fn shared_file(rel: &str) -> PathBuf {
    let path = shared_dir().join(rel);
    assert!(
        path.is_file(),
        "reference file {} is missing (set WHISPERENCNPU_SHARED to the shared/ folder)",
        path.display()
    );
    path
}

/// An installed model (`base`, `tiny.en`); fails with what to run when it is not there.
pub fn model_dir(name: &str) -> PathBuf {
    let dir = gstwhisperencnpu::model::default_model_dir()
        .parent()
        .unwrap()
        .join(name);
    assert!(
        dir.join("model.bin").is_file(),
        "model {name} is not installed in {}: run scripts/fetch-models",
        dir.display()
    );
    dir
}

pub fn read_npy_2d(rel: &str) -> ndarray::Array2<f32> {
    let path = shared_file(rel);
    ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub fn read_npy_1d(rel: &str) -> ndarray::Array1<f32> {
    let path = shared_file(rel);
    ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// ||ours - reference|| / ||reference||
pub fn relative_l2(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "shapes differ");
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&a, &b) in ours.iter().zip(reference) {
        diff += (a as f64 - b as f64).powi(2);
        norm += (b as f64).powi(2);
    }
    (diff / norm).sqrt()
}
