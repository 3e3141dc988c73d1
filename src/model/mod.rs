//! The Whisper model: its weights, in whichever format they come, and the encoder and decoder.
//!
//! [`WhisperModel::load`] takes a model directory, a model file or a model name
//! ([`locate`]), tells the format by the files' content ([`formats`]: CTranslate2, Hugging Face
//! safetensors, whisper.cpp ggml), maps the tensors onto one internal set ([`Weights`]), checks
//! that it is a complete Whisper model and derives the hyper-parameters ([`Dims`]) from the
//! weights' shapes, so any Whisper size loads. Weights stay in the memory-mapped files until a
//! consumer (the [`Encoder`], the decoder) converts the ones it needs.
pub mod blob;
mod bytes;
pub mod ct2;
pub mod decoder;
pub mod encoder;
mod error;
pub mod formats;
pub mod locate;
mod ops;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

use ndarray::Array2;

pub use ct2::{Ct2File, DType, VarInfo};
pub use encoder::Encoder;
pub use error::ModelError;
pub use formats::{Format, TokenizerSource};
pub use weights::{StoredType, Weights};

/// Hyper-parameters of a Whisper model, as found in its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Mel bands of the input (80, or 128 for large-v3).
    pub n_mels: usize,
    /// Width of the residual stream (384 tiny, 512 base, 768 small, ...), encoder and decoder.
    pub d_model: usize,
    /// Encoder positions (1500: 30 s of audio after the stride-2 convolution).
    pub n_audio_ctx: usize,
    pub n_encoder_layers: usize,
    /// Encoder attention heads.
    pub n_heads: usize,
    /// Vocabulary size (51864 for `.en` models, 51865+ for multilingual ones).
    pub n_vocab: usize,
    /// Decoder positions (448).
    pub n_text_ctx: usize,
    pub n_decoder_layers: usize,
    pub n_decoder_heads: usize,
}

impl Dims {
    /// Per-head width of the encoder's attention.
    pub fn d_head(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Multilingual models have the language tokens (vocabulary of 51865 and more).
    pub fn is_multilingual(&self) -> bool {
        self.n_vocab >= 51865
    }
}

/// What the decoder will need from `config.json` (CTranslate2's Whisper config).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WhisperConfig {
    pub suppress_ids: Vec<i64>,
    pub suppress_ids_begin: Vec<i64>,
    /// (layer, head) pairs of the decoder's cross-attention used for word alignment.
    pub alignment_heads: Vec<(usize, usize)>,
}

impl WhisperConfig {
    pub(crate) fn from_json(v: &serde_json::Value) -> WhisperConfig {
        let ids = |key: &str| -> Vec<i64> {
            v.get(key)
                .and_then(|a| a.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_i64()).collect())
                .unwrap_or_default()
        };
        let alignment_heads = v
            .get("alignment_heads")
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
            suppress_ids: ids("suppress_ids"),
            suppress_ids_begin: ids("suppress_ids_begin"),
            alignment_heads,
        }
    }
}

/// A loaded Whisper model.
#[derive(Debug)]
pub struct WhisperModel {
    dir: PathBuf,
    format: Format,
    weights: Weights,
    dims: Dims,
    config: WhisperConfig,
    tokenizer: TokenizerSource,
    mel_filters: Option<Array2<f32>>,
}

