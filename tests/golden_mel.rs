//! The log-mel front end and its filterbank against the float64 references in `shared/golden`
//! (see its README.md). The golden files are required: a missing file fails the test.
use std::path::PathBuf;

use gstwhisperencnpu::mel::*;
use ndarray::{Array1, Array2};
use ndarray_npy::read_npy;

fn golden_dir() -> PathBuf {
    let shared = std::env::var_os("WHISPERENCNPU_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    shared.join("golden")
}

fn load<T: ndarray_npy::ReadableElement, D: ndarray::Dimension>(
    name: &str,
) -> ndarray::Array<T, D> {
    let path = golden_dir().join(name);
    assert!(
        path.is_file(),
        "golden file {} is missing (set WHISPERENCNPU_SHARED to the folder holding golden/)",
        path.display()
    );
    read_npy(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim(), "shape mismatch");
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_clip(clip: &str) {
    let audio: Array1<f32> = load(&format!("audio_{clip}.npy"));
    let expected: Array2<f32> = load(&format!("mel_{clip}.npy"));
    assert_eq!(audio.len(), WINDOW_SAMPLES);
    assert_eq!(expected.dim(), (80, WINDOW_FRAMES));

    let audio = audio.as_slice().expect("contiguous audio");
    let mut mel = LogMel::new(80);
    let got = mel.compute(audio);
    assert_eq!(got.dim(), (80, WINDOW_FRAMES));
    let diff = max_abs_diff(&got, &expected);
    println!("mel {clip}: max abs diff {diff:.3e}");
    assert!(diff <= 1e-4, "mel {clip}: max abs diff {diff:e} > 1e-4");

    // compute_into into a reused buffer gives the same numbers.
    let mut out = Array2::<f32>::zeros((80, WINDOW_FRAMES));
    mel.compute_into(audio, out.view_mut());
    assert_eq!(out, got);
}

#[test]
fn mel_jfk() {
    check_clip("jfk");
}

#[test]
fn mel_espeak() {
    check_clip("espeak");
}

#[test]
fn filterbank_80() {
    let expected: Array2<f32> = load("mel_filters_80.npy");
    let got = mel_filterbank(80, SAMPLE_RATE, N_FFT);
    let diff = max_abs_diff(&got, &expected);
    let max = expected.iter().copied().fold(0.0, f32::max);
    println!(
        "mel filterbank 80: max abs diff {diff:.3e} (max weight {max:.3e}, relative {:.3e})",
        diff / max
    );
    assert!(diff <= 1e-6 * max, "filterbank: max abs diff {diff:e}");
}
