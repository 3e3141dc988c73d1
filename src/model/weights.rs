//! The internal Whisper model: one set of named tensors, whatever file format they came from.
//!
//! Names and layouts are CTranslate2's (`encoder/layer_0/self_attention/linear_0/weight`, the
//! query, key and value projections fused into one `3d x d` matrix, layer norms as
//! `gamma`/`beta`), because the encoder and the decoder were written against them. Each format
//! reader (`formats::{ct2, safetensors, ggml}`) maps its own names onto these. A tensor is a
//! concatenation along its first axis of *parts*, each a run of stored bytes in a memory-mapped
//! file (in any of the stored types below) or zeros (the key projections Whisper has no bias
//! for); parts are only converted to `f32` when a consumer asks, so loading stays cheap and the
//! weights stay in the page cache until used.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array1, Array2, Array3};

use super::blob::Blob;
use super::ct2::{bf16_to_f32, f16_to_f32};
use super::formats::ggml_quant;
use super::ModelError;

/// How stored bytes encode a tensor's values (little endian throughout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredType {
    F32,
    F16,
    BF16,
    /// Integers (CTranslate2's scalars, its int8 weights): not convertible here.
    I8,
    I16,
    I32,
    /// ggml's block-quantized types (see [`ggml_quant`]).
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl StoredType {
    pub fn name(self) -> &'static str {
        match self {
            StoredType::F32 => "float32",
            StoredType::F16 => "float16",
            StoredType::BF16 => "bfloat16",
            StoredType::I8 => "int8",
            StoredType::I16 => "int16",
            StoredType::I32 => "int32",
            StoredType::Q4_0 => "q4_0",
            StoredType::Q4_1 => "q4_1",
            StoredType::Q5_0 => "q5_0",
            StoredType::Q5_1 => "q5_1",
            StoredType::Q8_0 => "q8_0",
        }
    }

    /// Whether [`Weights`] can give the values as `f32`.
    pub fn is_float(self) -> bool {
        !matches!(self, StoredType::I8 | StoredType::I16 | StoredType::I32)
    }

    /// Bytes taken by `numel` values, `None` if that overflows or `numel` does not fill whole
    /// quantization blocks.
    pub fn byte_len(self, numel: usize) -> Option<usize> {
        let (block, bytes) = match self {
            StoredType::F32 | StoredType::I32 => (1, 4),
            StoredType::F16 | StoredType::BF16 | StoredType::I16 => (1, 2),
            StoredType::I8 => (1, 1),
            q => ggml_quant::block_layout(q)?,
        };
        if !numel.is_multiple_of(block) {
            return None;
        }
        (numel / block).checked_mul(bytes)
    }
}

impl std::fmt::Display for StoredType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A run of a tensor's values.
#[derive(Clone, Debug)]
pub(crate) enum Part {
    /// `numel` values of type `ty` at `offset` in `blob` (range checked when the part is made).
    Stored {
        blob: Arc<Blob>,
        offset: usize,
        numel: usize,
        ty: StoredType,
    },
    /// `numel` zeros.
    Zeros(usize),
    /// CTranslate2's int8 weights: `scales.len()` rows of int8 values at `offset`, row `r` worth
    /// `q / scales[r]` (CTranslate2 quantizes each row with scale 127 / max |w|).
    ScaledI8 {
        blob: Arc<Blob>,
        offset: usize,
        numel: usize,
        scales: Arc<[f32]>,
    },
}

impl Part {
    /// A stored part, checking that its bytes are inside the file.
    pub(crate) fn stored(
        blob: &Arc<Blob>,
        offset: usize,
        numel: usize,
        ty: StoredType,
    ) -> Result<Part, String> {
        let len = ty
            .byte_len(numel)
            .ok_or_else(|| format!("{numel} {ty} values do not make whole blocks"))?;
        if blob.get(offset, len).is_none() {
            return Err(format!(
                "{len} bytes at offset {offset} run past the end of the file ({} bytes)",
                blob.bytes().len()
            ));
        }
        Ok(Part::Stored {
            blob: blob.clone(),
            offset,
            numel,
            ty,
        })
    }

