//! A shrunken Whisper written as a CTranslate2 model: any mel bins, two layers, d_model 64,
//! seeded random weights. Small enough to fuzz every format's files byte by byte, and the only
//! way to test 128 mel bins (large-v3's) without downloading a large model.
#![allow(dead_code)]

use std::path::Path;

use gstwhisperencnpu::model::ct2::writer::{write, Var};
use serde_json::json;

/// Text tokens of the synthetic vocabulary: the 256 single bytes.
pub const N_TEXT: usize = 256;
/// 256 text tokens, the 8 fixed special tokens, 99 languages and 1501 timestamps.
pub const N_VOCAB: usize = N_TEXT + 8 + 99 + 1501;
pub const D_MODEL: usize = 64;
pub const HEADS: usize = 4;
/// Encoder and decoder layers of [`write_ct2`] (large-v3-turbo too has fewer decoder layers).
pub const LAYERS: usize = 2;
pub const N_AUDIO_CTX: usize = 1500;
pub const N_TEXT_CTX: usize = 448;

/// Seeded uniform values in [-scale, scale] (xorshift64).
struct Rng(u64);

impl Rng {
    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

fn rand(rng: &mut Rng, name: String, shape: &[usize], scale: f32, vars: &mut Vec<Var>) {
    let n = shape.iter().product();
    let s: Vec<u32> = shape.iter().map(|&x| x as u32).collect();
    vars.push(Var::f32(&name, &s, &rng.values(n, scale)));
}

/// Writes the synthetic model (model.bin, config.json, tokenizer.json) into `dir`, with
/// [`LAYERS`] encoder and decoder layers.
pub fn write_ct2(dir: &Path, n_mels: usize) {
    write_ct2_layers(dir, n_mels, LAYERS, LAYERS)
}

/// [`write_ct2`] with the given numbers of encoder and decoder layers.
pub fn write_ct2_layers(dir: &Path, n_mels: usize, enc_layers: usize, dec_layers: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng(0x5eed_0f70_2026 ^ n_mels as u64);
    let d = D_MODEL;
    let mut vars = Vec::new();
    let ones = |name: String, vars: &mut Vec<Var>| {
        vars.push(Var::f32(&name, &[d as u32], &vec![1.0; d]));
    };
    let zeros = |name: String, vars: &mut Vec<Var>| {
        vars.push(Var::f32(&name, &[d as u32], &vec![0.0; d]));
    };
    // A fused projection's bias with the key rows (Whisper has no key bias) zero.
    let fused_bias =
        |name: String, parts: usize, key: usize, vars: &mut Vec<Var>, r: &mut Vec<f32>| {
            let mut b = r.clone();
            b.resize(parts * d, 0.0);
            for x in &mut b[key * d..(key + 1) * d] {
                *x = 0.0;
            }
            vars.push(Var::f32(&name, &[(parts * d) as u32], &b));
        };
    let conv_scale = 1.0 / (3.0 * n_mels as f32).sqrt();
    rand(
        &mut rng,
        "encoder/conv1/weight".into(),
        &[d, n_mels, 3],
        conv_scale,
        &mut vars,
    );
    rand(&mut rng, "encoder/conv1/bias".into(), &[d], 0.02, &mut vars);
    rand(
        &mut rng,
        "encoder/conv2/weight".into(),
        &[d, d, 3],
        1.0 / (3.0 * d as f32).sqrt(),
        &mut vars,
    );
    rand(&mut rng, "encoder/conv2/bias".into(), &[d], 0.02, &mut vars);
    rand(
        &mut rng,
        "encoder/position_encodings/encodings".into(),
        &[N_AUDIO_CTX, d],
        0.5,
        &mut vars,
    );
    ones("encoder/layer_norm/gamma".into(), &mut vars);
    zeros("encoder/layer_norm/beta".into(), &mut vars);
    let w = 1.0 / (d as f32).sqrt();
    for (side, layers) in [("encoder", enc_layers), ("decoder", dec_layers)] {
        for l in 0..layers {
            let p = format!("{side}/layer_{l}");
            ones(format!("{p}/self_attention/layer_norm/gamma"), &mut vars);
            zeros(format!("{p}/self_attention/layer_norm/beta"), &mut vars);
            rand(
                &mut rng,
                format!("{p}/self_attention/linear_0/weight"),
                &[3 * d, d],
                w,
                &mut vars,
            );
            let mut b = rng.values(3 * d, 0.02);
            fused_bias(
                format!("{p}/self_attention/linear_0/bias"),
                3,
                1,
                &mut vars,
                &mut b,
            );
            rand(
                &mut rng,
                format!("{p}/self_attention/linear_1/weight"),
                &[d, d],
                w,
                &mut vars,
            );
            rand(
                &mut rng,
                format!("{p}/self_attention/linear_1/bias"),
                &[d],
                0.02,
                &mut vars,
            );
            if side == "decoder" {
                ones(format!("{p}/attention/layer_norm/gamma"), &mut vars);
                zeros(format!("{p}/attention/layer_norm/beta"), &mut vars);
                rand(
                    &mut rng,
                    format!("{p}/attention/linear_0/weight"),
                    &[d, d],
                    w,
                    &mut vars,
                );
                rand(
                    &mut rng,
                    format!("{p}/attention/linear_0/bias"),
                    &[d],
                    0.02,
                    &mut vars,
                );
                rand(
                    &mut rng,
                    format!("{p}/attention/linear_1/weight"),
                    &[2 * d, d],
                    w,
                    &mut vars,
                );
                let mut b = rng.values(2 * d, 0.02);
                fused_bias(
                    format!("{p}/attention/linear_1/bias"),
                    2,
                    0,
                    &mut vars,
                    &mut b,
                );
                rand(
                    &mut rng,
                    format!("{p}/attention/linear_2/weight"),
                    &[d, d],
                    w,
                    &mut vars,
                );
                rand(
                    &mut rng,
                    format!("{p}/attention/linear_2/bias"),
                    &[d],
                    0.02,
                    &mut vars,
                );
            }
            ones(format!("{p}/ffn/layer_norm/gamma"), &mut vars);
            zeros(format!("{p}/ffn/layer_norm/beta"), &mut vars);
            rand(
                &mut rng,
                format!("{p}/ffn/linear_0/weight"),
                &[4 * d, d],
                w,
                &mut vars,
            );
            rand(
                &mut rng,
                format!("{p}/ffn/linear_0/bias"),
                &[4 * d],
                0.02,
                &mut vars,
            );
            rand(
                &mut rng,
                format!("{p}/ffn/linear_1/weight"),
                &[d, 4 * d],
                w / 2.0,
                &mut vars,
            );
            rand(
                &mut rng,
                format!("{p}/ffn/linear_1/bias"),
                &[d],
                0.02,
                &mut vars,
            );
        }
    }
    rand(
        &mut rng,
        "decoder/embeddings/weight".into(),
        &[N_VOCAB, d],
        0.1,
        &mut vars,
    );
    rand(
        &mut rng,
        "decoder/position_encodings/encodings".into(),
        &[N_TEXT_CTX, d],
        0.1,
        &mut vars,
    );
    ones("decoder/layer_norm/gamma".into(), &mut vars);
    zeros("decoder/layer_norm/beta".into(), &mut vars);
    vars.push(Var::i16_scalar("encoder/num_heads", HEADS as i16));
    vars.push(Var::i16_scalar("decoder/num_heads", HEADS as i16));
    let bin = write(
        "WhisperSpec",
        3,
        &vars,
        &[("decoder/projection/weight", "decoder/embeddings/weight")],
    );
    std::fs::write(dir.join("model.bin"), bin).unwrap();

    let config = json!({
        "suppress_ids": [1, 2],
        "suppress_ids_begin": [N_TEXT],
        "lang_ids": [],
        "alignment_heads": [[dec_layers - 1, 0], [dec_layers - 1, 2]],
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
}

/// A byte-level `tokenizer.json`: one token per byte, then Whisper's special tokens.
pub fn tokenizer_json() -> serde_json::Value {
    let table = byte_table();
    let vocab: serde_json::Map<String, serde_json::Value> = (0..N_TEXT)
        .map(|b| (table[b].to_string(), json!(b)))
        .collect();
    let mut names = vec![
        "<|endoftext|>".to_string(),
        "<|startoftranscript|>".to_string(),
    ];
    names.extend(
        gstwhisperencnpu::model::formats::ggml_vocab::LANGUAGES[..99]
            .iter()
            .map(|l| format!("<|{l}|>")),
    );
    for n in [
        "translate",
        "transcribe",
        "startoflm",
        "startofprev",
        "nocaptions",
        "notimestamps",
    ] {
        names.push(format!("<|{n}|>"));
    }
    let added: Vec<serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"id": N_TEXT + i, "content": n, "special": true}))
        .collect();
    json!({"model": {"type": "BPE", "vocab": vocab, "merges": []}, "added_tokens": added})
}

/// GPT-2's byte-to-unicode table, written out again (the tests do not borrow the crate's).
fn byte_table() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut n = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap()
            }
        })
        .collect()
}

/// The synthetic vocabulary's text tokens, as a ggml file stores them.
pub fn text_tokens() -> Vec<Vec<u8>> {
    (0..=255u8).map(|b| vec![b]).collect()
}
