//! The model the src task runs chunks through, and the one kept from the last run with the
//! settings it was prepared from (see `WhisperEncNpu::load`: preparing takes about a second, and
//! bins such as transcriberbin cycle their transcriber's state).
//!
//! Elements of one process with the same model, backend, precision and threads share the
//! prepared weights and the compute pool ([`SharedModel`], issue 12); each keeps its own stream
//! state (front end, decoding state, caches) in its [`Processor`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::text::TextOutput;
use super::{Backend, Loaded, Mode, Precision, Settings, Task};
use crate::shared::{Registry, SharedEncoder};
use crate::transcribe::TextModel;

/// Every model prepared in this process and still used by an element.
pub(super) static SHARED_MODELS: Registry<SharedKey, SharedModel> = Registry::new();

/// What a model shared between elements depends on: the files and how its products run. Not the
/// mode: an embeddings element and a transcription element share the encoder (the decoder is
/// prepared when the first transcription element needs it).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct SharedKey {
    model: PathBuf,
    file: String,
    backend: Backend,
    precision: Precision,
    threads: u32,
}

/// A model prepared once for the process.
pub(super) struct SharedModel {
    pub encoder: Arc<SharedEncoder>,
    /// What a window costs alone: the second of two warm-up windows.
    pub processing: gst::ClockTime,
    /// The decoder and tokenizer, once a transcription element asked for them.
    text: Mutex<Option<Arc<TextModel>>>,
}

impl SharedModel {
    pub(super) fn new(encoder: Arc<SharedEncoder>, processing: gst::ClockTime) -> SharedModel {
        SharedModel {
            encoder,
            processing,
            text: Mutex::default(),
        }
    }

    /// The text model, prepared by `make` if no element has yet; says whether it was.
    pub(super) fn text_model<E>(
        &self,
        make: impl FnOnce() -> Result<TextModel, E>,
    ) -> Result<(Arc<TextModel>, bool), E> {
        let mut text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = &*text {
            return Ok((t.clone(), false));
        }
        let t = Arc::new(make()?);
        *text = Some(t.clone());
        Ok((t, true))
    }
}

/// What the src task runs chunks through.
pub(super) enum Processor {
    Embeddings(Box<super::EmbeddingsOutput>),
    Transcription(Box<TextOutput>),
}

/// What a prepared model depends on: the settings read at load (not `latency` or `latency-mode`,
/// read per stream) and the model files' sizes and times, so that a model replaced on disk is
/// loaded again.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct ModelKey {
    model: PathBuf,
    mode: Mode,
    backend: Backend,
    precision: Precision,
    /// As used: capped at the cores.
    threads: u32,
    language: Option<String>,
    task: Task,
    beam_size: u32,
    previous_text_prompt: bool,
    /// The model files' sizes and times ([`crate::model::locate::fingerprint`]).
    file: String,
}

impl ModelKey {
    /// What of it the model shared with other elements depends on.
    pub(super) fn shared(&self) -> SharedKey {
        SharedKey {
            model: self.model.clone(),
            file: self.file.clone(),
            backend: self.backend,
            precision: self.precision,
            threads: self.threads,
        }
    }

    pub(super) fn new(settings: &Settings) -> ModelKey {
        let file = crate::model::locate::fingerprint(&settings.model);
        ModelKey {
            model: settings.model.clone(),
            mode: settings.mode,
            backend: settings.backend,
            precision: settings.precision,
            threads: settings.threads,
            language: settings.language.clone(),
            task: settings.task,
            beam_size: settings.beam_size,
            previous_text_prompt: settings.previous_text_prompt,
            file,
        }
    }
}

/// A model ready to run, and what it was prepared from.
pub(super) struct Prepared {
    pub key: ModelKey,
    /// Held so that the shared model lives as long as this element may run it again.
    pub shared: Arc<SharedModel>,
    pub processor: Processor,
    pub loaded: Loaded,
}

/// The running model and the one kept from the last run: one lock, which the src task holds for
/// each chunk and state changes take while the task is stopped.
#[derive(Default)]
pub(super) struct Models {
    pub running: Option<Prepared>,
    pub kept: Option<Prepared>,
}

impl Models {
    pub(super) fn processor(&mut self) -> Option<&mut Processor> {
        self.running.as_mut().map(|p| &mut p.processor)
    }

    /// The model kept from the last run if it was prepared from `key` (the other one is freed).
    pub(super) fn take_kept(&mut self, key: &ModelKey) -> Option<Prepared> {
        self.kept.take().filter(|p| p.key == *key)
    }

    /// At the end of a run: the running model is kept, reset, for the next one.
    pub(super) fn keep_running(&mut self) {
        if let Some(mut prepared) = self.running.take() {
            if let Processor::Transcription(text) = &mut prepared.processor {
                text.reset();
            }
            self.kept = Some(prepared);
        }
    }
}