    /// CTranslate2 int8 rows with their scales, checking the sizes.
    pub(crate) fn scaled_i8(
        blob: &Arc<Blob>,
        offset: usize,
        numel: usize,
        scales: Vec<f32>,
    ) -> Result<Part, String> {
        if scales.is_empty() || numel == 0 || !numel.is_multiple_of(scales.len()) {
            return Err(format!(
                "{} scales for {numel} int8 values (one per row expected)",
                scales.len()
            ));
        }
        if scales.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err("a row scale is zero or not finite".into());
        }
        if blob.get(offset, numel).is_none() {
            return Err(format!(
                "{numel} bytes at offset {offset} run past the end of the file"
            ));
        }
        Ok(Part::ScaledI8 {
            blob: blob.clone(),
            offset,
            numel,
            scales: scales.into(),
        })
    }

    fn numel(&self) -> usize {
        match self {
            Part::Stored { numel, .. } | Part::Zeros(numel) | Part::ScaledI8 { numel, .. } => {
                *numel
            }
        }
    }
}

/// One tensor of the internal model.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub shape: Vec<usize>,
    /// Where it came from, for messages (`model.encoder.layers.0.fc1.weight`, ...).
    pub source: String,
    parts: Vec<Part>,
}

impl Tensor {
    /// A tensor of `shape` from `parts` (concatenated in order); their sizes must add up.
    pub(crate) fn new(
        shape: Vec<usize>,
        source: String,
        parts: Vec<Part>,
    ) -> Result<Tensor, String> {
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("{source}: shape {shape:?} overflows"))?;
        let have: usize = parts.iter().map(Part::numel).sum();
        if have != numel {
            return Err(format!(
                "{source}: {have} stored values for shape {shape:?} ({numel} values)"
            ));
        }
        Ok(Tensor {
            shape,
            source,
            parts,
        })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The stored type (of the first stored part: the parts of one tensor share it, zeros aside).
    pub fn stored_type(&self) -> StoredType {
        self.parts
            .iter()
            .find_map(|p| match p {
                Part::Stored { ty, .. } => Some(*ty),
                Part::ScaledI8 { .. } => Some(StoredType::I8),
                Part::Zeros(_) => None,
            })
            .unwrap_or(StoredType::F32)
    }

    /// Whether every part converts to `f32`.
    pub fn is_float(&self) -> bool {
        self.parts.iter().all(|p| match p {
            Part::Stored { ty, .. } => ty.is_float(),
            Part::Zeros(_) | Part::ScaledI8 { .. } => true,
        })
    }
}

/// The tensors of a Whisper model under the internal names, and the hyper-parameters that are not
/// shapes (attention heads).
#[derive(Debug)]
pub struct Weights {
    /// The file messages name (the weights file, or the first shard).
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    encoder_heads: usize,
    decoder_heads: usize,
}

