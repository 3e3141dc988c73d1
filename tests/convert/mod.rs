//! Writes Hugging Face Transformers and whisper.cpp ggml models from a fetched CTranslate2 one, so
//! the other formats are tested without downloading them (no registry package carries them).
//!
//! The writers are independent of the readers in `src/model/formats`: they split CTranslate2's
//! fused projections back into OpenAI's separate ones and write each container by its published
//! layout (safetensors: u64 header length, JSON header, data; ggml: whisper.cpp's
//! `convert-pt-to-ggml.py` layout and ggml's reference q8_0 quantizer).
#![allow(dead_code)]

pub mod synthetic;

use std::path::Path;

use gstwhisperencnpu::model::Ct2File;
use serde_json::json;

/// A tensor in OpenAI's layout: name, PyTorch shape, values.
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Tensor names of a layout: Transformers' or OpenAI's (whisper.cpp's).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Names {
    Hf,
    OpenAi,
}

fn rows(values: &[f32], cols: usize, from: usize, to: usize) -> Vec<f32> {
    values[from * cols..to * cols].to_vec()
}

/// Every tensor of the CTranslate2 model in `dir`, split and named as `names` says.
pub fn openai_tensors(dir: &Path, names: Names) -> (Vec<Tensor>, serde_json::Value) {
    let f = Ct2File::open(&dir.join("model.bin")).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let hf = names == Names::Hf;
    let get = |n: &str| -> (Vec<usize>, Vec<f32>) {
        let info = f.info(n).unwrap();
        (info.shape.clone(), f.to_f32_vec(n).unwrap())
    };
    let mut out = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, values: Vec<f32>| {
        out.push(Tensor {
            name,
            shape,
            values,
        })
    };
    let (enc, dec) = if hf {
        ("model.encoder", "model.decoder")
    } else {
        ("encoder", "decoder")
    };
    let ln = |internal: &str, target: String, put: &mut dyn FnMut(String, Vec<usize>, Vec<f32>)| {
        let (s, g) = get(&format!("{internal}/gamma"));
        put(format!("{target}.weight"), s.clone(), g);
        let (s, b) = get(&format!("{internal}/beta"));
        put(format!("{target}.bias"), s, b);
    };
    // A linear layer, its rows split into `parts` (name, row count); biases of a part that are all
    // zero are left out (Whisper's key projections have none).
    let linear = |internal: &str,
                  parts: &[(String, usize)],
                  put: &mut dyn FnMut(String, Vec<usize>, Vec<f32>)| {
        let (s, w) = get(&format!("{internal}/weight"));
        let cols = s[1];
        let bias = f
            .contains(&format!("{internal}/bias"))
            .then(|| get(&format!("{internal}/bias")).1);
        let mut r0 = 0;
        for (name, n) in parts {
            put(
                format!("{name}.weight"),
                vec![*n, cols],
                rows(&w, cols, r0, r0 + n),
            );
            if let Some(b) = &bias {
                let b = b[r0..r0 + n].to_vec();
                if b.iter().any(|&x| x != 0.0)
                    || !name.ends_with("key") && !name.ends_with("k_proj")
                {
                    put(format!("{name}.bias"), vec![*n], b);
                }
            }
            r0 += n;
        }
    };
    for c in ["conv1", "conv2"] {
        let (s, w) = get(&format!("encoder/{c}/weight"));
        put(format!("{enc}.{c}.weight"), s, w);
        let (s, b) = get(&format!("encoder/{c}/bias"));
        put(format!("{enc}.{c}.bias"), s, b);
    }
    let (s, p) = get("encoder/position_encodings/encodings");
    let d = s[1];
    put(
        if hf {
            format!("{enc}.embed_positions.weight")
        } else {
            format!("{enc}.positional_embedding")
        },
        s,
        p,
    );
    ln(
        "encoder/layer_norm",
        if hf {
            format!("{enc}.layer_norm")
        } else {
            format!("{enc}.ln_post")
        },
        &mut put,
    );
    let count = |prefix: &str| {
        (0..)
            .take_while(|l| f.contains(&format!("{prefix}/layer_{l}/ffn/linear_0/weight")))
            .count()
    };
    let (n_enc, n_dec) = (count("encoder"), count("decoder"));
    for (side, n, out_prefix) in [("encoder", n_enc, enc), ("decoder", n_dec, dec)] {
        for l in 0..n {
            let i = format!("{side}/layer_{l}");
            let o = if hf {
                format!("{out_prefix}.layers.{l}")
            } else {
                format!("{out_prefix}.blocks.{l}")
            };
            let (self_ln, q, k, v, out, ffn_ln, fc1, fc2) = if hf {
                (
                    "self_attn_layer_norm",
                    "self_attn.q_proj",
                    "self_attn.k_proj",
                    "self_attn.v_proj",
                    "self_attn.out_proj",
                    "final_layer_norm",
                    "fc1",
                    "fc2",
                )
            } else {
                (
                    "attn_ln",
                    "attn.query",
                    "attn.key",
                    "attn.value",
                    "attn.out",
                    "mlp_ln",
                    "mlp.0",
                    "mlp.2",
                )
            };
            ln(
                &format!("{i}/self_attention/layer_norm"),
                format!("{o}.{self_ln}"),
                &mut put,
            );
            linear(
                &format!("{i}/self_attention/linear_0"),
                &[
                    (format!("{o}.{q}"), d),
                    (format!("{o}.{k}"), d),
                    (format!("{o}.{v}"), d),
                ],
                &mut put,
            );
            linear(
                &format!("{i}/self_attention/linear_1"),
                &[(format!("{o}.{out}"), d)],
                &mut put,
            );
            if side == "decoder" {
                let (cln, cq, ck, cv, co) = if hf {
                    (
                        "encoder_attn_layer_norm",
                        "encoder_attn.q_proj",
                        "encoder_attn.k_proj",
                        "encoder_attn.v_proj",
                        "encoder_attn.out_proj",
                    )
                } else {
                    (
                        "cross_attn_ln",
                        "cross_attn.query",
                        "cross_attn.key",
                        "cross_attn.value",
                        "cross_attn.out",
                    )
                };
                ln(
                    &format!("{i}/attention/layer_norm"),
                    format!("{o}.{cln}"),
                    &mut put,
                );
                linear(
                    &format!("{i}/attention/linear_0"),
                    &[(format!("{o}.{cq}"), d)],
                    &mut put,
                );
                linear(
                    &format!("{i}/attention/linear_1"),
                    &[(format!("{o}.{ck}"), d), (format!("{o}.{cv}"), d)],
                    &mut put,
                );
                linear(
                    &format!("{i}/attention/linear_2"),
                    &[(format!("{o}.{co}"), d)],
                    &mut put,
                );
            }
            ln(
                &format!("{i}/ffn/layer_norm"),
                format!("{o}.{ffn_ln}"),
                &mut put,
            );
            linear(
                &format!("{i}/ffn/linear_0"),
                &[(format!("{o}.{fc1}"), 4 * d)],
                &mut put,
            );
            linear(
                &format!("{i}/ffn/linear_1"),
                &[(format!("{o}.{fc2}"), d)],
                &mut put,
            );
        }
    }
    let (s, e) = get("decoder/embeddings/weight");
    put(
        if hf {
            format!("{dec}.embed_tokens.weight")
        } else {
            format!("{dec}.token_embedding.weight")
        },
        s,
        e,
    );
    let (s, p) = get("decoder/position_encodings/encodings");
    put(
        if hf {
            format!("{dec}.embed_positions.weight")
        } else {
            format!("{dec}.positional_embedding")
        },
        s,
        p,
    );
    ln(
        "decoder/layer_norm",
        if hf {
            format!("{dec}.layer_norm")
        } else {
            format!("{dec}.ln")
        },
        &mut put,
    );
    let heads = (
        f.scalar_int("encoder/num_heads").unwrap() as usize,
        f.scalar_int("decoder/num_heads").unwrap() as usize,
    );
    let meta = json!({
        "n_encoder_layers": n_enc, "n_decoder_layers": n_dec, "d_model": d,
        "encoder_heads": heads.0, "decoder_heads": heads.1, "ct2_config": config,
    });
    (out, meta)
}

