//! The encoder on one 10.24 s window (1024 mel frames -> 512 positions), 2 threads: Whisper base
//! and tiny.en, float32 and int8, on the CPU engines.
//!
//! `cargo bench --bench encoder`; needs the models (scripts/fetch-models). The comparison with
//! CTranslate2 on the same machine is `make bench-vs-ct2`.
mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gstwhisperencnpu::model::Encoder;
use gstwhisperencnpu::npu::{open_engine, BackendChoice, Precision};
use ndarray::Array2;

const THREADS: usize = 2;

fn encoder(c: &mut Criterion) {
    let mut g = c.benchmark_group("encoder_window_2threads");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for name in ["base", "tiny.en"] {
        let model = common::model(name);
        let mel = common::window_mel(model.dims().n_mels);
        for precision in [Precision::F32, Precision::Int8] {
            let engine = open_engine(BackendChoice::Cpu, precision).expect("CPU engine");
            let mut enc = Encoder::new(&model, engine, THREADS).expect("encoder");
            let mut out =
                Array2::<f32>::zeros((Encoder::positions_for(mel.ncols()), enc.d_model()));
            g.bench_function(format!("{name}/{precision}"), |b| {
                b.iter(|| {
                    enc.forward_into(mel.view(), out.view_mut())
                        .expect("encodes")
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, encoder);
criterion_main!(benches);