impl WhisperModel {
    /// Loads the model `path` names: a model directory, a model file, or a model name looked up
    /// offline ([`locate::resolve`]: `base`, `openai/whisper-base`, `ggml-base.en.bin`, ...).
    ///
    /// Checks that every encoder tensor is present with the shape and a type the encoder can
    /// convert to float, so that [`Encoder::new`] only fails on resource problems.
    pub fn load(path: &Path) -> Result<WhisperModel, ModelError> {
        let path = locate::resolve(path)?;
        let started = std::time::Instant::now();
        let loaded = formats::load(&path)?;
        let dims = derive_dims(&loaded.weights)?;
        check_encoder_variables(&loaded.weights, &dims)?;
        for &(label, key, value) in &loaded.stated {
            let derived = dims.get(key).unwrap_or(value);
            if derived != value {
                return Err(ModelError::Mismatch {
                    path: loaded.stated_in.clone(),
                    reason: format!(
                        "{label} is {value} but the weights have {derived} ({key}); the files \
                         belong to different models"
                    ),
                });
            }
        }
        let config = complete_config(loaded.config, &dims, &loaded.tokenizer, &path);
        log::info!(
            target: "whisperencnpu",
            "loaded {} model {} in {:.0} ms: {dims:?}",
            loaded.format,
            path.display(),
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(WhisperModel {
            dir: loaded.dir,
            format: loaded.format,
            weights: loaded.weights,
            dims,
            config,
            tokenizer: loaded.tokenizer,
            mel_filters: loaded.mel_filters,
        })
    }

    /// The directory the model was loaded from (the folder of the file, for a single file).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The format the weights came in.
    pub fn format(&self) -> Format {
        self.format
    }

    pub fn dims(&self) -> &Dims {
        &self.dims
    }

    /// All tensors, encoder and decoder, under the internal names, memory-mapped.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// What the decoder needs from the model's configuration (empty lists without one).
    pub fn config(&self) -> &WhisperConfig {
        &self.config
    }

    /// Where the tokenizer comes from.
    pub fn tokenizer_source(&self) -> &TokenizerSource {
        &self.tokenizer
    }

    /// The model's tokenizer: its `tokenizer.json`, or the vocabulary inside a ggml file.
    pub fn tokenizer(&self) -> Result<tokenizer::Tokenizer, ModelError> {
        match &self.tokenizer {
            TokenizerSource::Json(path) => tokenizer::Tokenizer::load(path, self.dims.n_vocab),
            TokenizerSource::Built(t) => Ok((**t).clone()),
            TokenizerSource::HfFiles(dir) => formats::hf_tokenizer::load(dir, self.dims.n_vocab),
        }
    }

    /// The mel filterbank stored with the weights (whisper.cpp files carry one), `n_mels x 201`.
    pub fn mel_filters(&self) -> Option<&Array2<f32>> {
        self.mel_filters.as_ref()
    }
}

/// `${WHISPERENCNPU_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/whisperencnpu/models}`: where
/// scripts/fetch-models installs the models, one directory per model name.
pub fn default_models_root() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(root) = var("WHISPERENCNPU_MODELS") {
        return PathBuf::from(root);
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("whisperencnpu").join("models")
}

/// The default model: [`default_models_root`]`/base`.
pub fn default_model_dir() -> PathBuf {
    default_models_root().join("base")
}

/// Fills what a model's files do not say (whisper.cpp files say none of it; Transformers
/// fine-tunes often lack `generation_config.json`) with OpenAI's defaults
/// ([`formats::whisper_defaults`]): the alignment heads of the released model of these shapes,
/// and the suppress lists computed from the tokenizer.
fn complete_config(
    mut config: WhisperConfig,
    dims: &Dims,
    tokenizer: &TokenizerSource,
    path: &Path,
) -> WhisperConfig {
    if config.alignment_heads.is_empty() {
        config.alignment_heads = formats::whisper_defaults::alignment_heads(dims);
        if config.alignment_heads.is_empty() {
            log::warn!(
                target: "whisperencnpu",
                "{}: the model names no alignment heads and its shapes are no released model's \
                 (or large-v1/-v2, which share theirs): word timings are off",
                path.display()
            );
        }
    }
    if config.suppress_ids.is_empty() && config.suppress_ids_begin.is_empty() {
        let tok = match tokenizer {
            TokenizerSource::Built(t) => Ok((**t).clone()),
            TokenizerSource::Json(p) => tokenizer::Tokenizer::load(p, dims.n_vocab),
            TokenizerSource::HfFiles(d) => formats::hf_tokenizer::load(d, dims.n_vocab),
        };
        // Without a tokenizer there is nothing to transcribe with anyway (embeddings mode).
        if let Ok(tok) = tok {
            let defaults = formats::whisper_defaults::config(dims, &tok);
            config.suppress_ids = defaults.suppress_ids;
            config.suppress_ids_begin = defaults.suppress_ids_begin;
        }
    }
    config
}

impl Dims {
    /// A dimension by its field name (the keys format readers use to report what a file states).
    fn get(&self, key: &str) -> Option<usize> {
        Some(match key {
            "n_mels" => self.n_mels,
            "d_model" => self.d_model,
            "n_audio_ctx" => self.n_audio_ctx,
            "n_encoder_layers" => self.n_encoder_layers,
            "n_heads" => self.n_heads,
            "n_vocab" => self.n_vocab,
            "n_text_ctx" => self.n_text_ctx,
            "n_decoder_layers" => self.n_decoder_layers,
            "n_decoder_heads" => self.n_decoder_heads,
            _ => return None,
        })
    }
}

fn malformed(w: &Weights, reason: String) -> ModelError {
    ModelError::Mismatch {
        path: w.path().to_path_buf(),
        reason,
    }
}

/// Number of consecutive `{prefix}/layer_N/` groups starting at 0.
fn count_layers(w: &Weights, prefix: &str) -> usize {
    let head = format!("{prefix}/layer_");
    let found: std::collections::BTreeSet<usize> = w
        .names()
        .filter_map(|name| {
            let rest = name.strip_prefix(&head)?;
            rest.split('/').next()?.parse::<usize>().ok()
        })
        .collect();
    (0..).take_while(|i| found.contains(i)).count()
}

/// `[rows, d_model]` with rows > 0, else a shape error.
fn rows_of(w: &Weights, name: &str, d_model: usize, what: &str) -> Result<usize, ModelError> {
    let t = w.info(name)?;
    match t.shape[..] {
        [n, d] if d == d_model && n > 0 => Ok(n),
        _ => Err(w.shape_error(name, format!("[{what}, {d_model}]"), &t.shape)),
    }
}

pub(crate) fn derive_dims(w: &Weights) -> Result<Dims, ModelError> {
    let conv1 = w.info("encoder/conv1/weight")?;
    let (d_model, n_mels) = match conv1.shape[..] {
        [d, m, 3] if d > 0 && m > 0 => (d, m),
        _ => {
            return Err(w.shape_error(
                "encoder/conv1/weight",
                "[d_model, n_mels, 3]".into(),
                &conv1.shape,
            ))
        }
    };
    let n_audio_ctx = rows_of(
        w,
        "encoder/position_encodings/encodings",
        d_model,
        "n_audio_ctx",
    )?;
    let (n_heads, n_decoder_heads) = w.heads();
    for (heads, what) in [(n_heads, "encoder"), (n_decoder_heads, "decoder")] {
        if heads == 0 || d_model % heads != 0 {
            return Err(malformed(
                w,
                format!("d_model {d_model} is not a multiple of the {what}'s {heads} heads"),
            ));
        }
    }
    let n_encoder_layers = count_layers(w, "encoder");
    if n_encoder_layers == 0 {
        return Err(ModelError::MissingVariable {
            path: w.path().to_path_buf(),
            name: "encoder/layer_0/...".into(),
        });
    }
    let n_vocab = rows_of(w, "decoder/embeddings/weight", d_model, "n_vocab")?;
    let n_text_ctx = rows_of(
        w,
        "decoder/position_encodings/encodings",
        d_model,
        "n_text_ctx",
    )?;
    let n_decoder_layers = count_layers(w, "decoder");
    Ok(Dims {
        n_mels,
        d_model,
        n_audio_ctx,
        n_encoder_layers,
        n_heads,
        n_vocab,
        n_text_ctx,
        n_decoder_layers,
        n_decoder_heads,
    })
}

/// Name and expected shape of every variable the encoder uses.
pub(crate) fn encoder_variables(d: &Dims) -> Vec<(String, Vec<usize>)> {
    let dm = d.d_model;
    let mut v = vec![
        ("encoder/conv1/weight".to_string(), vec![dm, d.n_mels, 3]),
        ("encoder/conv1/bias".to_string(), vec![dm]),
        ("encoder/conv2/weight".to_string(), vec![dm, dm, 3]),
        ("encoder/conv2/bias".to_string(), vec![dm]),
        (
            "encoder/position_encodings/encodings".to_string(),
            vec![d.n_audio_ctx, dm],
        ),
        ("encoder/layer_norm/gamma".to_string(), vec![dm]),
        ("encoder/layer_norm/beta".to_string(), vec![dm]),
    ];
    for l in 0..d.n_encoder_layers {
        let p = format!("encoder/layer_{l}");
        for (name, shape) in [
            ("self_attention/layer_norm/gamma", vec![dm]),
            ("self_attention/layer_norm/beta", vec![dm]),
            ("self_attention/linear_0/weight", vec![3 * dm, dm]),
            ("self_attention/linear_0/bias", vec![3 * dm]),
            ("self_attention/linear_1/weight", vec![dm, dm]),
            ("self_attention/linear_1/bias", vec![dm]),
            ("ffn/layer_norm/gamma", vec![dm]),
            ("ffn/layer_norm/beta", vec![dm]),
        ] {
            v.push((format!("{p}/{name}"), shape));
        }
        // Whisper's feed-forward block is 4 x d_model wide in every size.
        let d_ffn = 4 * dm;
        v.push((format!("{p}/ffn/linear_0/weight"), vec![d_ffn, dm]));
        v.push((format!("{p}/ffn/linear_0/bias"), vec![d_ffn]));
        v.push((format!("{p}/ffn/linear_1/weight"), vec![dm, d_ffn]));
        v.push((format!("{p}/ffn/linear_1/bias"), vec![dm]));
    }
    v
}

fn check_encoder_variables(w: &Weights, d: &Dims) -> Result<(), ModelError> {
    for (name, shape) in encoder_variables(d) {
        let info = w.info_shaped(&name, &shape)?;
        if !info.is_float() {
            return Err(ModelError::UnsupportedDtype {
                path: w.path().to_path_buf(),
                name,
                dtype: info.stored_type().name().to_string(),
                reason: "the encoder needs float weights (float32, float16, bfloat16), \
                         ggml-quantized ones, or int8 rows with their weight_scale"
                    .to_string(),
            });
        }
    }
    Ok(())
}

/// Prepares the linear layer `name` (`name/weight` n_out x n_in, `name/bias` if the model has one)
/// on `engine`: the encoder and the decoder load theirs the same way.
pub(crate) fn prepare_linear(
    weights: &Weights,
    engine: &dyn crate::npu::Engine,
    name: &str,
    n_out: usize,
    n_in: usize,
) -> Result<Box<dyn crate::npu::Linear>, ModelError> {
    let (weight, bias) = linear_weights(weights, name, n_out, n_in)?;
    Ok(engine.prepare(weight.view(), bias.as_ref().map(|b| b.view())))
}

/// The weight (`n_out x n_in`) and bias, if the model has one, of the linear layer `name`.
pub(crate) fn linear_weights(
    weights: &Weights,
    name: &str,
    n_out: usize,
    n_in: usize,
) -> Result<(ndarray::Array2<f32>, Option<ndarray::Array1<f32>>), ModelError> {
    let weight = weights.f32_2d(&format!("{name}/weight"), n_out, n_in)?;
    let bias_name = format!("{name}/bias");
    let bias = if weights.contains(&bias_name) {
        Some(weights.f32_1d(&bias_name, n_out)?)
    } else {
        None
    };
    Ok((weight, bias))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_ends_with_base() {
        assert!(default_model_dir().ends_with("base"));
    }
}