/// Stored type of a written safetensors model.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StDtype {
    F32,
    F16,
    BF16,
}

/// One safetensors file (`tensors` in order), header padded to 8 bytes as the spec advises.
pub fn safetensors_bytes(tensors: &[&Tensor], dtype: StDtype) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data = Vec::new();
    for t in tensors {
        let start = data.len();
        for &v in &t.values {
            match dtype {
                StDtype::F32 => data.extend_from_slice(&v.to_le_bytes()),
                StDtype::F16 => data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                StDtype::BF16 => data.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            }
        }
        header.insert(
            t.name.clone(),
            json!({
                "dtype": match dtype {
                    StDtype::F32 => "F32",
                    StDtype::F16 => "F16",
                    StDtype::BF16 => "BF16",
                },
                "shape": t.shape,
                "data_offsets": [start, data.len()],
            }),
        );
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

/// Writes a Transformers Whisper model converted from the CTranslate2 model `ct2_dir` into
/// `out`: `model.safetensors` (`shards` == 1) or `shards` files and their index, `config.json`,
/// `generation_config.json` (lists taken from the CTranslate2 config) and `tokenizer.json`.
pub fn write_hf(ct2_dir: &Path, out: &Path, dtype: StDtype, shards: usize) {
    std::fs::create_dir_all(out).unwrap();
    let (tensors, meta) = openai_tensors(ct2_dir, Names::Hf);
    if shards <= 1 {
        let all: Vec<&Tensor> = tensors.iter().collect();
        std::fs::write(
            out.join("model.safetensors"),
            safetensors_bytes(&all, dtype),
        )
        .unwrap();
    } else {
        let per = tensors.len().div_ceil(shards);
        let mut weight_map = serde_json::Map::new();
        for (k, chunk) in tensors.chunks(per).enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, shards);
            let refs: Vec<&Tensor> = chunk.iter().collect();
            std::fs::write(out.join(&file), safetensors_bytes(&refs, dtype)).unwrap();
            for t in chunk {
                weight_map.insert(t.name.clone(), json!(file));
            }
        }
        let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
        std::fs::write(
            out.join("model.safetensors.index.json"),
            serde_json::to_vec_pretty(&index).unwrap(),
        )
        .unwrap();
    }
    let embed = tensors
        .iter()
        .find(|t| t.name == "model.decoder.embed_tokens.weight")
        .unwrap();
    let conv1 = tensors
        .iter()
        .find(|t| t.name == "model.encoder.conv1.weight")
        .unwrap();
    let config = json!({
        "model_type": "whisper",
        "architectures": ["WhisperForConditionalGeneration"],
        "d_model": meta["d_model"],
        "encoder_layers": meta["n_encoder_layers"],
        "decoder_layers": meta["n_decoder_layers"],
        "encoder_attention_heads": meta["encoder_heads"],
        "decoder_attention_heads": meta["decoder_heads"],
        "encoder_ffn_dim": meta["d_model"].as_u64().unwrap() * 4,
        "decoder_ffn_dim": meta["d_model"].as_u64().unwrap() * 4,
        "num_mel_bins": conv1.shape[1],
        "vocab_size": embed.shape[0],
        "max_source_positions": 1500,
        "max_target_positions": 448,
        "torch_dtype": match dtype {
            StDtype::F32 => "float32",
            StDtype::F16 => "float16",
            StDtype::BF16 => "bfloat16",
        },
    });
    std::fs::write(
        out.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let ct2 = &meta["ct2_config"];
    let tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ct2_dir.join("tokenizer.json")).unwrap()).unwrap();
    let lang_ids: Vec<u64> = ct2["lang_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    let lang_to_id: serde_json::Map<String, serde_json::Value> = tokenizer["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| lang_ids.contains(&t["id"].as_u64().unwrap()))
        .map(|t| (t["content"].as_str().unwrap().to_string(), t["id"].clone()))
        .collect();
    let generation = json!({
        "suppress_tokens": ct2["suppress_ids"],
        "begin_suppress_tokens": ct2["suppress_ids_begin"],
        "alignment_heads": ct2["alignment_heads"],
        "lang_to_id": lang_to_id,
    });
    std::fs::write(
        out.join("generation_config.json"),
        serde_json::to_vec_pretty(&generation).unwrap(),
    )
    .unwrap();
    std::fs::copy(ct2_dir.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
}