impl Weights {
    pub(crate) fn new(
        path: PathBuf,
        tensors: HashMap<String, Tensor>,
        encoder_heads: usize,
        decoder_heads: usize,
    ) -> Weights {
        Weights {
            path,
            tensors,
            encoder_heads,
            decoder_heads,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Attention heads of the encoder and of the decoder.
    pub fn heads(&self) -> (usize, usize) {
        (self.encoder_heads, self.decoder_heads)
    }

    /// Internal names of every tensor (no order).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Result<&Tensor, ModelError> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingVariable {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// A tensor's metadata, checking its shape.
    pub fn info_shaped(&self, name: &str, expected: &[usize]) -> Result<&Tensor, ModelError> {
        let t = self.info(name)?;
        if t.shape != expected {
            return Err(self.shape_error(name, format!("{expected:?}"), &t.shape));
        }
        Ok(t)
    }

    pub(crate) fn shape_error(&self, name: &str, expected: String, found: &[usize]) -> ModelError {
        let source = self
            .tensors
            .get(name)
            .map(|t| t.source.as_str())
            .filter(|s| *s != name);
        ModelError::UnexpectedShape {
            path: self.path.clone(),
            name: match source {
                Some(s) => format!("{name} (from {s})"),
                None => name.to_string(),
            },
            expected,
            found: found.to_vec(),
        }
    }

    /// A tensor's values as `f32`, flattened in row-major order.
    pub fn to_f32_vec(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let t = self.info(name)?;
        let mut out = Vec::with_capacity(t.numel());
        for part in &t.parts {
            match part {
                Part::Zeros(n) => out.resize(out.len() + n, 0.0),
                Part::ScaledI8 {
                    blob,
                    offset,
                    numel,
                    scales,
                } => {
                    let bytes = blob
                        .get(*offset, *numel)
                        .ok_or_else(|| ModelError::Malformed {
                            path: blob.path().to_path_buf(),
                            reason: format!("data of {} lies outside the file", t.source),
                        })?;
                    let cols = numel / scales.len();
                    for (row, &scale) in bytes.chunks_exact(cols).zip(scales.iter()) {
                        out.extend(row.iter().map(|&q| f32::from(q as i8) / scale));
                    }
                }
                Part::Stored {
                    blob,
                    offset,
                    numel,
                    ty,
                } => {
                    let bytes = ty
                        .byte_len(*numel)
                        .and_then(|len| blob.get(*offset, len))
                        .ok_or_else(|| ModelError::Malformed {
                            path: blob.path().to_path_buf(),
                            reason: format!("data of {} lies outside the file", t.source),
                        })?;
                    decode_into(*ty, bytes, &mut out).map_err(|reason| {
                        ModelError::UnsupportedDtype {
                            path: blob.path().to_path_buf(),
                            name: t.source.clone(),
                            dtype: ty.name().to_string(),
                            reason,
                        }
                    })?;
                }
            }
        }
        Ok(out)
    }

    /// A 1-D float tensor of length `n`.
    pub fn f32_1d(&self, name: &str, n: usize) -> Result<Array1<f32>, ModelError> {
        self.info_shaped(name, &[n])?;
        Ok(Array1::from_vec(self.to_f32_vec(name)?))
    }

    /// A 2-D float tensor of shape `rows x cols`.
    pub fn f32_2d(&self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>, ModelError> {
        self.info_shaped(name, &[rows, cols])?;
        let v = self.to_f32_vec(name)?;
        Array2::from_shape_vec((rows, cols), v).map_err(|e| self.layout_error(name, e))
    }

    /// A 3-D float tensor of shape `a x b x c`.
    pub fn f32_3d(
        &self,
        name: &str,
        a: usize,
        b: usize,
        c: usize,
    ) -> Result<Array3<f32>, ModelError> {
        self.info_shaped(name, &[a, b, c])?;
        let v = self.to_f32_vec(name)?;
        Array3::from_shape_vec((a, b, c), v).map_err(|e| self.layout_error(name, e))
    }

    fn layout_error(&self, name: &str, e: ndarray::ShapeError) -> ModelError {
        ModelError::Malformed {
            path: self.path.clone(),
            reason: format!("tensor {name:?}: {e}"),
        }
    }
}

/// Appends the values of `bytes` (type `ty`) to `out` as `f32`.
fn decode_into(ty: StoredType, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), String> {
    match ty {
        StoredType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        StoredType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
        ),
        StoredType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
        ),
        StoredType::I8 | StoredType::I16 | StoredType::I32 => {
            return Err(
                "expected a float type (float32, float16, bfloat16 or a ggml \
                        quantization)"
                    .to_string(),
            )
        }
        q => ggml_quant::dequantize_into(q, bytes, out)?,
    }
    Ok(())
}
