//! The Whisper model: weights in CTranslate2 format and the encoder.
//!
//! [`WhisperModel::load`] memory-maps `model.bin`, checks that it is a complete Whisper model and
//! derives the hyper-parameters ([`Dims`]) from the weights' shapes, so any Whisper size loads.
//! Weights stay in the map until a consumer (the [`Encoder`], later a decoder) converts the ones it
//! needs.
pub mod ct2;
pub mod decoder;
pub mod encoder;
mod error;
mod ops;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use ct2::{Ct2File, DType, VarInfo};
pub use encoder::Encoder;
pub use error::ModelError;

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
    pub lang_ids: Vec<i64>,
    /// (layer, head) pairs of the decoder's cross-attention used for word alignment.
    pub alignment_heads: Vec<(usize, usize)>,
}

impl WhisperConfig {
    fn from_json(v: &serde_json::Value) -> WhisperConfig {
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
            lang_ids: ids("lang_ids"),
            alignment_heads,
        }
    }
}

/// A loaded Whisper model (CTranslate2 format).
#[derive(Debug)]
pub struct WhisperModel {
    dir: PathBuf,
    weights: Ct2File,
    dims: Dims,
    config_json: Option<serde_json::Value>,
    config: WhisperConfig,
}

impl WhisperModel {
    /// Loads the model in `dir` (`model.bin`, optionally `config.json`).
    ///
    /// Checks that every encoder variable is present with the shape and a float type the encoder
    /// needs, so that [`Encoder::new`] only fails on resource problems.
    pub fn load(dir: &Path) -> Result<WhisperModel, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::DirNotFound {
                path: dir.to_path_buf(),
            });
        }
        let weights = Ct2File::open(&dir.join("model.bin"))?;
        match weights.spec() {
            Some("WhisperSpec") => {}
            other => {
                return Err(ModelError::NotWhisper {
                    path: weights.path().to_path_buf(),
                    spec: other.unwrap_or("<none: binary version 1>").to_string(),
                })
            }
        }
        let dims = derive_dims(&weights)?;
        check_encoder_variables(&weights, &dims)?;

        let config_path = dir.join("config.json");
        let config_json = match std::fs::read(&config_path) {
            Ok(bytes) => Some(serde_json::from_slice::<serde_json::Value>(&bytes).map_err(
                |e| ModelError::Config {
                    path: config_path.clone(),
                    source: e,
                },
            )?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ModelError::Io {
                    path: config_path,
                    source: e,
                })
            }
        };
        let config = config_json
            .as_ref()
            .map(WhisperConfig::from_json)
            .unwrap_or_default();
        Ok(WhisperModel {
            dir: dir.to_path_buf(),
            weights,
            dims,
            config_json,
            config,
        })
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn dims(&self) -> &Dims {
        &self.dims
    }

    /// All variables, encoder and decoder, memory-mapped.
    pub fn weights(&self) -> &Ct2File {
        &self.weights
    }

    /// `config.json` as parsed JSON, if the directory has one.
    pub fn config_json(&self) -> Option<&serde_json::Value> {
        self.config_json.as_ref()
    }

    /// The parts of `config.json` the decoder needs (empty lists without a `config.json`).
    pub fn config(&self) -> &WhisperConfig {
        &self.config
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

fn malformed(w: &Ct2File, reason: String) -> ModelError {
    ModelError::Malformed {
        path: w.path().to_path_buf(),
        reason,
    }
}

/// Number of consecutive `{prefix}/layer_N/` groups starting at 0.
fn count_layers(w: &Ct2File, prefix: &str) -> usize {
    let mut max: Option<usize> = None;
    let head = format!("{prefix}/layer_");
    for v in w.variables() {
        if let Some(rest) = v.name.strip_prefix(&head) {
            if let Some(n) = rest.split('/').next().and_then(|n| n.parse::<usize>().ok()) {
                max = Some(max.map_or(n, |m| m.max(n)));
            }
        }
    }
    max.map_or(0, |m| m + 1)
}

fn positive_heads(w: &Ct2File, name: &str) -> Result<usize, ModelError> {
    let n = w.scalar_int(name)?;
    if n <= 0 || n > 4096 {
        return Err(malformed(w, format!("{name} is {n}")));
    }
    Ok(n as usize)
}

fn derive_dims(w: &Ct2File) -> Result<Dims, ModelError> {
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
    let pos = w.info("encoder/position_encodings/encodings")?;
    let n_audio_ctx = match pos.shape[..] {
        [n, d] if d == d_model && n > 0 => n,
        _ => {
            return Err(w.shape_error(
                "encoder/position_encodings/encodings",
                format!("[n_audio_ctx, {d_model}]"),
                &pos.shape,
            ))
        }
    };
    let n_heads = positive_heads(w, "encoder/num_heads")?;
    if d_model % n_heads != 0 {
        return Err(malformed(
            w,
            format!("d_model {d_model} is not a multiple of encoder/num_heads {n_heads}"),
        ));
    }
    let n_encoder_layers = count_layers(w, "encoder");
    if n_encoder_layers == 0 {
        return Err(ModelError::MissingVariable {
            path: w.path().to_path_buf(),
            name: "encoder/layer_0/...".into(),
        });
    }

    let emb = w.info("decoder/embeddings/weight")?;
    let n_vocab = match emb.shape[..] {
        [n, d] if d == d_model && n > 0 => n,
        _ => {
            return Err(w.shape_error(
                "decoder/embeddings/weight",
                format!("[n_vocab, {d_model}]"),
                &emb.shape,
            ))
        }
    };
    let dpos = w.info("decoder/position_encodings/encodings")?;
    let n_text_ctx = match dpos.shape[..] {
        [n, d] if d == d_model && n > 0 => n,
        _ => {
            return Err(w.shape_error(
                "decoder/position_encodings/encodings",
                format!("[n_text_ctx, {d_model}]"),
                &dpos.shape,
            ))
        }
    };
    let n_decoder_heads = positive_heads(w, "decoder/num_heads")?;
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

fn check_encoder_variables(w: &Ct2File, d: &Dims) -> Result<(), ModelError> {
    for (name, shape) in encoder_variables(d) {
        let info = w.info_shaped(&name, &shape)?;
        if !info.dtype.is_float() {
            return Err(ModelError::UnsupportedDtype {
                path: w.path().to_path_buf(),
                name,
                dtype: info.dtype.name().to_string(),
                reason: "the float32 encoder needs float32, float16 or bfloat16 weights \
                         (int8-quantized models are not supported)"
                    .to_string(),
            });
        }
    }
    Ok(())
}

/// Prepares the linear layer `name` (`name/weight` n_out x n_in, `name/bias` if the model has one)
/// on `engine`: the encoder and the decoder load theirs the same way.
pub(crate) fn prepare_linear(
    weights: &ct2::Ct2File,
    engine: &dyn crate::npu::Engine,
    name: &str,
    n_out: usize,
    n_in: usize,
) -> Result<Box<dyn crate::npu::Linear>, ModelError> {
    let weight = weights.f32_2d(&format!("{name}/weight"), n_out, n_in)?;
    let bias_name = format!("{name}/bias");
    let bias = if weights.contains(&bias_name) {
        Some(weights.f32_1d(&bias_name, n_out)?)
    } else {
        None
    };
    Ok(engine.prepare(weight.view(), bias.as_ref().map(|b| b.view())))
}

/// A rayon pool of `threads` threads (0: one per core) named `name-N`.
pub(crate) fn thread_pool(
    threads: usize,
    name: &'static str,
) -> Result<rayon::ThreadPool, ModelError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{name}-{i}"))
        .build()
        .map_err(|e| ModelError::ThreadPool(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_ends_with_base() {
        assert!(default_model_dir().ends_with("base"));
    }
}
