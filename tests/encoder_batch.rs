//! Batching does not change results (issue 12): windows encoded together, their rows stacked
//! through every linear layer, give each window's output bit for bit as encoded alone, in float32
//! and int8, for both models and any pool size.
//!
//! Needs the models installed by scripts/fetch-models; fails (never skips) without them.
mod common;

use common::{model_dir, read_npy_2d};
use gstwhisperencnpu::model::{Encoder, WhisperModel};
use gstwhisperencnpu::npu::{open_engine, BackendChoice, Precision};
use ndarray::{s, Array2};

/// Frames of a window of the element (10.24 s).
const FRAMES: usize = 1024;

/// Three different windows: jfk, espeak, and jfk from 2 s on (zero-padded at the end).
fn windows() -> Vec<(&'static str, Array2<f32>)> {
    let jfk = read_npy_2d("golden/mel_jfk.npy");
    let espeak = read_npy_2d("golden/mel_espeak.npy");
    let window = |mel: &Array2<f32>, from: usize| {
        let mut w = Array2::zeros((mel.nrows(), FRAMES));
        let n = (mel.ncols() - from).min(FRAMES);
        w.slice_mut(s![.., ..n])
            .assign(&mel.slice(s![.., from..from + n]));
        w
    };
    vec![
        ("jfk", window(&jfk, 0)),
        ("espeak", window(&espeak, 0)),
        ("jfk from 2 s", window(&jfk, 200)),
    ]
}

fn bits_equal(a: &Array2<f32>, b: &Array2<f32>) -> Option<usize> {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b.iter())
        .position(|(x, y)| x.to_bits() != y.to_bits())
}

fn check(model_name: &str, precision: Precision, threads: usize) {
    let model = WhisperModel::load(&model_dir(model_name)).expect("model loads");
    let engine = open_engine(BackendChoice::Cpu, precision).expect("engine opens");
    let windows = windows();
    let mut encoder = Encoder::new(&model, engine, threads).expect("encoder");

    // Batched first (cold buffers), then each alone, then batched again (warm).
    let mels: Vec<_> = windows.iter().map(|(_, m)| m.view()).collect();
    let cold = encoder.forward_batch(&mels).expect("batch encodes");
    let alone: Vec<Array2<f32>> = mels.iter().map(|m| encoder.forward(*m)).collect();
    let warm = encoder.forward_batch(&mels).expect("batch encodes");
    // Every pair and the reverse order too: a window's neighbours change nothing.
    let reversed: Vec<_> = mels.iter().rev().copied().collect();
    let mut backwards = encoder.forward_batch(&reversed).expect("batch encodes");
    backwards.reverse();

    for (i, (name, _)) in windows.iter().enumerate() {
        for (what, batch) in [("cold", &cold), ("warm", &warm), ("reversed", &backwards)] {
            assert_eq!(
                bits_equal(&batch[i], &alone[i]),
                None,
                "{model_name} {precision} {threads} threads: '{name}' in a {what} batch of {} \
                 differs from '{name}' alone at the element shown",
                mels.len()
            );
        }
    }
    for pair in [[0, 1], [1, 2]] {
        let two: Vec<_> = pair.iter().map(|&i| mels[i]).collect();
        let out = encoder.forward_batch(&two).expect("batch encodes");
        for (o, &i) in out.iter().zip(&pair) {
            assert_eq!(
                bits_equal(o, &alone[i]),
                None,
                "{model_name} {precision} {threads} threads: '{}' in a batch of two differs",
                windows[i].0
            );
        }
    }
}

#[test]
fn base_f32_batch_equals_alone() {
    check("base", Precision::F32, 2);
}

#[test]
fn base_int8_batch_equals_alone() {
    check("base", Precision::Int8, 2);
}

#[test]
fn tiny_en_f32_batch_equals_alone_on_one_and_three_threads() {
    check("tiny.en", Precision::F32, 1);
    check("tiny.en", Precision::F32, 3);
}

#[test]
fn tiny_en_int8_batch_equals_alone() {
    check("tiny.en", Precision::Int8, 2);
}

#[test]
fn windows_of_different_lengths_are_refused() {
    let model = WhisperModel::load(&model_dir("tiny.en")).expect("model loads");
    let engine = open_engine(BackendChoice::Cpu, Precision::F32).expect("engine opens");
    let mut encoder = Encoder::new(&model, engine, 1).expect("encoder");
    let (a, b) = (Array2::zeros((80, 100)), Array2::zeros((80, 200)));
    let err = encoder
        .forward_batch(&[a.view(), b.view()])
        .expect_err("mixed lengths");
    assert!(err.to_string().contains("100 and 200"), "{err}");
    assert!(encoder.forward_batch(&[]).expect("empty").is_empty());
}

/// Streams on one [`SharedEncoder`] at the same time: windows queued while a batch runs go in the
/// next one together (never more than `MAX_BATCH`), and each stream gets its own window's output,
/// bit for bit what it is alone.
#[test]
fn streams_sharing_an_encoder_are_batched_and_get_their_own_output() {
    use gstwhisperencnpu::shared::{encoder::MAX_BATCH, SharedEncoder};
    use std::sync::{Arc, Barrier};

    let model = WhisperModel::load(&model_dir("tiny.en")).expect("model loads");
    let engine = open_engine(BackendChoice::Cpu, Precision::F32).expect("engine opens");
    let windows = windows();
    let mut alone_encoder = Encoder::new(&model, engine.clone(), 2).expect("encoder");
    let alone: Vec<Array2<f32>> = windows
        .iter()
        .map(|(_, m)| alone_encoder.forward(m.view()))
        .collect();
    drop(alone_encoder);

    let shared = Arc::new(SharedEncoder::new(
        Encoder::new(&model, engine, 2).expect("encoder"),
    ));
    const STREAMS: usize = 6;
    const WINDOWS_EACH: usize = 4;
    let start = Arc::new(Barrier::new(STREAMS));
    let windows = Arc::new(windows);
    let streams: Vec<_> = (0..STREAMS)
        .map(|stream| {
            let (shared, start, windows) = (shared.clone(), start.clone(), windows.clone());
            std::thread::spawn(move || {
                start.wait();
                (0..WINDOWS_EACH)
                    .map(|i| {
                        let w = (stream + i) % windows.len();
                        let mut mel = windows[w].1.clone();
                        // A fresh output each window: the encoder must shape it.
                        let mut out = Array2::zeros((0, 0));
                        let timing = shared.encode(&mut mel, &mut out, false).expect("encodes");
                        assert_eq!(
                            mel, windows[w].1,
                            "stream {stream}: its window came back changed"
                        );
                        (w, out, timing.batch)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut largest = 0;
    for (stream, handle) in streams.into_iter().enumerate() {
        for (i, (w, out, batch)) in handle.join().expect("stream ran").into_iter().enumerate() {
            assert!(
                (1..=MAX_BATCH).contains(&batch),
                "stream {stream} window {i}: batch of {batch}"
            );
            largest = largest.max(batch);
            assert_eq!(
                bits_equal(&out, &alone[w]),
                None,
                "stream {stream} window {i} ('{}'): output differs from the window alone",
                windows[w].0
            );
        }
    }
    assert!(
        largest > 1,
        "{STREAMS} streams queueing at once were never batched"
    );
}
