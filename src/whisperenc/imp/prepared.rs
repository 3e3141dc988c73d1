//! The model the src task runs chunks through, and the one kept from the last run with the
//! settings it was prepared from (see `WhisperEncNpu::load`: preparing takes about a second, and
//! bins such as transcriberbin cycle their transcriber's state).

use std::path::PathBuf;

use super::text::TextOutput;
use super::{Backend, Loaded, Mode, Precision, Settings, Task};
use crate::window::WindowEncoder;

/// What the src task runs chunks through.
pub(super) enum Processor {
    Embeddings(Box<WindowEncoder>),
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
