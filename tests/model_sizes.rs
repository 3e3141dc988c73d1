//! Every size: a shrunken synthetic Whisper with 128 mel bins (large-v3's) and two layers loads in
//! each format with the shapes it has, its encoder runs on a 128-band log-mel, and that log-mel
//! matches a float64 reference computed here from the definitions (Hann window, reflect padding,
//! DFT, slaney mel filterbank, log10, Whisper's normalisation), independently of src/mel.
mod common;
mod convert;

use std::f64::consts::PI;
use std::sync::Arc;

use gstwhisperencnpu::mel::{LogMel, WINDOW_SAMPLES};
use gstwhisperencnpu::model::decoder::Decoder;
use gstwhisperencnpu::model::{Encoder, Format, WhisperModel};
use gstwhisperencnpu::npu::{BackendChoice, CpuF32Engine, Precision};
use gstwhisperencnpu::transcribe::{TranscribeOptions, Transcriber};
use gstwhisperencnpu::window::EncoderOptions;
use ndarray::Array2;

use convert::synthetic;
use convert::{GgmlType, StDtype};

const SAMPLE_RATE: f64 = 16_000.0;
const N_FFT: usize = 400;
const HOP: usize = 160;
const N_BINS: usize = N_FFT / 2 + 1;

fn hz_to_mel(f: f64) -> f64 {
    // Slaney's scale (librosa `htk=False`): linear below 1 kHz, logarithmic above.
    let f_sp = 200.0 / 3.0;
    if f < 1000.0 {
        f / f_sp
    } else {
        1000.0 / f_sp + (f / 1000.0).ln() / (6.4f64.ln() / 27.0)
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_mel = 1000.0 / f_sp;
    if m < min_log_mel {
        m * f_sp
    } else {
        1000.0 * ((m - min_log_mel) * (6.4f64.ln() / 27.0)).exp()
    }
}

/// librosa.filters.mel(sr=16000, n_fft=400, n_mels) with slaney normalisation, in float64.
fn filterbank(n_mels: usize) -> Vec<Vec<f64>> {
    let top = hz_to_mel(SAMPLE_RATE / 2.0);
    let hz: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(top * i as f64 / (n_mels + 1) as f64))
        .collect();
    (0..n_mels)
        .map(|m| {
            let norm = 2.0 / (hz[m + 2] - hz[m]);
            (0..N_BINS)
                .map(|k| {
                    let f = k as f64 * SAMPLE_RATE / N_FFT as f64;
                    let lower = (f - hz[m]) / (hz[m + 1] - hz[m]);
                    let upper = (hz[m + 2] - f) / (hz[m + 2] - hz[m + 1]);
                    lower.min(upper).max(0.0) * norm
                })
                .collect()
        })
        .collect()
}

/// Whisper's log-mel of `audio` (its length / HOP frames), float64 throughout.
fn reference_log_mel(audio: &[f32], n_mels: usize) -> Array2<f64> {
    let n = audio.len();
    let frames = n / HOP;
    let pad = N_FFT / 2;
    let at = |j: isize| -> f64 {
        // numpy 'reflect': the edge sample is not repeated.
        let j = if j < 0 { -j } else { j };
        let j = if j as usize >= n {
            2 * (n as isize - 1) - j
        } else {
            j
        };
        f64::from(audio[j as usize])
    };
    let window: Vec<f64> = (0..N_FFT)
        .map(|i| 0.5 - 0.5 * (2.0 * PI * i as f64 / N_FFT as f64).cos())
        .collect();
    let (cos, sin): (Vec<f64>, Vec<f64>) = (0..N_FFT)
        .map(|i| {
            let a = 2.0 * PI * i as f64 / N_FFT as f64;
            (a.cos(), a.sin())
        })
        .unzip();
    let fb = filterbank(n_mels);
    let mut out = Array2::<f64>::zeros((n_mels, frames));
    let mut frame = vec![0f64; N_FFT];
    let mut power = vec![0f64; N_BINS];
    for t in 0..frames {
        for (i, x) in frame.iter_mut().enumerate() {
            *x = window[i] * at((t * HOP + i) as isize - pad as isize);
        }
        for (k, p) in power.iter_mut().enumerate() {
            let (mut re, mut im) = (0.0, 0.0);
            for (i, &x) in frame.iter().enumerate() {
                let idx = (k * i) % N_FFT;
                re += x * cos[idx];
                im -= x * sin[idx];
            }
            *p = re * re + im * im;
        }
        for (m, w) in fb.iter().enumerate() {
            let e: f64 = w.iter().zip(&power).map(|(a, b)| a * b).sum();
            out[[m, t]] = e.max(1e-10).log10();
        }
    }
    let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    out.mapv(|v| (v.max(max - 8.0) + 4.0) / 4.0)
}

