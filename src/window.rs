//! One 10.24 s window of audio through the front end and the encoder, with the time each took.
//! Free of GStreamer: the element drives it, and tests and benches can too.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView2};

use crate::mel::{LogMel, WINDOW_SAMPLES};
use crate::model::encoder::Encoder;
use crate::model::{ModelError, WhisperModel};
use crate::npu::{self, BackendChoice, BackendKind, DeviceCounters, Precision};
use crate::shared::SharedEncoder;

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
    /// The encoder pass the window went in (with other streams' windows when batched).
    pub encoder: Duration,
    /// Waiting for another stream's batch to finish first (a shared encoder only).
    pub waited: Duration,
    /// Windows encoded together with this one, itself included.
    pub batch: usize,
}

/// Turns windows of 16 kHz mono audio into encoder embeddings (positions x d_model): the front end
/// per stream, the encoder shared by every stream with the same model ([`SharedEncoder`]).
pub struct WindowEncoder {
    mel: LogMel,
    encoder: Arc<SharedEncoder>,
    /// Launches and reconfigurations of the last window's batch (accelerators only).
    npu_window: Option<DeviceCounters>,
    /// Reused every window: the zero-padded audio, its log-mel and the encoder's output.
    padded: Vec<f32>,
    mel_frames: Array2<f32>,
    embeddings: Array2<f32>,
    /// The stream is live (set by its element when upstream says so): its windows go before
    /// other streams' in the shared encoder.
    live: Arc<AtomicBool>,
}

impl WindowEncoder {
    pub fn load(model_dir: &Path, options: &EncoderOptions) -> Result<Self, SetupError> {
        let model = WhisperModel::load(model_dir)?;
        Self::new(&model, options)
    }

    /// A window encoder with an encoder of its own (on the process pool of `options.threads`).
    pub fn new(model: &WhisperModel, options: &EncoderOptions) -> Result<Self, SetupError> {
        Ok(Self::with_shared(Arc::new(Self::prepare(model, options)?)))
    }

    /// Prepares an encoder that window encoders of several streams may share
    /// ([`with_shared`](Self::with_shared)).
    pub fn prepare(
        model: &WhisperModel,
        options: &EncoderOptions,
    ) -> Result<SharedEncoder, SetupError> {
        let engine = npu::open_engine(options.backend, options.precision)?;
        // A weight the encoder lacks is a model error as much as a thread pool that does not start
        // (`ModelError::ThreadPool`): each says which.
        let encoder = Encoder::new(model, engine, options.threads)?;
        Ok(SharedEncoder::new(encoder))
    }

    /// A stream's window encoder on a shared encoder.
    pub fn with_shared(encoder: Arc<SharedEncoder>) -> Self {
        let n_mels = encoder.n_mels();
        Self {
            mel: LogMel::new(n_mels),
            encoder,
            npu_window: None,
            padded: vec![0.0; WINDOW_SAMPLES],
            mel_frames: Array2::zeros((n_mels, crate::mel::WINDOW_FRAMES)),
            // Shaped by the first window.
            embeddings: Array2::zeros((0, 0)),
            live: Arc::default(),
        }
    }

    /// This stream's windows go first in the shared encoder while `live` is set.
    pub fn with_live_flag(self, live: Arc<AtomicBool>) -> Self {
        Self { live, ..self }
    }

    /// The encoder, shared or not.
    pub fn shared(&self) -> &Arc<SharedEncoder> {
        &self.encoder
    }

    pub fn backend(&self) -> BackendKind {
        self.encoder.backend()
    }

    pub fn precision(&self) -> Precision {
        self.encoder.precision()
    }

    /// The accelerator's launches and reconfigurations during the last [`encode`](Self::encode)'s
    /// batch; `None` on the CPU.
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
    /// stream), a longer one is cut to it. The embeddings (`positions x d_model`) are this encoder's buffer, overwritten by the next
    /// window.
    pub fn encode(&mut self, samples: &[f32]) -> (ArrayView2<'_, f32>, WindowTiming) {
        self.encode_filled(|window| {
            let n = samples.len().min(window.len());
            window[..n].copy_from_slice(&samples[..n]);
            n
        })
    }

    /// [`encode`](Self::encode) with the audio written by `fill` straight into the window
    /// (`WINDOW_SAMPLES` long), which returns how many samples it wrote: a caller holding the
    /// audio in another format needs no buffer of its own.
    pub fn encode_filled(
        &mut self,
        fill: impl FnOnce(&mut [f32]) -> usize,
    ) -> (ArrayView2<'_, f32>, WindowTiming) {
        let n = fill(&mut self.padded).min(WINDOW_SAMPLES);
        self.padded[n..].fill(0.0);

        let start = Instant::now();
        self.mel
            .compute_into(&self.padded, self.mel_frames.view_mut());
        let mel = start.elapsed();
        let batch = self
            .encoder
            .encode(
                &mut self.mel_frames,
                &mut self.embeddings,
                self.live.load(Ordering::Relaxed),
            )
            .expect("a window's log-mel has the model's bands and the window's frames");
        self.npu_window = batch.device;
        let timing = WindowTiming {
            mel,
            encoder: batch.encoder,
            waited: batch.waited,
            batch: batch.batch,
        };
        (self.embeddings.view(), timing)
    }
}
