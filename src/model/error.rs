//! Errors of the model loader and of the encoder.
use std::path::PathBuf;

/// Everything that can go wrong while loading a Whisper model or running its encoder.
///
/// Every variant that is about a file names that file, so that the message alone tells the user
/// what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model directory or file does not exist.
    #[error(
        "Whisper model {} does not exist (install the models with scripts/fetch-models, \
         or point WHISPERENCNPU_MODELS at them)",
        path.display()
    )]
    DirNotFound { path: PathBuf },

    /// A file the model needs is missing.
    #[error("model file {} does not exist", path.display())]
    FileNotFound { path: PathBuf },

    /// Any other I/O failure (permissions, mmap, ...).
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file ends in the middle of something.
    #[error(
        "{}: truncated CTranslate2 model: reading {what} at byte offset {offset} needs {needed} \
         byte(s) but the file is only {file_len} bytes long",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },

    /// The file does not start like a CTranslate2 model.
    #[error("{}: not a CTranslate2 model file: {reason}", path.display())]
    NotCt2 { path: PathBuf, reason: String },

    /// A CTranslate2 model of a binary format version this reader does not know.
    #[error(
        "{}: unsupported CTranslate2 binary version {version} (this reader supports 1 to {max})",
        path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        max: u32,
    },

    /// A CTranslate2 model, but not of a Whisper model.
    #[error("{}: not a Whisper model (CTranslate2 spec is {spec:?}, expected \"WhisperSpec\")", path.display())]
    NotWhisper { path: PathBuf, spec: String },

    /// A weights file is structurally wrong (inconsistent sizes, bad names, impossible
    /// hyper-parameters...), whatever its format.
    #[error("{}: corrupt model file: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },

    /// The tokenizer's file (`tokenizer.json`, or a slow tokenizer's `vocab.json`) parses but is
    /// not a Whisper tokenizer these weights can use.
    #[error("{}: unusable tokenizer: {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },

    /// A variable the model needs is not in the file.
    #[error("{}: variable {name:?} is missing from the model", path.display())]
    MissingVariable { path: PathBuf, name: String },

    /// A variable has a shape other than the one the model needs.
    #[error("{}: variable {name:?} has shape {found:?}, expected {expected}", path.display())]
    UnexpectedShape {
        path: PathBuf,
        name: String,
        expected: String,
        found: Vec<usize>,
    },

    /// A variable is stored in a data type this reader cannot use where it is used.
    #[error("{}: variable {name:?} has data type {dtype}, {reason}", path.display())]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
        reason: String,
    },

    /// config.json exists but cannot be parsed.
    #[error("{}: invalid JSON: {source}", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A Hugging Face safetensors or whisper.cpp ggml file that is cut short, corrupt, or not what
    /// its name says.
    #[error("{}: invalid {format} file: {reason}", path.display())]
    Format {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },

    /// A file or directory that holds no model in a format this reader knows.
    #[error(
        "{}: not a Whisper model this element reads ({reason}); it reads CTranslate2 \
         (model.bin), Hugging Face Transformers (model.safetensors + config.json) and whisper.cpp \
         ggml (.bin) models",
        path.display()
    )]
    UnknownFormat { path: PathBuf, reason: String },

    /// The files of a model disagree with each other (config.json with the weights, say).
    #[error("{}: {reason}", path.display())]
    Mismatch { path: PathBuf, reason: String },

    /// A model given by name was found nowhere.
    #[error(
        "no Whisper model {name:?} found; looked at: {}. Install it with scripts/fetch-models \
         (CTranslate2), `huggingface-cli download` (Hugging Face) or whisper.cpp's \
         models/download-ggml-model.sh, or give the model's path",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound {
        name: String,
        searched: Vec<PathBuf>,
    },

    /// The encoder's worker threads could not be started.
    #[error("cannot start the encoder's thread pool: {0}")]
    ThreadPool(String),

    /// The input given to the encoder has the wrong shape.
    #[error("invalid encoder input: {0}")]
    InvalidInput(String),
}

impl ModelError {
    /// An I/O error on `path`: a missing file says so, anything else is passed on.
    pub(crate) fn io(path: &std::path::Path, e: std::io::Error) -> ModelError {
        if e.kind() == std::io::ErrorKind::NotFound {
            ModelError::FileNotFound {
                path: path.to_path_buf(),
            }
        } else {
            ModelError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    }
}
