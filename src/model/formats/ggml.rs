//! whisper.cpp's ggml model files (`ggml-base.en.bin`, `ggml-small-q5_0.bin`, ...): the legacy
//! ggml container, not GGUF.
//!
//! Layout, as whisper.cpp's `whisper_model_load` reads it and its `convert-pt-to-ggml.py` writes
//! it (little endian, no padding anywhere):
//!
//! ```text
//! u32 magic                         GGML_MAGIC 0x67676d6c
//! i32 x 11 hyper-parameters         n_vocab, n_audio_ctx, n_audio_state, n_audio_head,
//!                                   n_audio_layer, n_text_ctx, n_text_state, n_text_head,
//!                                   n_text_layer, n_mels, ftype (+ 1000 x quantization version)
//! i32 n_mel, i32 n_fft, f32 x n_mel x n_fft      the mel filterbank
//! i32 n_tokens, n_tokens x { u32 len, len bytes } the text tokens' bytes (no special tokens)
//! until the end: { i32 n_dims, i32 name_len, i32 type, i32 x n_dims ne, name, data }
//! ```
//!
//! `ne[0]` is the fastest-varying dimension, so a PyTorch tensor of shape `[a, b]` is stored with
//! `ne = [b, a]` and the same bytes. Tensor names are OpenAI's (`encoder.blocks.0.attn.query.weight`).
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ndarray::Array2;

use super::layout::{Mapper, Stored, OPENAI_NAMES};
use super::{ggml_quant, ggml_vocab, Format, Loaded, TokenizerSource, GGML_MAGIC};
use crate::model::blob::Blob;
use crate::model::bytes::ByteReader;
use crate::model::weights::{StoredType, Weights};
use crate::model::{ModelError, WhisperConfig};

const FORMAT: &str = "whisper.cpp ggml";

/// `GGML_QNT_VERSION_FACTOR` (ggml.h): `ftype = type + 1000 x quantization version`.
const QNT_VERSION_FACTOR: i32 = 1000;
/// `GGML_QNT_VERSION` (ggml.h) whose block layouts [`ggml_quant`] decodes.
const QNT_VERSION: i32 = 2;

/// Most dimensions a ggml tensor has (`GGML_MAX_DIMS`).
const MAX_DIMS: i32 = 4;
/// Longest tensor name accepted (whisper.cpp's are under 50 bytes).
const MAX_NAME_LEN: i32 = 256;
/// Longest vocabulary entry accepted (the longest Whisper token is 128 bytes).
const MAX_TOKEN_LEN: u32 = 1024;

/// The `ggml_type` codes (ggml.h) this reader knows.
fn stored_type(code: i32) -> Option<StoredType> {
    Some(match code {
        0 => StoredType::F32,
        1 => StoredType::F16,
        2 => StoredType::Q4_0,
        3 => StoredType::Q4_1,
        6 => StoredType::Q5_0,
        7 => StoredType::Q5_1,
        8 => StoredType::Q8_0,
        _ => return None,
    })
}

/// The hyper-parameters at the start of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hparams {
    pub n_vocab: i32,
    pub n_audio_ctx: i32,
    pub n_audio_state: i32,
    pub n_audio_head: i32,
    pub n_audio_layer: i32,
    pub n_text_ctx: i32,
    pub n_text_state: i32,
    pub n_text_head: i32,
    pub n_text_layer: i32,
    pub n_mels: i32,
    pub ftype: i32,
}

/// A parsed ggml file.
pub struct GgmlFile {
    pub hparams: Hparams,
    /// `n_mel x n_fft` filterbank.
    pub mel_filters: Array2<f32>,
    /// Bytes of the text tokens (ids `0..tokens.len()`).
    pub tokens: Vec<Vec<u8>>,
    tensors: HashMap<String, Stored>,
    blob: Arc<Blob>,
}

/// ggml's words for a read past the end of the file.
fn truncated(
    path: &Path,
    what: String,
    offset: usize,
    needed: usize,
    file_len: usize,
) -> ModelError {
    ModelError::Format {
        path: path.to_path_buf(),
        format: FORMAT,
        reason: format!(
            "truncated: reading {what} at byte offset {offset} needs {needed} byte(s), the file is \
             {file_len} bytes long"
        ),
    }
}

impl ByteReader<'_> {
    /// A count or size: must lie in `1..=max`.
    fn positive(&mut self, what: &str, max: i32) -> Result<usize, ModelError> {
        let v = self.i32(&|| what.to_string())?;
        if v <= 0 || v > max {
            return Err(self.invalid(format!("{what} is {v} (expected 1 to {max})")));
        }
        Ok(v as usize)
    }

    fn invalid(&self, reason: String) -> ModelError {
        ModelError::Format {
            path: self.path.to_path_buf(),
            format: FORMAT,
            reason,
        }
    }
}