/// How a ggml file stores its big matrices.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GgmlType {
    F16,
    Q8_0,
    Q5_0,
    Q5_1,
    Q4_0,
    Q4_1,
}

impl GgmlType {
    /// (`ggml_ftype` of the file, `ggml_type` of its quantized matrices), from ggml.h:
    /// `GGML_FTYPE_MOSTLY_{F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 7, Q5_0 = 8, Q5_1 = 9}`,
    /// `GGML_TYPE_{F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8}`.
    fn codes(self) -> (i32, i32) {
        match self {
            GgmlType::F16 => (1, 1),
            GgmlType::Q4_0 => (2, 2),
            GgmlType::Q4_1 => (3, 3),
            GgmlType::Q8_0 => (7, 8),
            GgmlType::Q5_0 => (8, 6),
            GgmlType::Q5_1 => (9, 7),
        }
    }

    fn quantize(self, values: &[f32]) -> Vec<u8> {
        match self {
            GgmlType::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            GgmlType::Q8_0 => quantize_q8_0(values),
            q => values
                .chunks(QK8_0)
                .flat_map(|b| quantize_block_4_5(q, b))
                .collect(),
        }
    }
}

/// ggml's reference quantizers of q4_0, q4_1, q5_0, q5_1 (`quantize_row_q*_ref` in
/// ggml-quants.c) for one block of 32: the `_0` types scale by the signed value of largest
/// magnitude (d = max / -8 or / -16, that value becomes the most negative step) and truncate
/// x / d + 8.5 (16.5), clamped to 15 (31); the `_1` types map [min, max] onto 0..15 (31) with
/// d = (max - min) / 15 (31), rounding half up. Low nibbles hold values 0..16, high ones 16..32;
/// q5's fifth bits go to bit j of the u32 qh.
fn quantize_block_4_5(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let h = |v: f32| half::f16::from_f32(v).to_le_bytes();
    let five = matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1);
    let top: i32 = if five { 31 } else { 15 };
    let mut out = Vec::new();
    let q: Vec<i32> = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let max = x
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / if five { -16.0 } else { -8.0 };
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend(h(d));
            let offset = if five { 16.5 } else { 8.5 };
            x.iter()
                .map(|&v| ((v * id + offset) as i8 as i32).min(top))
                .collect()
        }
        _ => {
            let min = x.iter().copied().fold(f32::INFINITY, f32::min);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let d = (max - min) / top as f32;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend(h(d));
            out.extend(h(min));
            x.iter()
                .map(|&v| (((v - min) * id + 0.5) as u8 as i32).min(top))
                .collect()
        }
    };
    if five {
        let mut qh = 0u32;
        for (j, &v) in q.iter().enumerate() {
            qh |= (((v >> 4) & 1) as u32) << j;
        }
        out.extend(qh.to_le_bytes());
    }
    out.extend((0..16).map(|j| ((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4)) as u8));
    out
}

