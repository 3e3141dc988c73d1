//! Token-by-token steps of different streams run as one decoder call (issue 12), and a stream's
//! results do not depend on the company: its logits are bit for bit those of its steps alone, in
//! float32 and int8, and two transcribers sharing a decoder write what each writes alone.
//!
//! Needs the models installed by scripts/fetch-models; fails (never skips) without them.
mod common;

use std::sync::{Arc, Barrier};

use common::{model_dir, read_npy_2d};
use gstwhisperencnpu::model::decoder::{CrossKv, Decoder};
use gstwhisperencnpu::model::tokenizer::Tokenizer;
use gstwhisperencnpu::model::WhisperModel;
use gstwhisperencnpu::npu::{
    cpu_int8::CpuInt8Engine, BackendChoice, CpuF32Engine, Engine, Precision,
};
use gstwhisperencnpu::transcribe::{Segment, TextModel, TranscribeOptions, Transcriber};
use gstwhisperencnpu::window::{EncoderOptions, WindowEncoder};
use ndarray::Array2;

/// A stream of steps: its window, its start tokens, the hypotheses it decodes and, per step,
/// one token for each.
struct StepScript {
    name: &'static str,
    cross: CrossKv,
    start: Vec<u32>,
    hypotheses: usize,
    steps: Vec<Vec<u32>>,
}

/// The logits of every step of `script`, stepped on `dec` (in a token loop for the whole run).
fn run_steps(dec: &Decoder, script: &StepScript, start: Option<&Barrier>) -> Vec<Array2<f32>> {
    let mut cache = dec.new_cache();
    dec.forward(&mut cache, &script.cross, &script.start, script.start.len());
    if script.hypotheses > 1 {
        cache.repeat(script.hypotheses);
    }
    let _stepping = dec.stepping();
    if let Some(b) = start {
        b.wait();
    }
    script
        .steps
        .iter()
        .map(|tokens| dec.step(&mut cache, &script.cross, tokens))
        .collect()
}

fn scripts(dec: &Decoder, tok: &Tokenizer) -> Vec<StepScript> {
    let cross =
        |name: &str| dec.cross_kv(read_npy_2d(&format!("golden/enc_base_{name}.npy")).view());
    let start = |text: &str| {
        let mut t = vec![tok.sot(), tok.special().no_timestamps];
        t.extend(tok.encode(text));
        t
    };
    let one_each = |text: &str| tok.encode(text).into_iter().map(|t| vec![t]).collect();
    let jfk_words = tok.encode(" fellow Americans ask not what your country");
    let espeak_words = tok.encode(" birch canoe slid on the smooth planks glue");
    vec![
        StepScript {
            name: "jfk, one hypothesis",
            cross: cross("jfk"),
            start: start(" And so my"),
            hypotheses: 1,
            steps: one_each(" fellow Americans ask not what your country can do"),
        },
        StepScript {
            name: "espeak, three hypotheses",
            cross: cross("espeak"),
            start: start(" The"),
            hypotheses: 3,
            // Three different continuations, a token each per step.
            steps: (0..jfk_words.len().min(espeak_words.len()))
                .map(|i| {
                    vec![
                        espeak_words[i],
                        jfk_words[i],
                        espeak_words[(i + 1) % espeak_words.len()],
                    ]
                })
                .collect(),
        },
    ]
}

fn first_difference(a: &Array2<f32>, b: &Array2<f32>) -> Option<(usize, usize)> {
    assert_eq!(a.dim(), b.dim());
    a.indexed_iter()
        .zip(b.iter())
        .find(|((_, x), y)| x.to_bits() != y.to_bits())
        .map(|((at, _), _)| at)
}

#[test]
fn steps_run_together_give_each_stream_its_logits_alone() {
    let dir = model_dir("base");
    let model = WhisperModel::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir.join("tokenizer.json"), model.dims().n_vocab).unwrap();
    let engines: [(&str, Arc<dyn Engine>); 2] = [
        ("f32", Arc::new(CpuF32Engine::new())),
        ("int8", Arc::new(CpuInt8Engine::new())),
    ];
    for (precision, engine) in engines {
        let dec = Decoder::new(&model, engine, 0).unwrap();
        let scripts = scripts(&dec, &tok);
        let alone: Vec<_> = scripts.iter().map(|s| run_steps(&dec, s, None)).collect();
        let before = dec.step_counts();
        let barrier = Barrier::new(scripts.len());
        let together: Vec<_> = std::thread::scope(|scope| {
            let runs: Vec<_> = scripts
                .iter()
                .map(|s| scope.spawn(|| run_steps(&dec, s, Some(&barrier))))
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let after = dec.step_counts();
        let (batches, jobs) = (after.batches - before.batches, after.jobs - before.jobs);
        assert!(
            jobs > batches,
            "{precision}: {jobs} steps ran in {batches} batches: none ran together"
        );
        for ((script, a), t) in scripts.iter().zip(&alone).zip(&together) {
            for (step, (a, t)) in a.iter().zip(t).enumerate() {
                assert_eq!(
                    a.nrows(),
                    script.hypotheses,
                    "{precision}, {}: step {step}",
                    script.name
                );
                if let Some(at) = first_difference(a, t) {
                    panic!(
                        "{precision}, {}: step {step}, logit {at:?}: {} alone, {} together",
                        script.name, a[at], t[at]
                    );
                }
            }
        }
    }
}

/// The segments of `audio`, pushed in 0.5 s pieces, then finished.
fn transcribe(t: &mut Transcriber, audio: &[f32]) -> Vec<Segment> {
    let mut segments = Vec::new();
    for chunk in audio.chunks(8000) {
        t.push_audio(chunk);
        while let Some(w) = t.next_window() {
            segments.extend(w.segments);
        }
    }
    for w in t.finish() {
        segments.extend(w.segments);
    }
    segments
}

#[test]
fn transcribers_sharing_a_decoder_write_what_each_writes_alone() {
    let model = WhisperModel::load(&model_dir("base")).unwrap();
    let text = TextModel::new(&model, Precision::F32, 0).unwrap();
    let enc = EncoderOptions {
        backend: BackendChoice::Cpu,
        precision: Precision::F32,
        threads: 0,
    };
    let options = TranscribeOptions {
        language: Some("en".into()),
        ..TranscribeOptions::default()
    };
    let new_transcriber = || {
        Transcriber::with_text_model(
            &text,
            WindowEncoder::new(&model, &enc).unwrap(),
            options.clone(),
        )
        .unwrap()
    };
    let clips = [
        ("jfk.wav", common::wav_f32("audio/jfk.wav")),
        (
            "espeak-2-en.wav",
            common::wav_f32("audio/eval/espeak-2-en.wav"),
        ),
    ];
    let alone: Vec<_> = clips
        .iter()
        .map(|(_, audio)| transcribe(&mut new_transcriber(), audio))
        .collect();
    let before = text.decoder().step_counts();
    let together: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = clips
            .iter()
            .map(|(_, audio)| {
                let mut t = new_transcriber();
                scope.spawn(move || transcribe(&mut t, audio))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let after = text.decoder().step_counts();
    for (((name, _), a), t) in clips.iter().zip(&alone).zip(&together) {
        assert!(!a.is_empty(), "{name}: no text alone");
        assert_eq!(a, t, "{name}: the text changed in company");
    }
    assert!(
        after.jobs - before.jobs > after.batches - before.batches,
        "no step of the two streams ran together ({:?} -> {:?})",
        before,
        after
    );
}
