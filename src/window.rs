//! One 10.24 s window of audio through the front end and the encoder, with the time each took.
//! Free of GStreamer: the element drives it, and tests and benches can too.

use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::Array2;

use crate::mel::{LogMel, WINDOW_SAMPLES};
use crate::model::encoder::Encoder;
use crate::model::{ModelError, WhisperModel};
use crate::npu::{self, BackendChoice, BackendKind, DeviceCounters, Precision};

#[derive(Clone, Copy, Debug)]
pub struct EncoderOptions {
    pub backend: BackendChoice,
    pub precision: Precision,
    /// Worker threads for the encoder; 0 means one per core.
    pub threads: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Engine(#[from] npu::EngineError),
}

/// Time spent on one window.
#[derive(Clone, Copy, Debug, Default)]
pub struct WindowTiming {
    pub mel: Duration,
    pub encoder: Duration,
}

/// Turns windows of 16 kHz mono audio into encoder embeddings (positions x d_model).
pub struct WindowEncoder {
    mel: LogMel,
    encoder: Encoder,
    backend: BackendKind,
    precision: Precision,
    /// The engine, for its accelerator's counters (the encoder holds it too).
    engine: std::sync::Arc<dyn npu::Engine>,
    /// Launches and reconfigurations of the last window (accelerators only).
    npu_window: Option<DeviceCounters>,
    /// Reused every window: the zero-padded audio and its log-mel.
    padded: Vec<f32>,
    mel_frames: Array2<f32>,
}

impl WindowEncoder {
    pub fn load(model_dir: &Path, options: &EncoderOptions) -> Result<Self, SetupError> {
        let model = WhisperModel::load(model_dir)?;
        Self::new(&model, options)
    }

    pub fn new(model: &WhisperModel, options: &EncoderOptions) -> Result<Self, SetupError> {
        let engine = npu::open_engine(options.backend, options.precision)?;
        let (backend, precision) = (engine.backend(), engine.precision());
        // A weight the encoder lacks is a model error as much as a thread pool that does not start
        // (`ModelError::ThreadPool`): each says which.
        let encoder = Encoder::new(model, engine.clone(), options.threads)?;
        Ok(Self {
            mel: LogMel::new(model.dims().n_mels),
            encoder,
            backend,
            precision,
            engine,
            npu_window: None,
            padded: vec![0.0; WINDOW_SAMPLES],
            mel_frames: Array2::zeros((model.dims().n_mels, crate::mel::WINDOW_FRAMES)),
        })
    }

    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The accelerator's launches and reconfigurations during the last [`encode`](Self::encode);
    /// `None` on the CPU.
    pub fn npu_window(&self) -> Option<DeviceCounters> {
        self.npu_window
    }

    pub fn d_model(&self) -> usize {
        self.encoder.d_model()
    }

    /// Encoder positions per window (512 for 10.24 s).
    pub fn positions(&self) -> usize {
        Encoder::positions_for(WINDOW_SAMPLES / crate::mel::HOP_LENGTH)
    }

    /// Encodes one window; a shorter input is zero-padded to the window length (the end of a
    /// stream), a longer one is cut to it.
    pub fn encode(&mut self, samples: &[f32]) -> (Array2<f32>, WindowTiming) {
        let n = samples.len().min(WINDOW_SAMPLES);
        self.padded[..n].copy_from_slice(&samples[..n]);
        self.padded[n..].fill(0.0);

        let before = self.engine.device_counters();
        let start = Instant::now();
        self.mel
            .compute_into(&self.padded, self.mel_frames.view_mut());
        let mel_done = Instant::now();
        let embeddings = self.encoder.forward(self.mel_frames.view());
        let timing = WindowTiming {
            mel: mel_done - start,
            encoder: mel_done.elapsed(),
        };
        self.npu_window = before
            .zip(self.engine.device_counters())
            .map(|(before, after)| after.since(&before));
        (embeddings, timing)
    }
}