/// The largest error of q4_0/q4_1/q5_0/q5_1 on a block: a step d of the clamped end (half a
/// step elsewhere), plus the float16 rounding of d times the largest level, and of the offset.
pub fn q4_5_bound(ty: GgmlType, block: &[f32]) -> f32 {
    let f16_err = |v: f32| (v.abs() / 2048.0).max(2f32.powi(-25));
    let levels = match ty {
        GgmlType::Q5_0 | GgmlType::Q5_1 => 31.0,
        _ => 15.0,
    };
    let (min, max) = block
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let amax = max.abs().max(min.abs());
            let d = amax / (levels + 1.0) * 2.0;
            d + (levels + 1.0) / 2.0 * f16_err(d) + 1e-12
        }
        _ => {
            let d = (max - min) / levels;
            d * 0.5 + levels * f16_err(d) + f16_err(min) + 1e-7 * max.abs().max(min.abs())
        }
    }
}

/// `GGML_FILE_MAGIC` (ggml.h).
const GGML_MAGIC: u32 = 0x6767_6d6c;
/// `GGML_QNT_VERSION` * `GGML_QNT_VERSION_FACTOR` (ggml.h), added to the ftype of quantized files.
const QNT_VERSION_TERM: i32 = 2 * 1000;
/// `ggml_type` codes of the unquantized tensors.
const TYPE_F32: i32 = 0;
const TYPE_F16: i32 = 1;
/// `QK8_0`.
const QK8_0: usize = 32;

