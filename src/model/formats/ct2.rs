//! CTranslate2 models (`model.bin` read by [`Ct2File`], `config.json`, `tokenizer.json`) onto the
//! internal model: the names are already the internal ones, so each variable becomes one tensor.
//! Weights quantized to int8 (`--quantization int8`, `int8_float16`, ...) are int8 rows with a
//! `weight_scale` per row, converted to float on use like the other stored types.
use std::collections::HashMap;
use std::path::Path;

use super::{read_json, Format, Loaded, TokenizerSource};
use crate::model::ct2::{Ct2File, DType};
use crate::model::weights::{Part, StoredType, Tensor, Weights};
use crate::model::{ModelError, WhisperConfig};

fn stored_type(d: DType) -> StoredType {
    match d {
        DType::F32 => StoredType::F32,
        DType::F16 => StoredType::F16,
        DType::BF16 => StoredType::BF16,
        DType::I8 => StoredType::I8,
        DType::I16 => StoredType::I16,
        DType::I32 => StoredType::I32,
    }
}

/// Attention heads, stored as an integer scalar.
fn heads(w: &Ct2File, name: &str) -> Result<usize, ModelError> {
    let n = w.scalar_int(name)?;
    if n <= 0 || n > 4096 {
        return Err(ModelError::Malformed {
            path: w.path().to_path_buf(),
            reason: format!("{name} is {n}"),
        });
    }
    Ok(n as usize)
}

/// Loads `bin` (a CTranslate2 `model.bin`) with the `config.json` and `tokenizer.json` of `dir`.
pub(crate) fn load(dir: &Path, bin: &Path) -> Result<Loaded, ModelError> {
    let file = Ct2File::open(bin)?;
    match file.spec() {
        Some("WhisperSpec") => {}
        other => {
            return Err(ModelError::NotWhisper {
                path: file.path().to_path_buf(),
                spec: other.unwrap_or("<none: binary version 1>").to_string(),
            })
        }
    }
    let mut tensors = HashMap::with_capacity(file.variables().len() + file.aliases().len());
    for v in file.variables() {
        let malformed = |reason: String| ModelError::Malformed {
            path: file.path().to_path_buf(),
            reason: format!("variable {:?}: {reason}", v.name),
        };
        // int8 weights (quantization int8, int8_float16, ...) come with one scale per row.
        let scale_name = format!("{}_scale", v.name);
        let part = if v.dtype == DType::I8 && file.contains(&scale_name) {
            let scales = file.to_f32_vec(&scale_name)?;
            Part::scaled_i8(file.blob(), v.offset, v.numel(), scales).map_err(malformed)?
        } else {
            Part::stored(file.blob(), v.offset, v.numel(), stored_type(v.dtype))
                .map_err(malformed)?
        };
        let t = Tensor::new(v.shape.clone(), v.name.clone(), vec![part]).map_err(|reason| {
            ModelError::Malformed {
                path: file.path().to_path_buf(),
                reason,
            }
        })?;
        tensors.insert(v.name.clone(), t);
    }
    for (alias, target) in file.aliases() {
        if let Some(t) = tensors.get(target).cloned() {
            tensors.insert(alias.clone(), t);
        }
    }
    let weights = Weights::new(
        file.path().to_path_buf(),
        tensors,
        heads(&file, "encoder/num_heads")?,
        heads(&file, "decoder/num_heads")?,
    );
    let config = read_json(&dir.join("config.json"))?
        .as_ref()
        .map(WhisperConfig::from_json)
        .unwrap_or_default();
    Ok(Loaded {
        dir: dir.to_path_buf(),
        format: Format::Ct2,
        weights,
        config,
        tokenizer: TokenizerSource::Json(dir.join("tokenizer.json")),
        mel_filters: None,
        stated: Vec::new(),
        stated_in: bin.to_path_buf(),
    })
}
