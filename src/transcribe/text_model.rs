//! What transcription needs beyond the encoder, prepared once and shared by every stream with the
//! same model (issue 12): the tokenizer, the decoder's prepared weights and the model's generation
//! config. A stream's own decoding state (caches, prompt, seek position) stays in its
//! [`Transcriber`](super::Transcriber).
use std::sync::Arc;

use super::TranscribeError;
use crate::model::decoder::Decoder;
use crate::model::tokenizer::Tokenizer;
use crate::model::{Dims, WhisperConfig, WhisperModel};
use crate::npu;

#[derive(Debug)]
pub struct TextModel {
    pub(super) tokenizer: Arc<Tokenizer>,
    pub(super) decoder: Arc<Decoder>,
    pub(super) config: WhisperConfig,
    pub(super) dims: Dims,
    /// The model's directory or file, for messages.
    pub(super) name: String,
}

impl TextModel {
    /// Loads the tokenizer of `model` and prepares its decoder on a CPU engine of `precision`, on
    /// the process pool of `threads` threads (0: one per core).
    pub fn new(
        model: &WhisperModel,
        precision: npu::Precision,
        threads: usize,
    ) -> Result<TextModel, TranscribeError> {
        let tokenizer = model.tokenizer()?;
        let engine: Arc<dyn npu::Engine> = match precision {
            npu::Precision::F32 => Arc::new(npu::CpuF32Engine::new()),
            npu::Precision::Int8 => Arc::new(npu::cpu_int8::CpuInt8Engine::new()),
        };
        let decoder = Decoder::new(model, engine, threads)?;
        Ok(Self::with_parts(model, tokenizer, decoder))
    }

    /// From a tokenizer and a decoder made elsewhere (another engine, say).
    pub fn with_parts(model: &WhisperModel, tokenizer: Tokenizer, decoder: Decoder) -> TextModel {
        TextModel {
            tokenizer: Arc::new(tokenizer),
            decoder: Arc::new(decoder),
            config: model.config().clone(),
            dims: *model.dims(),
            name: model.dir().display().to_string(),
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }
}