#[test]
fn log_mel_at_128_bands_matches_a_float64_reference() {
    let mut audio = common::wav_f32("audio/jfk.wav");
    audio.resize(WINDOW_SAMPLES, 0.0);
    let ours = LogMel::new(128).compute(&audio);
    let reference = reference_log_mel(&audio, 128);
    assert_eq!(ours.dim(), reference.dim());
    let diff = ours
        .iter()
        .zip(reference.iter())
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()));
    println!("128-band log-mel vs float64 reference: max abs diff {diff:.3e}");
    // Float32 output of a float64 computation: a few float32 roundings of values near 1.
    assert!(diff <= 1e-6, "{diff:e}");
    // The reference is the 80-band golden one at 80 bands too: the two references agree.
    let golden = common::read_npy_2d("golden/mel_jfk.npy");
    let ref80 = reference_log_mel(&audio, 80);
    let d80 = golden
        .iter()
        .zip(ref80.iter())
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()));
    println!("80-band reference vs golden/mel_jfk.npy: max abs diff {d80:.3e}");
    assert!(d80 <= 1e-6, "{d80:e}");
}

#[test]
fn a_128_band_model_with_2_encoder_and_1_decoder_layers_runs_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let ct2_dir = tmp.path().join("ct2");
    synthetic::write_ct2_layers(&ct2_dir, 128, 2, 1);
    let ct2 = WhisperModel::load(&ct2_dir).unwrap();
    let d = ct2.dims();
    assert_eq!(
        (
            d.n_mels,
            d.n_encoder_layers,
            d.n_decoder_layers,
            d.d_model,
            d.n_vocab
        ),
        (128, 2, 1, synthetic::D_MODEL, synthetic::N_VOCAB)
    );

    convert::write_hf(&ct2_dir, &tmp.path().join("hf"), StDtype::F32, 2);
    let ggml_path = tmp.path().join("ggml-synthetic.bin");
    convert::write_ggml(
        &ct2_dir,
        &ggml_path,
        GgmlType::F16,
        &synthetic::text_tokens(),
        &gstwhisperencnpu::mel::mel_filterbank(128, 16_000, 400),
    );
    let hf = WhisperModel::load(&tmp.path().join("hf")).unwrap();
    let ggml = WhisperModel::load(&ggml_path).unwrap();
    assert_eq!(hf.format(), Format::HfSafetensors);
    assert_eq!(hf.dims(), d);
    assert_eq!(ggml.dims(), d);
    assert_eq!(ggml.mel_filters().map(|f| f.dim()), Some((128, 201)));

    let mut audio = common::wav_f32("audio/jfk.wav");
    audio.resize(WINDOW_SAMPLES, 0.0);
    let mel = LogMel::new(d.n_mels).compute(&audio);
    let encode = |m: &WhisperModel| {
        let mut e = Encoder::new(m, Arc::new(CpuF32Engine::new()), 0).unwrap();
        assert_eq!(e.n_mels(), 128);
        e.forward(mel.view())
    };
    let a = encode(&ct2);
    assert_eq!(a.dim(), (512, synthetic::D_MODEL));
    assert!(a.iter().all(|v| v.is_finite()));
    let b = encode(&hf);
    let same = common::relative_l2(b.as_slice().unwrap(), a.as_slice().unwrap());
    println!("128-band synthetic, safetensors f32 vs CTranslate2 f32: relative L2 {same:.3e}");
    assert!(same <= 1e-6);
    // ggml stored the float32 weights as float16 (the matrices; biases, norms and positions
    // stay float32): each value within float16 rounding, the output within a few 1e-4.
    for name in ct2.weights().names() {
        if !ct2.weights().info(name).unwrap().is_float() {
            continue;
        }
        let x = ct2.weights().to_f32_vec(name).unwrap();
        let y = ggml.weights().to_f32_vec(name).unwrap();
        for (p, q) in x.iter().zip(&y) {
            let bound = (p.abs() / 2048.0).max(2f32.powi(-25));
            assert!((p - q).abs() <= bound, "{name}: {p} became {q}");
        }
    }
    let c = encode(&ggml);
    let f16 = common::relative_l2(c.as_slice().unwrap(), a.as_slice().unwrap());
    println!("128-band synthetic, ggml f16 vs CTranslate2 f32: relative L2 {f16:.3e}");
    assert!(f16 <= 1e-3, "{f16}");

    // The decoder (one layer) on that encoder output: the same logits from the same weights.
    let logits = |m: &WhisperModel, encoded: &Array2<f32>| -> Vec<f32> {
        let dec = Decoder::new(m, Arc::new(CpuF32Engine::new()), 0).unwrap();
        let cross = dec.cross_kv(encoded.view());
        let mut cache = dec.new_cache();
        let tok = m.tokenizer().unwrap();
        let prompt = [tok.sot(), tok.special().no_timestamps, 72, 105];
        let hidden = dec.forward(&mut cache, &cross, &prompt, prompt.len());
        dec.logits(hidden.view()).iter().copied().collect()
    };
    let la = logits(&ct2, &a);
    assert_eq!(la.len(), 4 * synthetic::N_VOCAB);
    assert_eq!(logits(&hf, &b), la);
    let lc = logits(&ggml, &c);
    let err = common::relative_l2(&lc, &la);
    println!("128-band synthetic, ggml f16 decoder logits: relative L2 {err:.3e}");
    assert!(err <= 1e-3, "{err}");

    // The whole transcriber (128-band front end) runs to the end on it.
    let enc = EncoderOptions {
        backend: BackendChoice::Cpu,
        precision: Precision::F32,
        threads: 0,
    };
    let options = TranscribeOptions {
        temperatures: vec![0.0],
        ..TranscribeOptions::default()
    };
    let mut t = Transcriber::new(&ggml, &enc, options).unwrap();
    t.push_audio(&audio[..2 * 16_000]);
    assert!(!t.finish().is_empty());
}

