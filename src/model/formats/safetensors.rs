//! Hugging Face Transformers Whisper models: `model.safetensors` (or shards listed by
//! `model.safetensors.index.json`), `config.json`, `tokenizer.json`, and `generation_config.json`
//! for the alignment heads and the suppress lists when the model has one.
//!
//! Each safetensors file is memory-mapped and its header read by the `safetensors` crate (which
//! checks that the tensors' byte ranges tile the data exactly); the tensors are then mapped onto
//! the internal model by [`layout`](super::layout) with Transformers' names.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::layout::{Mapper, Stored, HF_NAMES};
use super::{
    hf_tokenizer, read_json, Format, Loaded, TokenizerSource, SAFETENSORS_FILE, SAFETENSORS_INDEX,
};
use crate::model::blob::Blob;
use crate::model::weights::{StoredType, Weights};
use crate::model::{ModelError, WhisperConfig};

const FORMAT: &str = "safetensors";

/// Bytes of the little-endian u64 header length that starts a safetensors file.
const HEADER_LEN_BYTES: usize = 8;

fn invalid(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Format {
        path: path.to_path_buf(),
        format: FORMAT,
        reason: reason.into(),
    }
}

/// Adds the tensors of one safetensors file to `out`.
fn read_file(path: &Path, out: &mut HashMap<String, Stored>) -> Result<(), ModelError> {
    let blob = Arc::new(Blob::open(path)?);
    let (header_len, meta) =
        SafeTensors::read_metadata(blob.bytes()).map_err(|e| invalid(path, explain(&e, &blob)))?;
    let data_start = HEADER_LEN_BYTES + header_len;
    for (name, info) in meta.tensors() {
        let ty = match info.dtype {
            Dtype::F32 => StoredType::F32,
            Dtype::F16 => StoredType::F16,
            Dtype::BF16 => StoredType::BF16,
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name,
                    dtype: format!("{other:?}"),
                    reason: "Whisper's weights must be F32, F16 or BF16".into(),
                })
            }
        };
        if out.contains_key(&name) {
            return Err(invalid(path, format!("tensor {name:?} is stored twice")));
        }
        out.insert(
            name,
            Stored {
                blob: blob.clone(),
                offset: data_start + info.data_offsets.0,
                shape: info.shape.clone(),
                ty,
            },
        );
    }
    Ok(())
}

/// The crate's error, with what it means for this file.
fn explain(e: &SafeTensorError, blob: &Blob) -> String {
    let len = blob.bytes().len();
    let stated = blob
        .get(0, HEADER_LEN_BYTES)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
    match (e, stated) {
        (SafeTensorError::HeaderTooSmall, _) => {
            format!("truncated: {len} bytes, not even the {HEADER_LEN_BYTES}-byte header length")
        }
        (SafeTensorError::InvalidHeaderLength, Some(n)) => format!(
            "truncated or not safetensors: the header length says {n} bytes, {} follow",
            len.saturating_sub(HEADER_LEN_BYTES)
        ),
        (SafeTensorError::MetadataIncompleteBuffer, _) => format!(
            "truncated or padded: the tensors' data does not end where the file ends ({len} \
             bytes)"
        ),
        (e, _) => format!("bad header: {e}"),
    }
}

/// The shard files named by a `model.safetensors.index.json`.
fn shards(index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let json = read_json(index)?.ok_or_else(|| ModelError::FileNotFound {
        path: index.to_path_buf(),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| invalid(index, "no \"weight_map\" object"))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| invalid(index, format!("weight_map[{tensor:?}] is not a file name")))?;
        // Shards live next to the index; a name that climbs out of the folder is refused.
        if Path::new(file).components().count() != 1 || file.starts_with('.') {
            return Err(invalid(
                index,
                format!("shard name {file:?} is not a plain file name"),
            ));
        }
        let path = dir.join(file);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(invalid(index, "the weight map lists no shard"));
    }
    Ok(files)
}

/// Loads the Transformers model in `dir`.
pub(crate) fn load_dir(dir: &Path) -> Result<Loaded, ModelError> {
    let single = dir.join(SAFETENSORS_FILE);
    let files = if single.is_file() {
        vec![single]
    } else {
        shards(&dir.join(SAFETENSORS_INDEX))?
    };
    load_files(dir, &files)
}

