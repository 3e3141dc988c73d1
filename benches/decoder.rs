//! The decoder, per token: one new token through every layer (self-attention over the tokens so
//! far, cross-attention on one encoded window) and the logits over the vocabulary, 2 threads.
//! Tokens are timed at positions 4 to 131 after a 4-token prompt, so self-attention has its
//! typical length.
//!
//! Also a prompt pass: [`PASS_ROWS`] tokens at once (a low-latency step's prompt, prefix and
//! draft), where the products are bound by arithmetic rather than by reading the weights.
//!
//! `cargo bench --bench decoder`; needs the models (scripts/fetch-models).
mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use gstwhisperencnpu::model::decoder::Decoder;
use gstwhisperencnpu::model::Encoder;
use gstwhisperencnpu::npu::{open_engine, BackendChoice, Precision};

const THREADS: usize = 2;
const PROMPT: usize = 4;
const STEPS: usize = 128;
/// Rows of the prompt pass (a low-latency step's averaged 108 on `real/`).
const PASS_ROWS: usize = 108;

fn decoder(c: &mut Criterion) {
    let mut g = c.benchmark_group("decoder_token_2threads");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for name in ["base", "tiny.en"] {
        let model = common::model(name);
        let mel = common::window_mel(model.dims().n_mels);
        for precision in [Precision::F32, Precision::Int8] {
            let engine = open_engine(BackendChoice::Cpu, precision).expect("CPU engine");
            let mut enc = Encoder::new(&model, engine.clone(), THREADS).expect("encoder");
            let encoded = enc.forward(mel.view());
            let dec = Decoder::new(&model, engine, THREADS).expect("decoder");
            let cross = dec.cross_kv(encoded.view());
            let mut cache = dec.new_cache();
            // Any in-vocabulary ids do: the cost does not depend on which.
            let token = |i: usize| (1000 + 37 * i) as u32 % dec.n_vocab() as u32;
            let prompt: Vec<u32> = (0..PROMPT).map(token).collect();
            g.bench_function(format!("{name}/{precision}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters as usize;
                    while left > 0 {
                        cache.clear();
                        dec.forward(&mut cache, &cross, &prompt, PROMPT);
                        let n = left.min(STEPS);
                        let start = Instant::now();
                        for i in 0..n {
                            let h = dec.forward(&mut cache, &cross, &[token(PROMPT + i)], 1);
                            std::hint::black_box(dec.logits_row(h.row(0)));
                        }
                        total += start.elapsed();
                        left -= n;
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

fn prompt_pass(c: &mut Criterion) {
    let mut g = c.benchmark_group("decoder_pass_2threads");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    let model = common::model("base");
    let mel = common::window_mel(model.dims().n_mels);
    let engine = open_engine(BackendChoice::Cpu, Precision::F32).expect("CPU engine");
    let mut enc = Encoder::new(&model, engine.clone(), THREADS).expect("encoder");
    let encoded = enc.forward(mel.view());
    let dec = Decoder::new(&model, engine, THREADS).expect("decoder");
    let cross = dec.cross_kv(encoded.view());
    let mut cache = dec.new_cache();
    let tokens: Vec<u32> = (0..PASS_ROWS)
        .map(|i| (1000 + 37 * i) as u32 % dec.n_vocab() as u32)
        .collect();
    g.bench_function(format!("base/f32/{PASS_ROWS}"), |b| {
        b.iter(|| {
            cache.clear();
            std::hint::black_box(dec.forward(&mut cache, &cross, &tokens, PASS_ROWS));
        })
    });
    g.finish();
}

criterion_group!(benches, decoder, prompt_pass);
criterion_main!(benches);