#[test]
fn bfloat16_and_unprefixed_transformers_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let ct2_dir = tmp.path().join("ct2");
    synthetic::write_ct2(&ct2_dir, 80);
    let ct2 = WhisperModel::load(&ct2_dir).unwrap();

    // bfloat16 (common for fine-tunes): every value within bfloat16 rounding (8 bits).
    convert::write_hf(&ct2_dir, &tmp.path().join("bf16"), StDtype::BF16, 1);
    let bf = WhisperModel::load(&tmp.path().join("bf16")).unwrap();
    for name in ct2.weights().names() {
        if !ct2.weights().info(name).unwrap().is_float() {
            continue;
        }
        let x = ct2.weights().to_f32_vec(name).unwrap();
        let y = bf.weights().to_f32_vec(name).unwrap();
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() <= p.abs() / 256.0, "{name}: {p} became {q}");
        }
    }

    // Saved from `WhisperModel` rather than `WhisperForConditionalGeneration`: no `model.` prefix.
    let dir = tmp.path().join("unprefixed");
    convert::write_hf(&ct2_dir, &dir, StDtype::F32, 1);
    let (tensors, _) = convert::openai_tensors(&ct2_dir, convert::Names::Hf);
    let renamed: Vec<convert::Tensor> = tensors
        .into_iter()
        .map(|t| convert::Tensor {
            name: t.name.strip_prefix("model.").unwrap().to_string(),
            ..t
        })
        .collect();
    let refs: Vec<&convert::Tensor> = renamed.iter().collect();
    std::fs::write(
        dir.join("model.safetensors"),
        convert::safetensors_bytes(&refs, StDtype::F32),
    )
    .unwrap();
    let m = WhisperModel::load(&dir).unwrap();
    assert_eq!(m.dims(), ct2.dims());
    assert_eq!(
        m.weights()
            .to_f32_vec("decoder/layer_1/attention/linear_1/weight")
            .unwrap(),
        ct2.weights()
            .to_f32_vec("decoder/layer_1/attention/linear_1/weight")
            .unwrap()
    );
}