/// ggml's reference q8_0 quantizer (`quantize_row_q8_0_ref`): per block of 32, d = amax / 127,
/// q = round(x / d), d stored as float16.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK8_0 * 34);
    for block in values.chunks(QK8_0) {
        let amax = block.iter().fold(0f32, |m, &v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    out
}

/// The largest error q8_0 may make on a block: half a step of d, plus d's float16 rounding
/// times the largest quantized value 127.
pub fn q8_0_bound(block: &[f32]) -> f32 {
    let d = block.iter().fold(0f32, |m, &v| m.max(v.abs())) / 127.0;
    // float16 keeps 11 significant bits, fewer below 2^-14 (subnormals, spaced 2^-24): small
    // scales do occur in Whisper's matrices.
    let d_rounding = (d / 2048.0).max(2f32.powi(-25));
    d * 0.5 + 127.0 * d_rounding + 1e-12
}

/// Writes a whisper.cpp ggml file converted from the CTranslate2 model `ct2_dir`, with the
/// vocabulary's text tokens (`token_bytes(id)` for id < `<|endoftext|>`) and mel filterbank given.
pub fn write_ggml(
    ct2_dir: &Path,
    out: &Path,
    ty: GgmlType,
    tokens: &[Vec<u8>],
    mel_filters: &ndarray::Array2<f32>,
) {
    let (tensors, meta) = openai_tensors(ct2_dir, Names::OpenAi);
    let embed = tensors
        .iter()
        .find(|t| t.name == "decoder.token_embedding.weight")
        .unwrap();
    let n_mels = tensors
        .iter()
        .find(|t| t.name == "encoder.conv1.weight")
        .unwrap()
        .shape[1];
    let d = meta["d_model"].as_u64().unwrap() as i32;
    let mut b = GGML_MAGIC.to_le_bytes().to_vec();
    let ftype = match ty {
        GgmlType::F16 => ty.codes().0,
        q => q.codes().0 + QNT_VERSION_TERM,
    };
    for v in [
        embed.shape[0] as i32,
        1500,
        d,
        meta["encoder_heads"].as_i64().unwrap() as i32,
        meta["n_encoder_layers"].as_i64().unwrap() as i32,
        448,
        d,
        meta["decoder_heads"].as_i64().unwrap() as i32,
        meta["n_decoder_layers"].as_i64().unwrap() as i32,
        n_mels as i32,
        ftype,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(mel_filters.nrows() as i32).to_le_bytes());
    b.extend_from_slice(&(mel_filters.ncols() as i32).to_le_bytes());
    for v in mel_filters.iter() {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(tokens.len() as i32).to_le_bytes());
    for t in tokens {
        b.extend_from_slice(&(t.len() as u32).to_le_bytes());
        b.extend_from_slice(t);
    }
    for t in &tensors {
        // convert-pt-to-ggml.py: conv biases as d x 1; 1-D tensors, conv biases and the
        // positional embeddings in f32, the rest in f16; whisper.cpp's quantizer then turns the
        // 2-D matrices (not the skipped ones) into the quantized type.
        let is_conv_bias = t.name.starts_with("encoder.conv") && t.name.ends_with(".bias");
        let shape = if is_conv_bias {
            vec![t.shape[0], 1]
        } else {
            t.shape.clone()
        };
        let keep_f32 = shape.len() < 2 || is_conv_bias || t.name.ends_with("positional_embedding");
        let code = if keep_f32 {
            TYPE_F32
        } else if ty != GgmlType::F16 && shape.len() == 2 && shape[1] % QK8_0 == 0 {
            ty.codes().1
        } else {
            TYPE_F16
        };
        b.extend_from_slice(&(shape.len() as i32).to_le_bytes());
        b.extend_from_slice(&(t.name.len() as i32).to_le_bytes());
        b.extend_from_slice(&code.to_le_bytes());
        for &n in shape.iter().rev() {
            b.extend_from_slice(&(n as i32).to_le_bytes());
        }
        b.extend_from_slice(t.name.as_bytes());
        match code {
            TYPE_F32 => t
                .values
                .iter()
                .for_each(|v| b.extend_from_slice(&v.to_le_bytes())),
            TYPE_F16 => t
                .values
                .iter()
                .for_each(|v| b.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
            _ => b.extend_from_slice(&ty.quantize(&t.values)),
        }
    }
    std::fs::write(out, b).unwrap();
}

/// Writes the CTranslate2 model `ct2_dir` again into `out` with its matrices quantized to int8 as
/// CTranslate2's converter does (`--quantization int8`): per row, scale = 127 / max |w|,
/// q = rint(w * scale), stored as `weight` (int8) and `weight_scale` (float32).
pub fn write_ct2_int8(ct2_dir: &Path, out: &Path) {
    use gstwhisperencnpu::model::ct2::writer::{write, Var};
    use gstwhisperencnpu::model::DType;
    std::fs::create_dir_all(out).unwrap();
    let f = Ct2File::open(&ct2_dir.join("model.bin")).unwrap();
    let mut vars = Vec::new();
    for v in f.variables() {
        let shape: Vec<u32> = v.shape.iter().map(|&d| d as u32).collect();
        if v.name.ends_with("/weight") && v.shape.len() == 2 && v.dtype.is_float() {
            let values = f.to_f32_vec(&v.name).unwrap();
            let cols = v.shape[1];
            let mut q = Vec::with_capacity(values.len());
            let mut scales = Vec::with_capacity(v.shape[0]);
            for row in values.chunks(cols) {
                let amax = row.iter().fold(0f32, |m, &x| m.max(x.abs()));
                let scale = if amax == 0.0 { 1.0 } else { 127.0 / amax };
                q.extend(
                    row.iter()
                        .map(|&x| (x * scale).round_ties_even() as i8 as u8),
                );
                scales.push(scale);
            }
            vars.push(Var {
                name: v.name.clone(),
                shape,
                dtype: 1,
                data: q,
            });
            vars.push(Var::f32(
                &format!("{}_scale", v.name),
                &[v.shape[0] as u32],
                &scales,
            ));
        } else {
            vars.push(Var {
                name: v.name.clone(),
                shape,
                dtype: match v.dtype {
                    DType::F32 => 0,
                    DType::I8 => 1,
                    DType::I16 => 2,
                    DType::I32 => 3,
                    DType::F16 => 4,
                    DType::BF16 => 5,
                },
                data: f.raw_bytes(&v.name).unwrap().to_vec(),
            });
        }
    }
    let aliases: Vec<(String, String)> = f
        .aliases()
        .iter()
        .map(|(a, t)| (a.clone(), t.clone()))
        .collect();
    let aliases: Vec<(&str, &str)> = aliases
        .iter()
        .map(|(a, t)| (a.as_str(), t.as_str()))
        .collect();
    let spec = f.spec().unwrap().to_string();
    std::fs::write(
        out.join("model.bin"),
        write(&spec, f.spec_revision(), &vars, &aliases),
    )
    .unwrap();
    for name in ["config.json", "tokenizer.json"] {
        std::fs::copy(ct2_dir.join(name), out.join(name)).unwrap();
    }
}