impl GgmlFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: &Path) -> Result<GgmlFile, ModelError> {
        Self::parse(Arc::new(Blob::open(path)?))
    }

    /// Parses a file held in memory; `path` is only used in messages.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<GgmlFile, ModelError> {
        Self::parse(Arc::new(Blob::from_bytes(bytes, path)))
    }

    fn parse(blob: Arc<Blob>) -> Result<GgmlFile, ModelError> {
        let mut r = ByteReader::new(blob.bytes(), blob.path(), truncated);
        let magic = r.take(4, &|| "the magic".into())?;
        if u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) != GGML_MAGIC {
            return Err(r.invalid(format!("no ggml magic (first bytes {magic:02x?})")));
        }
        // Bounds far above any Whisper (large-v3: 51866 tokens, 1280 wide, 32 layers, 20 heads).
        let mut h = [0usize; 10];
        let hp_names = [
            ("n_vocab", 1 << 20),
            ("n_audio_ctx", 1 << 16),
            ("n_audio_state", 1 << 16),
            ("n_audio_head", 4096),
            ("n_audio_layer", 1024),
            ("n_text_ctx", 1 << 16),
            ("n_text_state", 1 << 16),
            ("n_text_head", 4096),
            ("n_text_layer", 1024),
            ("n_mels", 1024),
        ];
        for (v, (name, max)) in h.iter_mut().zip(hp_names) {
            *v = r.positive(name, max)?;
        }
        let ftype = r.i32(&|| "ftype".into())?;
        let hparams = Hparams {
            n_vocab: h[0] as i32,
            n_audio_ctx: h[1] as i32,
            n_audio_state: h[2] as i32,
            n_audio_head: h[3] as i32,
            n_audio_layer: h[4] as i32,
            n_text_ctx: h[5] as i32,
            n_text_state: h[6] as i32,
            n_text_head: h[7] as i32,
            n_text_layer: h[8] as i32,
            n_mels: h[9] as i32,
            ftype,
        };
        let qnt_version = ftype / QNT_VERSION_FACTOR;

        let n_mel = r.positive("the filterbank's n_mel", 1024)?;
        let n_fft = r.positive("the filterbank's n_fft", 1 << 16)?;
        let raw = r.take(n_mel * n_fft * 4, &|| "the mel filterbank".into())?;
        let filters: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mel_filters = Array2::from_shape_vec((n_mel, n_fft), filters)
            .map_err(|e| r.invalid(format!("mel filterbank: {e}")))?;

        let n_tokens = r.positive("the vocabulary size", 1 << 20)?;
        let mut tokens = Vec::with_capacity(n_tokens.min(r.data.len() / 4));
        for i in 0..n_tokens {
            let b = r.take(4, &|| format!("the length of token {i}"))?;
            let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if len > MAX_TOKEN_LEN {
                return Err(r.invalid(format!("token {i} is {len} bytes long")));
            }
            tokens.push(r.take(len as usize, &|| format!("token {i}"))?.to_vec());
        }

        let mut tensors = HashMap::new();
        while r.pos < r.data.len() {
            let n_dims = r.positive("a tensor's n_dims", MAX_DIMS)?;
            let name_len = r.positive("a tensor's name length", MAX_NAME_LEN)?;
            let code = r.i32(&|| "a tensor's type".into())?;
            let mut ne = Vec::with_capacity(n_dims);
            for d in 0..n_dims {
                ne.push(r.positive(&format!("dimension {d} of a tensor"), i32::MAX)?);
            }
            let name = r.take(name_len, &|| "a tensor's name".into())?;
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| r.invalid(format!("a tensor name at {} is not UTF-8", r.pos)))?;
            let ty = stored_type(code).ok_or_else(|| ModelError::UnsupportedDtype {
                path: r.path.to_path_buf(),
                name: name.clone(),
                dtype: format!("ggml type {code}"),
                reason: "this reader knows f32, f16, q4_0, q4_1, q5_0, q5_1 and q8_0".into(),
            })?;
            if let Some((block, _)) = ggml_quant::block_layout(ty) {
                if qnt_version != QNT_VERSION {
                    return Err(r.invalid(format!(
                        "tensor {name:?} is {ty} of quantization version {qnt_version}; this \
                         reader knows version {QNT_VERSION} (whisper.cpp since May 2023): \
                         re-quantize it with a current whisper.cpp"
                    )));
                }
                if ne[0] % block != 0 {
                    return Err(r.invalid(format!(
                        "tensor {name:?} has rows of {} values, not whole {ty} blocks",
                        ne[0]
                    )));
                }
            }
            let numel = ne.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let len = numel.and_then(|n| ty.byte_len(n)).ok_or_else(|| {
                r.invalid(format!("tensor {name:?} of shape {ne:?} is too large"))
            })?;
            let offset = r.pos;
            r.take(len, &|| format!("the {len} data bytes of tensor {name:?}"))?;
            let shape: Vec<usize> = ne.iter().rev().copied().collect();
            if tensors
                .insert(
                    name.clone(),
                    Stored {
                        blob: blob.clone(),
                        offset,
                        shape,
                        ty,
                    },
                )
                .is_some()
            {
                return Err(r.invalid(format!("tensor {name:?} is stored twice")));
            }
        }
        Ok(GgmlFile {
            hparams,
            mel_filters,
            tokens,
            tensors,
            blob: blob.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        self.blob.path()
    }

    /// Names of the stored tensors.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

/// Loads the whisper.cpp model in `path`.
pub(crate) fn load(path: &Path) -> Result<Loaded, ModelError> {
    let file = GgmlFile::open(path)?;
    let h = file.hparams;
    let mismatch = |reason: String| ModelError::Mismatch {
        path: path.to_path_buf(),
        reason,
    };
    if h.n_audio_state != h.n_text_state {
        return Err(mismatch(format!(
            "n_audio_state {} differs from n_text_state {}: not a Whisper model",
            h.n_audio_state, h.n_text_state
        )));
    }
    if file.mel_filters.nrows() != h.n_mels as usize {
        return Err(mismatch(format!(
            "the file's mel filterbank has {} bands, its n_mels is {}",
            file.mel_filters.nrows(),
            h.n_mels
        )));
    }
    check_filterbank(path, &file.mel_filters);
    let tensors = Mapper {
        path,
        stored: &file.tensors,
        names: &OPENAI_NAMES,
        out: HashMap::new(),
    }
    .map_all()?;
    let weights = Weights::new(
        path.to_path_buf(),
        tensors,
        h.n_audio_head as usize,
        h.n_text_head as usize,
    );
    let tokenizer = ggml_vocab::tokenizer(&file.tokens, h.n_vocab as usize)
        .map_err(|reason| mismatch(format!("vocabulary: {reason}")))?;
    Ok(Loaded {
        dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        format: Format::Ggml,
        weights,
        config: WhisperConfig::default(),
        tokenizer: TokenizerSource::Built(Box::new(tokenizer)),
        mel_filters: Some(file.mel_filters),
        stated: stated(&h),
        stated_in: path.to_path_buf(),
    })
}

/// Largest difference tolerated between the file's filterbank and the one the front end
/// computes, relative to the largest weight (whisper.cpp's converter stores OpenAI's
/// `mel_filters.npz`, which the computed one matches to about 1e-7).
const FILTERBANK_TOLERANCE: f32 = 1e-4;

/// The front end computes Whisper's filterbank itself; a file whose own differs is transcribed
/// with the standard one, and says so.
fn check_filterbank(path: &Path, filters: &Array2<f32>) {
    if filters.ncols() != crate::mel::N_BINS {
        log::warn!(
            target: "whisperencnpu",
            "{}: the file's mel filterbank has {} frequency bins, not {}; the standard \
             filterbank is used",
            path.display(),
            filters.ncols(),
            crate::mel::N_BINS
        );
        return;
    }
    let ours =
        crate::mel::mel_filterbank(filters.nrows(), crate::mel::SAMPLE_RATE, crate::mel::N_FFT);
    let max = ours.iter().fold(0f32, |m, &v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(filters.iter())
        .fold(0f32, |m, (&a, &b)| m.max((a - b).abs()));
    if diff > FILTERBANK_TOLERANCE * max {
        log::warn!(
            target: "whisperencnpu",
            "{}: the file's mel filterbank differs from Whisper's by up to {diff:.2e} (largest \
             weight {max:.2e}); the standard filterbank is used",
            path.display()
        );
    }
}

/// The hyper-parameters the file states, to check against the weights' shapes.
fn stated(h: &Hparams) -> Vec<(&'static str, &'static str, usize)> {
    vec![
        ("n_vocab", "n_vocab", h.n_vocab as usize),
        ("n_audio_ctx", "n_audio_ctx", h.n_audio_ctx as usize),
        ("n_audio_state", "d_model", h.n_audio_state as usize),
        (
            "n_audio_layer",
            "n_encoder_layers",
            h.n_audio_layer as usize,
        ),
        ("n_text_ctx", "n_text_ctx", h.n_text_ctx as usize),
        ("n_text_layer", "n_decoder_layers", h.n_text_layer as usize),
        ("n_mels", "n_mels", h.n_mels as usize),
    ]
}