/// Loads one safetensors file, with the JSON files next to it.
pub(crate) fn load_file(path: &Path) -> Result<Loaded, ModelError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    load_files(dir, &[path.to_path_buf()])
}

fn load_files(dir: &Path, files: &[PathBuf]) -> Result<Loaded, ModelError> {
    let main = files
        .first()
        .cloned()
        .ok_or_else(|| invalid(dir, "no safetensors file"))?;
    let mut stored = HashMap::new();
    for f in files {
        read_file(f, &mut stored)?;
    }
    // Some fine-tunes are saved from `WhisperModel` (no `model.` prefix, no `proj_out`).
    if !stored.contains_key(HF_NAMES.dec_embed) {
        let prefixed: HashMap<String, Stored> = stored
            .iter()
            .map(|(k, v)| (format!("model.{k}"), v.clone()))
            .collect();
        if prefixed.contains_key(HF_NAMES.dec_embed) {
            stored = prefixed;
        }
    }
    let config_path = dir.join("config.json");
    let config_json = read_json(&config_path)?.ok_or_else(|| ModelError::FileNotFound {
        path: config_path.clone(),
    })?;
    let generation = read_json(&dir.join("generation_config.json"))?;

    let tensors = Mapper {
        path: &main,
        stored: &stored,
        names: &HF_NAMES,
        out: HashMap::new(),
    }
    .map_all()?;
    let head_count = |key: &str| -> Result<usize, ModelError> {
        let n = config_json
            .get(key)
            .and_then(|v| v.as_u64())
            .ok_or_else(|| ModelError::Mismatch {
                path: config_path.clone(),
                reason: format!("no positive integer {key:?} (attention heads)"),
            })?;
        if n == 0 || n > 4096 {
            return Err(ModelError::Mismatch {
                path: config_path.clone(),
                reason: format!("{key} is {n}"),
            });
        }
        Ok(n as usize)
    };
    let weights = Weights::new(
        main,
        tensors,
        head_count("encoder_attention_heads")?,
        head_count("decoder_attention_heads")?,
    );
    let config = whisper_config(&config_json, generation.as_ref());
    Ok(Loaded {
        dir: dir.to_path_buf(),
        format: Format::HfSafetensors,
        weights,
        stated: stated_dims(&config_json),
        stated_in: config_path,
        config,
        tokenizer: if !dir.join("tokenizer.json").is_file() && hf_tokenizer::present(dir) {
            TokenizerSource::HfFiles(dir.to_path_buf())
        } else {
            TokenizerSource::Json(dir.join("tokenizer.json"))
        },
        mel_filters: None,
    })
}

/// Hyper-parameters `config.json` states, to check against the weights' shapes.
fn stated_dims(config: &serde_json::Value) -> Vec<(&'static str, &'static str, usize)> {
    [
        ("num_mel_bins", "n_mels"),
        ("d_model", "d_model"),
        ("encoder_layers", "n_encoder_layers"),
        ("decoder_layers", "n_decoder_layers"),
        ("vocab_size", "n_vocab"),
        ("max_source_positions", "n_audio_ctx"),
        ("max_target_positions", "n_text_ctx"),
    ]
    .into_iter()
    .filter_map(|(k, key)| Some((k, key, config.get(k)?.as_u64()? as usize)))
    .collect()
}

/// The decoder's lists: `generation_config.json` first (where Transformers keeps them now),
/// `config.json` for older models.
fn whisper_config(
    config: &serde_json::Value,
    generation: Option<&serde_json::Value>,
) -> WhisperConfig {
    let pick = |key: &str| -> Option<&serde_json::Value> {
        generation
            .and_then(|g| g.get(key))
            .filter(|v| !v.is_null())
            .or_else(|| config.get(key).filter(|v| !v.is_null()))
    };
    let ids = |key: &str| -> Vec<i64> {
        pick(key)
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_i64()).collect())
            .unwrap_or_default()
    };
    let alignment_heads = pick("alignment_heads")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    let p = p.as_array()?;
                    Some((p.first()?.as_u64()? as usize, p.get(1)?.as_u64()? as usize))
                })
                .collect()
        })
        .unwrap_or_default();
    WhisperConfig {
        suppress_ids: ids("suppress_tokens"),
        suppress_ids_begin: ids("begin_suppress_tokens"),
        alignment_heads,
    }
}
