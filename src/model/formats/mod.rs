//! The model file formats, told apart by their content, each mapped onto the internal model
//! ([`Weights`](super::Weights)).
//!
//! | format | files | told by |
//! | --- | --- | --- |
//! | CTranslate2 | `model.bin`, `config.json`, `tokenizer.json` | a u32 binary version 1..=6 then a spec name |
//! | Hugging Face Transformers | `model.safetensors` or `model-*-of-*.safetensors` + `model.safetensors.index.json`, `config.json`, `tokenizer.json`, `generation_config.json` | a u64 header length then a JSON header |
//! | whisper.cpp ggml | one `.bin` (hyper-parameters, mel filters, vocabulary, tensors) | the ggml magic |
use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::Array2;

use super::tokenizer::Tokenizer;
use super::weights::Weights;
use super::{ModelError, WhisperConfig};

pub mod ct2;
pub mod ggml;
pub mod ggml_quant;
pub mod ggml_vocab;
pub mod hf_tokenizer;
pub mod layout;
pub mod safetensors;
pub mod whisper_defaults;

/// A model file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Ct2,
    HfSafetensors,
    Ggml,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Ct2 => "CTranslate2",
            Format::HfSafetensors => "Hugging Face safetensors",
            Format::Ggml => "whisper.cpp ggml",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the tokenizer comes from.
#[derive(Clone, Debug)]
pub enum TokenizerSource {
    /// A Hugging Face `tokenizer.json` (CTranslate2 and Transformers models).
    Json(PathBuf),
    /// Built from the vocabulary inside the weights file (ggml).
    Built(Box<Tokenizer>),
    /// A slow Transformers tokenizer's `vocab.json`, `merges.txt`, `added_tokens.json` in this
    /// folder (no `tokenizer.json`).
    HfFiles(PathBuf),
}

/// What a format reader gives the model.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub dir: PathBuf,
    pub format: Format,
    pub weights: Weights,
    pub config: WhisperConfig,
    pub tokenizer: TokenizerSource,
    /// The mel filterbank the file carries (ggml), `n_mels x n_fft_bins`.
    pub mel_filters: Option<Array2<f32>>,
    /// Hyper-parameters the files state besides the shapes: `(as the file names it, the
    /// [`Dims`](super::Dims) field, value)`, checked against the shapes, and the file stating them.
    pub stated: Vec<(&'static str, &'static str, usize)>,
    pub stated_in: PathBuf,
}

/// First bytes of a whisper.cpp ggml file: `GGML_FILE_MAGIC` 0x67676d6c ("ggml") as a little-endian
/// u32 (ggml.h / whisper.cpp).
pub const GGML_MAGIC: u32 = 0x6767_6d6c;
/// First bytes of a GGUF file (the successor container, which whisper.cpp does not use).
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// What the first bytes of a file say it is.
fn sniff(path: &Path) -> Result<Option<Format>, ModelError> {
    let mut head = [0u8; 16];
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(ModelError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        }
    }
    let head = &head[..n];
    if head.len() >= 4 {
        let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if magic == GGML_MAGIC {
            return Ok(Some(Format::Ggml));
        }
        if &head[..4] == GGUF_MAGIC {
            return Err(ModelError::UnknownFormat {
                path: path.to_path_buf(),
                reason: "a GGUF file; whisper.cpp's models are the legacy ggml container \
                         (ggml-*.bin)"
                    .into(),
            });
        }
        if (1..=super::ct2::MAX_BINARY_VERSION).contains(&magic) {
            return Ok(Some(Format::Ct2));
        }
    }
    // safetensors: u64 header length, then a JSON object.
    if head.len() >= 9 && head[8] == b'{' {
        return Ok(Some(Format::HfSafetensors));
    }
    Ok(None)
}

/// The index of a sharded safetensors model.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
/// The single-file safetensors model.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// Transformers' older checkpoint file (a Python pickle).
const PYTORCH_FILE: &str = "pytorch_model.bin";

/// Loads the model at `path`: a model directory, or one of its files.
pub(crate) fn load(path: &Path) -> Result<Loaded, ModelError> {
    if path.is_dir() {
        let bin = path.join("model.bin");
        if bin.is_file() {
            // model.bin is CTranslate2's name; a ggml file renamed so loads too.
            return match sniff(&bin)? {
                Some(Format::Ggml) => ggml::load(&bin),
                _ => ct2::load(path, &bin),
            };
        }
        if path.join(SAFETENSORS_FILE).is_file() || path.join(SAFETENSORS_INDEX).is_file() {
            return safetensors::load_dir(path);
        }
        if let Some(file) = lone_ggml_file(path) {
            return ggml::load(&file);
        }
        // Nothing recognisable: name the file a CTranslate2 directory lacks, unless config.json
        // says it is a Transformers model.
        if path.join(PYTORCH_FILE).is_file() {
            return Err(ModelError::UnknownFormat {
                path: path.join(PYTORCH_FILE),
                reason: "a PyTorch pickle, not read since loading one can run code: use the \
                         repository's model.safetensors, or save the model with \
                         safe_serialization=True"
                    .into(),
            });
        }
        if is_hf_config(&path.join("config.json")) {
            return Err(ModelError::FileNotFound {
                path: path.join(SAFETENSORS_FILE),
            });
        }
        return Err(ModelError::FileNotFound { path: bin });
    }
    if !path.exists() {
        return Err(ModelError::DirNotFound {
            path: path.to_path_buf(),
        });
    }
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    if path.file_name().and_then(|n| n.to_str()) == Some(SAFETENSORS_INDEX) {
        return safetensors::load_dir(&dir);
    }
    match sniff(path)? {
        Some(Format::Ggml) => ggml::load(path),
        Some(Format::Ct2) => ct2::load(&dir, path),
        Some(Format::HfSafetensors) => safetensors::load_file(path),
        None => Err(ModelError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "its first bytes match none of them".into(),
        }),
    }
}

/// The one `ggml-*.bin` file of a directory holding no other model.
fn lone_ggml_file(dir: &Path) -> Option<PathBuf> {
    let mut found = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension().is_some_and(|e| e == "bin")
                && matches!(sniff(p), Ok(Some(Format::Ggml)))
        });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Whether `path` is a Transformers config of a Whisper model.
fn is_hf_config(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("model_type")?.as_str().map(|s| s == "whisper"))
        .unwrap_or(false)
}

/// Reads and parses a JSON file; `Ok(None)` if it does not exist.
pub(crate) fn read_json(path: &Path) -> Result<Option<serde_json::Value>, ModelError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ModelError::Config {
                path: path.to_path_buf(),
                source: e,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}
