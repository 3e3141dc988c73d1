//! The log-mel front end on one 10.24 s window (163840 samples -> 80 x 1024), one core.
//!
//! `cargo bench --bench mel`; the target is at most 5 ms.
mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gstwhisperencnpu::mel::{n_frames, LogMel};
use ndarray::Array2;

fn mel(c: &mut Criterion) {
    let audio = common::window_audio();
    let mut front = LogMel::new(80);
    let mut out = Array2::<f32>::zeros((80, n_frames(audio.len())));
    let mut g = c.benchmark_group("mel");
    g.throughput(Throughput::Elements(audio.len() as u64));
    g.bench_function("window_10.24s_80x1024", |b| {
        b.iter(|| front.compute_into(std::hint::black_box(&audio), out.view_mut()))
    });
    g.finish();
}

criterion_group!(benches, mel);
criterion_main!(benches);
