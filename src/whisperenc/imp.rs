//! The element: cuts audio into chunks on the streaming thread and runs Whisper on them on the
//! source pad's task, so that upstream (a live source above all) is never held up by inference.
//!
//! Data flow: sink chain -> adapter (float32 samples) -> chunks into a bounded queue, with the
//! serialized events between them in stream order -> src task -> push downstream. In embeddings
//! mode a chunk is a 10.24 s window (mel + encoder -> one tensor buffer); in transcription mode a
//! chunk is 0.1 s of audio for the transcriber, which decodes a window whenever it has a full one past
//! its seek position (so text does not wait for a fixed window grid).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::messages::TimingReport;
use super::{Backend, LatencyMode, Mode, Precision, Task};
use crate::cancel::Cancel;
use crate::mel::{SAMPLE_RATE, WINDOW_SAMPLES};
use crate::model::{ModelError, WhisperModel};
use crate::transcribe::{TextModel, TranscribeError, TranscribeOptions, Transcriber};
use crate::window::{EncoderOptions, SetupError, WindowEncoder};

mod embeddings;
mod prepared;
mod queue;
mod step_bound;
mod text;

use embeddings::EmbeddingsOutput;
use prepared::{ModelKey, Models, Prepared, Processor, SharedModel, SHARED_MODELS};
use queue::{Chunk, HandOff, Item};
use step_bound::StepBound;
use text::{TextClock, TextEngine, TextOutput};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "whisperencnpu",
        gst::DebugColorFlags::empty(),
        Some("Whisper encoder on CPU or XDNA2 NPU"),
    )
});

/// The transcriber's decoding diagnostics (`log` records, target `whisperencnpu`) into `CAT`.
static LOGGER: LazyLock<gst::log::DebugCategoryLogger> =
    LazyLock::new(|| gst::log::DebugCategoryLogger::new(*CAT));

/// Routes the `log` crate's records to the element's debug category, so that
/// `GST_DEBUG=whisperencnpu:6` shows every window's decisions. Only once per process, and not over
/// a logger the application installed itself (then the records go there).
pub(super) fn install_logger() {
    if log::set_logger(&*LOGGER).is_ok() {
        // The category decides what is shown (its threshold may be changed at any time); a
        // record below it costs one call and no formatting.
        log::set_max_level(log::LevelFilter::Trace);
    }
}

/// Warm-up windows timed at load after the first (see `prepare_shared`).
const TIMED_WARMUP_WINDOWS: usize = 3;
/// Audio handed to the transcriber at a time: 0.1 s, so that the low-latency mode steps close to
/// the live edge (whole-window decoding waits for a full window whatever the chunk).
const TRANSCRIPTION_CHUNK_SAMPLES: usize = 1_600;
/// A timestamp jump larger than this is a hole in the stream, filled with silence.
const DISCONT_TOLERANCE: gst::ClockTime = gst::ClockTime::from_mseconds(40);
/// A hole longer than this (a GAP or a timestamp jump) is not filled with silence: the audio
/// before it is finished as at the end of a stream and the windows restart after it, so a hole of
/// any length costs the same (a window of silence is 640 KiB; ten days would be 55 GB).
const MAX_FILLED_HOLE_SAMPLES: u64 = WINDOW_SAMPLES as u64;

/// A model that could not be loaded, as the user sees it.
fn model_error(path: &std::path::Path, err: &dyn std::fmt::Display) -> gst::ErrorMessage {
    gst::error_msg!(
        gst::ResourceError::OpenRead,
        (
            "Could not load the Whisper model from '{}': {err}",
            path.display()
        )
    )
}

fn window_duration() -> gst::ClockTime {
    samples_to_time(WINDOW_SAMPLES as u64)
}

fn samples_to_time(samples: u64) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(
        samples
            .mul_div_floor(*gst::ClockTime::SECOND, SAMPLE_RATE as u64)
            .unwrap(),
    )
}

fn time_to_samples(time: gst::ClockTime) -> u64 {
    time.nseconds()
        .mul_div_round(SAMPLE_RATE as u64, *gst::ClockTime::SECOND)
        .unwrap()
}

#[derive(Debug, Clone)]
struct Settings {
    model: PathBuf,
    mode: Mode,
    backend: Backend,
    precision: Precision,
    threads: u32,
    language: Option<String>,
    task: Task,
    beam_size: u32,
    previous_text_prompt: bool,
    latency_ms: u32,
    latency_mode: LatencyMode,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: crate::model::default_model_dir(),
            mode: Mode::default(),
            backend: Backend::default(),
            precision: Precision::default(),
            threads: 0,
            language: None,
            task: Task::default(),
            beam_size: 1,
            previous_text_prompt: true,
            latency_ms: 0,
            latency_mode: LatencyMode::default(),
        }
    }
}

/// Streaming state on the sink side.
#[derive(Default)]
struct Stream {
    info: Option<gst_audio::AudioInfo>,
    adapter: gst_base::UniqueAdapter,
    /// Timestamp of the first sample of the stream (since the last flush).
    base_pts: Option<gst::ClockTime>,
    /// Samples received (real or silence for gaps) since `base_pts`.
    samples_in: u64,
    /// Chunks handed to the src task since the start or the last flush (the window index), and
    /// the samples in them since `base_pts`.
    chunks_out: u64,
    samples_out: u64,
    /// Bytes of a sample not complete at the end of the last buffer: the next buffer's first
    /// bytes complete it (as an adapter would), so input is never misread by a byte.
    partial: Vec<u8>,
}

impl Stream {
    fn next_pts(&self) -> Option<gst::ClockTime> {
        self.base_pts.map(|b| b + samples_to_time(self.samples_in))
    }

    fn reset(&mut self) {
        self.adapter.clear();
        self.base_pts = None;
        self.samples_in = 0;
        self.chunks_out = 0;
        self.samples_out = 0;
        self.partial.clear();
    }

    /// Whether `buffer` continues the incomplete sample of the buffer before it, as bytes of one
    /// stream do. It does not when it is DISCONT, or when it is whole samples on its own (but not
    /// with the pending bytes) and stamped at or before the pending sample's start: the first
    /// byte of a continuation lies after that start (a lone 3-byte buffer before whole F32LE
    /// samples would otherwise shift every sample after it).
    fn continued_by(&self, buffer: &gst::BufferRef, bpf: usize) -> bool {
        if buffer.flags().contains(gst::BufferFlags::DISCONT) {
            return false;
        }
        let whole_alone = buffer.size().is_multiple_of(bpf);
        let whole_with = (self.partial.len() + buffer.size()).is_multiple_of(bpf);
        let stamped_at_start = buffer
            .pts()
            .zip(self.next_pts())
            .is_some_and(|(pts, start)| pts <= start);
        !(whole_alone && !whole_with && stamped_at_start)
    }

    /// After a hole too long to fill, samples are counted from `pts` (the adapter is drained).
    fn resume_at(&mut self, pts: gst::ClockTime) {
        self.base_pts = Some(pts);
        self.samples_in = 0;
        self.samples_out = 0;
        self.partial.clear();
    }
}

/// What the loaded model can do, kept for caps, chunking and latency.
#[derive(Clone, Copy)]
struct Loaded {
    mode: Mode,
    d_model: usize,
    positions: usize,
    /// Measured time to encode one window at load (the warm-up run).
    processing: gst::ClockTime,
}

impl Loaded {
    fn chunk_bytes(&self) -> usize {
        let samples = match self.mode {
            Mode::Embeddings => WINDOW_SAMPLES,
            Mode::Transcription => TRANSCRIPTION_CHUNK_SAMPLES,
        };
        samples * std::mem::size_of::<f32>()
    }
}

/// The element. Lock order: `models` (held by the src task for a whole chunk) before `settings`,
/// `step_bound`, `loaded` and the queue's own lock; `stream` (held by the streaming thread)
/// before `loaded`. No other lock is held while taking one, and the streaming thread never waits
/// on the queue while holding `stream`.
pub struct WhisperEncNpu {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    stream: Mutex<Stream>,
    queue: HandOff,
    /// The running model and the one kept from the last run.
    models: Mutex<Models>,
    /// What the running model can do (for caps, chunking and latency): readable while the src
    /// task holds `models` for a window.
    loaded: Mutex<Option<Loaded>>,
    /// Low latency: how long a step may take, as the latency query last answered; raised when
    /// steps take longer (see `adapt_step_bound`).
    step_bound: Mutex<StepBound>,
    /// The latency this element last answered downstream, upstream's included, while upstream is
    /// live: a text buffer must not start earlier than its arrival minus this.
    live_latency: Mutex<Option<gst::ClockTime>>,
    /// Upstream is live, as the latency query last said: this element's windows go before those
    /// of elements on files in the encoder they share.
    upstream_live: Arc<AtomicBool>,
    /// Raised while flushing or stopping: decoding in progress stops at its next token, and
    /// nothing more is posted for it.
    cancel: Cancel,
}

impl WhisperEncNpu {
    // ---- hand-off queue -------------------------------------------------------------------

    fn set_flushing(&self, flushing: bool) {
        // First: the src task may be deep in a window, holding the model's lock.
        self.cancel.set(flushing);
        // Sticky events not yet sent (stream-start, caps, tags) still describe the stream after
        // the flush: kept on the src pad, as GstQueue does.
        for item in self.queue.set_flushing(flushing) {
            if let Item::Event(event) = item {
                if event.is_sticky()
                    && !matches!(event.type_(), gst::EventType::Segment | gst::EventType::Eos)
                {
                    let _ = self.srcpad.store_sticky_event(&event);
                }
            }
        }
    }

    fn start_task(&self) -> Result<(), glib::BoolError> {
        let this = self.downgrade();
        self.srcpad.start_task(move || {
            let Some(this) = this.upgrade() else { return };
            // A panic must not unwind into GStreamer's task thread: report it and stop streaming.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| this.src_loop()));
            if run.is_err() {
                gst::element_imp_error!(
                    this,
                    gst::LibraryError::Failed,
                    ("Internal error while encoding a window")
                );
                this.queue.stop(gst::FlowError::Error);
                let _ = this.srcpad.pause_task();
            }
        })
    }

    /// One iteration of the src task: take the next item and send it on.
    fn src_loop(&self) {
        let Some(item) = self.queue.pop() else {
            let _ = self.srcpad.pause_task();
            return;
        };

        let flow = match item {
            Item::Event(event) => {
                let is_eos = event.type_() == gst::EventType::Eos;
                let drained = if is_eos {
                    self.finish_transcription()
                } else {
                    Ok(gst::FlowSuccess::Ok)
                };
                self.srcpad.push_event(event);
                drained.and(if is_eos {
                    Err(gst::FlowError::Eos)
                } else {
                    Ok(gst::FlowSuccess::Ok)
                })
            }
            Item::Chunk(chunk) => self.process(chunk),
            Item::Resume(pts) => self.resume_text(pts),
        };

        if let Err(err) = flow {
            gst::debug!(CAT, imp = self, "src task pausing: {err:?}");
            self.queue.stop(err);
            if !matches!(err, gst::FlowError::Flushing | gst::FlowError::Eos) {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("Streaming stopped, reason {err:?}")
                );
                self.srcpad.push_event(gst::event::Eos::new());
            }
            let _ = self.srcpad.pause_task();
        }
    }

    // ---- the work itself ------------------------------------------------------------------

    fn process(&self, chunk: Chunk) -> Result<gst::FlowSuccess, gst::FlowError> {
        let map = chunk.audio.map_readable().map_err(|_| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ("Can't map audio"));
            gst::FlowError::Error
        })?;
        let mut models = self.models.lock().unwrap();
        match models.processor() {
            None => Err(gst::FlowError::Flushing),
            Some(Processor::Embeddings(output)) => {
                let started = Instant::now();
                let (mut buffer, timing) = output.encode(&map)?;
                let window = output.window();
                let timing = TimingReport {
                    index: chunk.index,
                    pts: chunk.pts,
                    audio: samples_to_time((map.size() / std::mem::size_of::<f32>()) as u64),
                    mel: timing.mel,
                    encoder: timing.encoder,
                    encoder_wait: timing.waited,
                    encoder_batch: timing.batch,
                    decoder: None,
                    decoder_batch: None,
                    processing: started.elapsed(),
                    backend: window.backend(),
                    precision: window.precision(),
                    npu: window.npu_window(),
                    caption_moved: None,
                };
                drop(models);
                drop(map);
                self.post(timing.message());
                {
                    let buffer = buffer.get_mut().unwrap();
                    buffer.set_pts(chunk.pts);
                    buffer.set_duration(window_duration());
                    buffer.set_offset(chunk.index);
                    if chunk.discont {
                        buffer.set_flags(gst::BufferFlags::DISCONT);
                    }
                }
                self.srcpad.push(buffer)
            }
            Some(Processor::Transcription(text)) => {
                let samples: Vec<f32> = map
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                self.process_text(text, chunk.pts, &samples)
            }
        }
    }

    fn post(&self, s: gst::Structure) {
        // A window finished while a flush or a stop began: its buffers are flushed, and so are
        // its messages (an application would show a stale line after the seek).
        if self.cancel.is_set() {
            gst::debug!(CAT, imp = self, "flushing, not posted: {s:?}");
            return;
        }
        gst::debug!(CAT, imp = self, "{s:?}");
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    /// Loads the model (on READY->PAUSED) and warms the encoder up on one window: the first
    /// window's allocations happen here, and its time is the processing bound the latency query
    /// reports.
    ///
    /// The model prepared for the last run is used again while the settings it depends on are the
    /// same, even after NULL: preparing takes about a second (weights repacked or quantized, the
    /// warm-up window), and bins such as transcriberbin cycle their transcriber's state (PAUSED
    /// for a latency query, NULL, PAUSED again once data comes), so a live source would lose
    /// that much audio each time. It is released with the element or when the settings change.
    fn load(&self) -> Result<(), gst::ErrorMessage> {
        let mut settings = self.settings.lock().unwrap().clone();
        settings.threads = self.bounded_threads(settings.threads);
        let key = ModelKey::new(&settings);
        let kept = self.models.lock().unwrap().take_kept(&key);
        if let Some(prepared) = kept {
            gst::info!(
                CAT,
                imp = self,
                "using the model prepared before ({} elements of this process use it)",
                Arc::strong_count(&prepared.shared)
            );
            *self.loaded.lock().unwrap() = Some(prepared.loaded);
            self.models.lock().unwrap().running = Some(prepared);
            return Ok(());
        }
        // A new model: its own processing bound, measured below.
        self.step_bound.lock().unwrap().reset();
        let (shared, prepared_now) = SHARED_MODELS
            .get_or_try_insert_with(&key.shared(), || self.prepare_shared(&settings))?;
        if !prepared_now {
            gst::info!(
                CAT,
                imp = self,
                "sharing the {} {} model another element of this process prepared ({} elements use it)",
                shared.encoder.backend().nick(),
                shared.encoder.precision().nick(),
                Arc::strong_count(&shared),
            );
        }
        let encoder = WindowEncoder::with_shared(shared.encoder.clone())
            .with_live_flag(self.upstream_live.clone());
        let loaded = Loaded {
            mode: settings.mode,
            d_model: encoder.d_model(),
            positions: encoder.positions(),
            processing: shared.processing,
        };

        let processor = match settings.mode {
            Mode::Embeddings => {
                Processor::Embeddings(Box::new(EmbeddingsOutput::new(encoder).map_err(|e| {
                    gst::error_msg!(
                        gst::ResourceError::Failed,
                        ["Can't start the embeddings buffer pool: {e}"]
                    )
                })?))
            }
            Mode::Transcription => {
                let (text_model, text_now) = shared.text_model(|| {
                    let model = self.load_model(&settings.model)?;
                    TextModel::new(&model, settings.precision.into(), settings.threads as usize)
                        .map_err(|err| self.transcribe_error(&settings.model, err))
                })?;
                if !text_now {
                    gst::info!(CAT, imp = self, "sharing the decoder and tokenizer");
                }
                let transcribe_options = TranscribeOptions {
                    language: settings.language.clone(),
                    task: settings.task.into(),
                    beam_size: settings.beam_size as usize,
                    use_prompt: settings.previous_text_prompt,
                    decoder_threads: settings.threads as usize,
                    // A user asking for int8 asks for speed: per window the int8 decoder takes
                    // about half the time (WER 0.144 vs 0.136 on `scripts/eval --precision`).
                    decoder_precision: settings.precision.into(),
                    ..Default::default()
                };
                let mut transcriber =
                    Transcriber::with_text_model(&text_model, encoder, transcribe_options)
                        .map_err(|err| self.transcribe_error(&settings.model, err))?;
                transcriber.set_cancel(self.cancel.clone());
                Processor::Transcription(Box::new(TextOutput {
                    engine: Some(TextEngine::Full(Box::new(transcriber))),
                    stream_options: Default::default(),
                    clock: TextClock::default(),
                }))
            }
        };
        *self.loaded.lock().unwrap() = Some(loaded);
        self.models.lock().unwrap().running = Some(Prepared {
            key,
            shared,
            processor,
            loaded,
        });
        Ok(())
    }

    /// Prepares the model for this process (the first element with these settings): the encoder
    /// with its warm-up windows, and the decoder too in transcription mode, so that the model
    /// files are read once.
    fn prepare_shared(&self, settings: &Settings) -> Result<SharedModel, gst::ErrorMessage> {
        let options = EncoderOptions {
            backend: settings.backend.into(),
            precision: settings.precision.into(),
            threads: settings.threads as usize,
        };
        gst::info!(
            CAT,
            imp = self,
            "preparing {} with {options:?} for this process",
            settings.model.display()
        );
        let started = Instant::now();
        let model = self.load_model(&settings.model)?;
        let encoder = WindowEncoder::prepare(&model, &options)
            .map_err(|e| self.setup_error(&settings.model, e))?;
        let encoder = Arc::new(encoder);
        let mut window = WindowEncoder::with_shared(encoder.clone());

        // Warm-up windows: the first pays for first touches of the weights and buffers (on base
        // f32 about 0.16 s against 0.13 s after); the fastest of the next ones is what a window
        // costs from then on, which the latency bounds are made of. One timed window was not
        // enough on a shared host: 0.13 to 0.19 s on base f32 within an hour, and the reported
        // latency with it.
        let _ = window.encode(&[]);
        let fastest = (0..TIMED_WARMUP_WINDOWS)
            .map(|_| {
                let (_, timing) = window.encode(&[]);
                timing.mel + timing.encoder
            })
            .min()
            .unwrap_or_default();
        let processing = gst::ClockTime::from_nseconds(fastest.as_nanos() as u64);
        let shared = SharedModel::new(encoder, processing);
        if settings.mode == Mode::Transcription {
            let text = TextModel::new(&model, settings.precision.into(), settings.threads as usize)
                .map_err(|err| self.transcribe_error(&settings.model, err))?;
            let _ = shared.text_model(|| Ok::<_, gst::ErrorMessage>(text));
        }
        gst::info!(
            CAT,
            imp = self,
            "model prepared in {:?}: d_model {}, {} per window on {} {}",
            started.elapsed(),
            window.d_model(),
            processing,
            window.backend().nick(),
            window.precision().nick()
        );
        Ok(shared)
    }

    fn load_model(&self, path: &std::path::Path) -> Result<WhisperModel, gst::ErrorMessage> {
        WhisperModel::load(path).map_err(|e| model_error(path, &e))
    }

    fn setup_error(&self, path: &std::path::Path, err: SetupError) -> gst::ErrorMessage {
        match err {
            // The machine's fault, not the model's.
            SetupError::Model(err @ ModelError::ThreadPool(_)) => {
                gst::error_msg!(gst::LibraryError::Init, ("{err}"))
            }
            SetupError::Model(err) => model_error(path, &err),
            other => gst::error_msg!(gst::LibraryError::Init, ("{other}")),
        }
    }

    fn transcribe_error(&self, path: &std::path::Path, err: TranscribeError) -> gst::ErrorMessage {
        match err {
            TranscribeError::Setup(err) => self.setup_error(path, err),
            TranscribeError::Model(err) => model_error(path, &err),
            other => gst::error_msg!(gst::LibraryError::Settings, ("{other}")),
        }
    }

    /// `threads` as used: more threads than cores only compete for them (threads=1000 on 2 cores
    /// took 248 s and 1.76 GB for what 2 threads do in 1 s), so they are capped, with a warning.
    fn bounded_threads(&self, threads: u32) -> u32 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        if threads > cores {
            gst::warning!(
                CAT,
                imp = self,
                "threads={threads} is more than the {cores} cores of this machine: using {cores} threads"
            );
            return cores;
        }
        threads
    }

    fn src_caps(&self) -> Option<gst::Caps> {
        let loaded = (*self.loaded.lock().unwrap())?;
        Some(match loaded.mode {
            Mode::Transcription => gst::Caps::builder("text/x-raw")
                .field("format", "utf8")
                .build(),
            Mode::Embeddings => gst::Caps::builder("other/tensors")
                .field("format", "static")
                .field("num_tensors", 1i32)
                .field("types", "float32")
                // NNStreamer writes dimensions innermost first.
                .field(
                    "dimensions",
                    format!("{}:{}", loaded.d_model, loaded.positions),
                )
                .field(
                    "framerate",
                    gst::Fraction::new(SAMPLE_RATE as i32, WINDOW_SAMPLES as i32),
                )
                .build(),
        })
    }

    /// Our own latency, from what is known before any data flows, for an upstream that is `live`
    /// or not. Embeddings: a window must be complete before it is encoded, and encoding it takes a
    /// measured time (twice the warm-up window, at most a window: beyond that the element could
    /// not keep up with a live source). Transcription in whole windows: a window plus a chunk must
    /// be buffered past the seek position, which is never after the text's start; decoding time is
    /// only bounded by a window (the realtime limit) unless the `latency` property says how long
    /// processing may take. Low latency: what the commit policy promises between a word's start
    /// and its commit, plus a step's processing.
    fn own_latency(&self, live: bool) -> gst::ClockTime {
        let settings = self.settings.lock().unwrap().clone();
        let loaded = *self.loaded.lock().unwrap();
        let configured = (settings.latency_ms > 0)
            .then(|| gst::ClockTime::from_mseconds(settings.latency_ms as u64));
        match settings.mode {
            Mode::Embeddings => {
                let measured = loaded.map(|l| (l.processing * 2).min(window_duration()));
                window_duration() + configured.or(measured).unwrap_or_else(window_duration)
            }
            Mode::Transcription if self.low_latency_wanted(live) => {
                self.low_latency(configured, loaded.map(|l| l.processing))
            }
            Mode::Transcription => {
                window_duration()
                    + samples_to_time(TRANSCRIPTION_CHUNK_SAMPLES as u64)
                    + configured.unwrap_or_else(window_duration)
            }
        }
    }

    // ---- sink side ------------------------------------------------------------------------

    fn sink_chain(
        &self,
        _pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        gst::log!(CAT, imp = self, "handling {buffer:?}");
        self.queue.last_flow()?;

        let mut stream = self.stream.lock().unwrap();
        let Some(info) = stream.info.clone() else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ("Received audio before caps")
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        let bpf = info.bpf() as usize;

        if !stream.partial.is_empty() && !stream.continued_by(&buffer, bpf) {
            gst::warning!(
                CAT,
                imp = self,
                "dropping {} byte(s) of an incomplete sample: {buffer:?} starts a new one",
                stream.partial.len()
            );
            stream.partial.clear();
        }

        if let Some(pts) = buffer.pts() {
            match stream.next_pts() {
                None => stream.base_pts = Some(pts),
                Some(expected) if pts > expected + DISCONT_TOLERANCE => {
                    stream = self.cover_hole(stream, expected, pts)?;
                }
                _ => {}
            }
        } else if stream.base_pts.is_none() {
            stream.base_pts = Some(gst::ClockTime::ZERO);
        }

        let Some(audio) = self.whole_samples(&mut stream, buffer, info.format(), bpf)? else {
            return Ok(gst::FlowSuccess::Ok);
        };
        stream.samples_in += (audio.size() / std::mem::size_of::<f32>()) as u64;
        stream.adapter.push(audio);
        self.queue_full_chunks(stream)
    }

    /// The whole samples of `buffer`, after the bytes of an incomplete sample left by the buffer
    /// before, as F32LE (the adapter's format); an incomplete sample at its end is kept for the
    /// next buffer. `None` when no sample is complete yet.
    fn whole_samples(
        &self,
        stream: &mut Stream,
        buffer: gst::Buffer,
        format: gst_audio::AudioFormat,
        bpf: usize,
    ) -> Result<Option<gst::Buffer>, gst::FlowError> {
        let aligned = stream.partial.is_empty() && buffer.size().is_multiple_of(bpf);
        // The common case: float input goes into the adapter as it is, without a copy.
        if aligned && format == gst_audio::AudioFormat::F32le {
            return Ok((buffer.size() > 0).then_some(buffer));
        }
        let map = buffer.map_readable().map_err(|_| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ("Can't map buffer"));
            gst::FlowError::Error
        })?;
        if aligned {
            return Ok((map.size() > 0).then(|| s16_to_f32le(&map)));
        }
        let mut bytes = std::mem::take(&mut stream.partial);
        bytes.extend_from_slice(&map);
        let whole = bytes.len() - bytes.len() % bpf;
        stream.partial = bytes.split_off(whole);
        if bytes.is_empty() {
            return Ok(None);
        }
        Ok(Some(match format {
            gst_audio::AudioFormat::S16le => s16_to_f32le(&bytes),
            _ => gst::Buffer::from_mut_slice(bytes),
        }))
    }

    fn push_silence(&self, stream: &mut Stream, samples: u64) {
        if samples > 0 {
            stream.samples_in += samples;
            let bytes = samples as usize * std::mem::size_of::<f32>();
            stream
                .adapter
                .push(gst::Buffer::from_mut_slice(vec![0u8; bytes]));
        }
    }

    /// Audio missing from `from` to `to` (a timestamp jump, a GAP): silence when the hole fits in
    /// a window; otherwise the audio before it is handed on to be finished as at the end of a
    /// stream, and the windows restart at `to`, so that a hole of any length costs the same.
    fn cover_hole<'a>(
        &'a self,
        mut stream: std::sync::MutexGuard<'a, Stream>,
        from: gst::ClockTime,
        to: gst::ClockTime,
    ) -> Result<std::sync::MutexGuard<'a, Stream>, gst::FlowError> {
        // The bytes of a sample begun before the hole are not continued after it.
        stream.partial.clear();
        let samples = time_to_samples(to - from);
        if samples <= MAX_FILLED_HOLE_SAMPLES {
            gst::debug!(
                CAT,
                imp = self,
                "hole of {} before {to}: filling with silence",
                to - from
            );
            self.push_silence(&mut stream, samples);
            return Ok(stream);
        }
        gst::info!(
            CAT,
            imp = self,
            "hole of {} before {to}: the audio before it is finished, windows restart at {to}",
            to - from
        );
        let rest = self.take_rest(&mut stream)?;
        stream.resume_at(to);
        // Never wait for the src task while holding the stream lock.
        drop(stream);
        if let Some(chunk) = rest {
            self.queue.push(Item::Chunk(chunk))?;
        }
        self.queue.push(Item::Resume(to))?;
        Ok(self.stream.lock().unwrap())
    }

    /// Hands every complete chunk in the adapter to the src task.
    fn queue_full_chunks<'a>(
        &'a self,
        mut stream: std::sync::MutexGuard<'a, Stream>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(chunk_bytes) = self.loaded.lock().unwrap().map(|l| l.chunk_bytes()) else {
            return Err(gst::FlowError::Flushing);
        };
        while stream.adapter.available() >= chunk_bytes {
            let chunk = self.take_chunk(&mut stream, chunk_bytes)?;
            // Never wait for the src task while holding the stream lock.
            drop(stream);
            self.queue.push(Item::Chunk(chunk))?;
            stream = self.stream.lock().unwrap();
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn take_chunk(&self, stream: &mut Stream, bytes: usize) -> Result<Chunk, gst::FlowError> {
        let audio = stream
            .adapter
            .take_buffer(bytes)
            .map_err(|_| gst::FlowError::Error)?;
        let index = stream.chunks_out;
        let pts =
            stream.base_pts.unwrap_or(gst::ClockTime::ZERO) + samples_to_time(stream.samples_out);
        let discont = stream.samples_out == 0;
        stream.chunks_out += 1;
        stream.samples_out += (bytes / std::mem::size_of::<f32>()) as u64;
        Ok(Chunk {
            index,
            pts,
            audio,
            discont,
        })
    }

    /// The audio left in the adapter as a last, partial window (zero-padded by the encoder).
    fn take_rest(&self, stream: &mut Stream) -> Result<Option<Chunk>, gst::FlowError> {
        if !stream.partial.is_empty() {
            gst::warning!(
                CAT,
                imp = self,
                "dropping {} byte(s) of an incomplete sample at the end of the stream",
                stream.partial.len()
            );
            stream.partial.clear();
        }
        let rest = stream.adapter.available();
        if rest == 0 {
            return Ok(None);
        }
        self.take_chunk(stream, rest).map(Some)
    }

    /// At EOS: the last partial window is encoded too (zero-padded), so no audio is lost.
    fn drain(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut stream = self.stream.lock().unwrap();
        let Some(chunk) = self.take_rest(&mut stream)? else {
            return Ok(gst::FlowSuccess::Ok);
        };
        drop(stream);
        self.queue.push(Item::Chunk(chunk))
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        gst::log!(CAT, obj = pad, "handling event {event:?}");
        use gst::EventView;
        match event.view() {
            EventView::FlushStart(_) => {
                self.set_flushing(true);
                let res = self.srcpad.push_event(event);
                let _ = self.srcpad.pause_task();
                res
            }
            EventView::FlushStop(_) => {
                self.stream.lock().unwrap().reset();
                // The src task is paused: nothing else holds the processor.
                if let Some(Processor::Transcription(text)) =
                    self.models.lock().unwrap().processor()
                {
                    text.reset();
                }
                let res = self.srcpad.push_event(event);
                self.set_flushing(false);
                if let Err(err) = self.start_task() {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Failed,
                        ("Could not restart the encoder task: {err}")
                    );
                    return false;
                }
                res
            }
            EventView::Caps(c) => {
                let info = match gst_audio::AudioInfo::from_caps(c.caps()) {
                    Ok(info) => info,
                    Err(err) => {
                        gst::element_imp_error!(
                            self,
                            gst::CoreError::Negotiation,
                            ("Invalid audio caps {}: {err}", c.caps())
                        );
                        return false;
                    }
                };
                {
                    let mut stream = self.stream.lock().unwrap();
                    if !stream.partial.is_empty() {
                        gst::warning!(
                            CAT,
                            imp = self,
                            "dropping {} byte(s) of an incomplete sample: the format changed",
                            stream.partial.len()
                        );
                        stream.partial.clear();
                    }
                    stream.info = Some(info);
                }
                let Some(caps) = self.src_caps() else {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Negotiation,
                        ("Caps arrived before the model was loaded")
                    );
                    return false;
                };
                let event = gst::event::Caps::builder(&caps)
                    .seqnum(event.seqnum())
                    .build();
                self.queue.push(Item::Event(event)).is_ok()
            }
            EventView::Gap(gap) => {
                let (pts, duration) = gap.get();
                let end = pts + duration.unwrap_or(gst::ClockTime::ZERO);
                let mut stream = self.stream.lock().unwrap();
                let expected =
                    *stream.base_pts.get_or_insert(pts) + samples_to_time(stream.samples_in);
                if end > expected {
                    stream = match self.cover_hole(stream, expected, end) {
                        Ok(stream) => stream,
                        Err(_) => return false,
                    };
                }
                self.queue_full_chunks(stream).is_ok()
            }
            EventView::Eos(_) => {
                let _ = self.drain();
                self.queue.push(Item::Event(event)).is_ok()
            }
            EventView::Segment(s) => {
                if s.segment().format() != gst::Format::Time {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        (
                            "Only time segments are supported, got {:?}",
                            s.segment().format()
                        )
                    );
                    return false;
                }
                self.queue.push(Item::Event(event)).is_ok()
            }
            _ if event.is_serialized() => self.queue.push(Item::Event(event)).is_ok(),
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    // ---- src side -------------------------------------------------------------------------

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        gst::log!(CAT, obj = pad, "handling query {query:?}");
        match query.view_mut() {
            gst::QueryViewMut::Latency(q) => {
                let mut upstream = gst::query::Latency::new();
                if !self.sinkpad.peer_query(&mut upstream) {
                    return false;
                }
                let (live, min, max) = upstream.result();
                let ours = self.own_latency(live);
                gst::debug!(CAT, imp = self, "upstream latency {min}, ours {ours}");
                *self.live_latency.lock().unwrap() = live.then_some(min + ours);
                self.upstream_live.store(live, Ordering::Relaxed);
                q.set(live, min + ours, max.opt_add(ours));
                true
            }
            gst::QueryViewMut::Caps(q) => {
                let caps = self.src_caps().unwrap_or_else(|| pad.pad_template_caps());
                let caps = match q.filter() {
                    Some(filter) => {
                        filter.intersect_with_mode(&caps, gst::CapsIntersectMode::First)
                    }
                    None => caps,
                };
                q.set_result(&caps);
                true
            }
            _ => gst::Pad::query_default(pad, Some(&*self.obj()), query),
        }
    }
}

/// S16LE mono samples as an F32LE buffer, in [-1, 1).
fn s16_to_f32le(data: &[u8]) -> gst::Buffer {
    let mut bytes = vec![0u8; data.len() / 2 * 4];
    for (out, b) in bytes.chunks_exact_mut(4).zip(data.chunks_exact(2)) {
        out.copy_from_slice(&(i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0).to_le_bytes());
    }
    gst::Buffer::from_mut_slice(bytes)
}

#[glib::object_subclass]
impl ObjectSubclass for WhisperEncNpu {
    const NAME: &'static str = "GstWhisperEncNpu";
    type Type = super::WhisperEncNpu;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let templ = klass.pad_template("sink").unwrap();
        let sinkpad = gst::Pad::builder_from_template(&templ)
            .chain_function(|pad, parent, buffer| {
                WhisperEncNpu::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                WhisperEncNpu::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            .flags(gst::PadFlags::ACCEPT_TEMPLATE)
            .build();
        let templ = klass.pad_template("src").unwrap();
        let srcpad = gst::Pad::builder_from_template(&templ)
            .query_function(|pad, parent, query| {
                WhisperEncNpu::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_query(pad, query),
                )
            })
            .build();
        Self {
            sinkpad,
            srcpad,
            settings: Mutex::new(Settings::default()),
            stream: Mutex::new(Stream::default()),
            queue: HandOff::default(),
            models: Mutex::new(Models::default()),
            loaded: Mutex::new(None),
            step_bound: Mutex::new(StepBound::default()),
            live_latency: Mutex::new(None),
            upstream_live: Arc::default(),
            cancel: Cancel::new(),
        }
    }
}

impl ObjectImpl for WhisperEncNpu {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let defaults = Settings::default();
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model")
                    .blurb(
                        "Whisper model: a directory or file in CTranslate2, Hugging Face \
                         safetensors or whisper.cpp ggml format, or a name looked up offline \
                         (base, tiny.en, openai/whisper-base, ggml-base.en.bin; see the README); \
                         scripts/fetch-models installs base and tiny.en",
                    )
                    .default_value(Some(defaults.model.to_string_lossy().as_ref()))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("mode", defaults.mode)
                    .nick("Mode")
                    .blurb("Push encoder embeddings or transcribed text downstream")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("backend", defaults.backend)
                    .nick("Backend")
                    .blurb("Where the encoder's matrix products run")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("precision", defaults.precision)
                    .nick("Precision")
                    .blurb(
                        "Numeric precision of the matrix products (the encoder's, and in \
                         transcription mode the decoder's)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("threads")
                    .nick("Threads")
                    .blurb("Encoder threads (0 = one per core)")
                    .maximum(1024)
                    .default_value(defaults.threads)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("language")
                    .nick("Language")
                    .blurb(
                        "Spoken language as a Whisper code (en, de, ...); unset detects it \
                         (multilingual models; English-only models ignore it)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("language-code")
                    .nick("Language code")
                    .blurb(
                        "Spoken language as a BCP 47 tag (en-US): the language property by the \
                         name transcriberbin sets",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("task", defaults.task)
                    .nick("Task")
                    .blurb("Transcribe in the spoken language, or translate to English")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("beam-size")
                    .nick("Beam size")
                    .blurb("Beam search width in transcription mode (1 = greedy decoding)")
                    .minimum(1)
                    .maximum(16)
                    .default_value(defaults.beam_size)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("previous-text-prompt")
                    .nick("Previous text as prompt")
                    .blurb("Give the previous window's text to the decoder as context")
                    .default_value(defaults.previous_text_prompt)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("latency")
                    .nick("Processing latency")
                    .blurb(
                        "How long processing one window (low latency: one step) may take, in ms, \
                         for the latency query (0 = automatic: measured in embeddings mode, a \
                         window in whole-window transcription, the step bound in low latency)",
                    )
                    .default_value(defaults.latency_ms)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("latency-mode", defaults.latency_mode)
                    .nick("Latency mode")
                    .blurb(
                        "Transcription: low (a window sliding with the live edge, words committed \
                         once stable, captions within seconds), full (whole 10.24 s windows, least \
                         compute) or auto (low when upstream is live)",
                    )
                    .mutable_ready()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        // Every property is read when the model is loaded (READY to PAUSED) or when a stream
        // starts: a change while running is kept for the next start only, which the user should
        // know (GStreamer itself does not enforce GST_PARAM_MUTABLE_READY).
        let state = self.obj().current_state();
        if state > gst::State::Ready {
            gst::warning!(
                CAT,
                imp = self,
                "property '{}' set in {state:?}: it is changeable in NULL and READY only and takes \
                 effect at the next start",
                pspec.name()
            );
        }
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "model" => {
                settings.model = value
                    .get::<Option<String>>()
                    .unwrap()
                    .map(PathBuf::from)
                    .unwrap_or_else(crate::model::default_model_dir)
            }
            "mode" => settings.mode = value.get().unwrap(),
            "backend" => settings.backend = value.get().unwrap(),
            "precision" => settings.precision = value.get().unwrap(),
            "threads" => settings.threads = value.get().unwrap(),
            "language" => settings.language = value.get::<Option<String>>().unwrap(),
            // "en-US" -> "en": Whisper knows languages, not regions.
            "language-code" => {
                settings.language = value
                    .get::<Option<String>>()
                    .unwrap()
                    .and_then(|tag| tag.split(['-', '_']).next().map(str::to_lowercase))
                    .filter(|code| !code.is_empty())
            }
            "task" => settings.task = value.get().unwrap(),
            "beam-size" => settings.beam_size = value.get().unwrap(),
            "previous-text-prompt" => settings.previous_text_prompt = value.get().unwrap(),
            "latency" => settings.latency_ms = value.get().unwrap(),
            "latency-mode" => settings.latency_mode = value.get().unwrap(),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "model" => settings.model.to_string_lossy().to_value(),
            "mode" => settings.mode.to_value(),
            "backend" => settings.backend.to_value(),
            "precision" => settings.precision.to_value(),
            "threads" => settings.threads.to_value(),
            "language" | "language-code" => settings.language.to_value(),
            "task" => settings.task.to_value(),
            "beam-size" => settings.beam_size.to_value(),
            "previous-text-prompt" => settings.previous_text_prompt.to_value(),
            "latency" => settings.latency_ms.to_value(),
            "latency-mode" => settings.latency_mode.to_value(),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.add_pad(&self.sinkpad).unwrap();
        obj.add_pad(&self.srcpad).unwrap();
    }
}

impl GstObjectImpl for WhisperEncNpu {}

impl ElementImpl for WhisperEncNpu {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Whisper encoder (CPU / XDNA2 NPU)",
                "Filter/Audio/Analyzer",
                "Runs Whisper on 10.24 s windows of 16 kHz mono audio and pushes the encoder \
                 embeddings or the transcribed text",
                "whisperencnpu developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let sink_caps = gst_audio::AudioCapsBuilder::new_interleaved()
                .format_list([gst_audio::AudioFormat::F32le, gst_audio::AudioFormat::S16le])
                .rate(SAMPLE_RATE as i32)
                .channels(1)
                .build();
            let mut src_caps = gst::Caps::builder("other/tensors")
                .field("format", "static")
                .field("num_tensors", 1i32)
                .field("types", "float32")
                .build();
            src_caps.merge(
                gst::Caps::builder("text/x-raw")
                    .field("format", "utf8")
                    .build(),
            );
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &sink_caps,
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &src_caps,
                )
                .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        gst::trace!(CAT, imp = self, "changing state {transition:?}");
        match transition {
            gst::StateChange::ReadyToPaused => {
                if let Err(err) = self.load() {
                    self.post_error_message(err);
                    return Err(gst::StateChangeError);
                }
                self.stream.lock().unwrap().reset();
                self.set_flushing(false);
            }
            gst::StateChange::PausedToReady => self.set_flushing(true),
            _ => {}
        }

        let res = self.parent_change_state(transition)?;

        match transition {
            gst::StateChange::ReadyToPaused => {
                if let Err(err) = self.start_task() {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Failed,
                        ("Could not start the encoder task: {err}")
                    );
                    return Err(gst::StateChangeError);
                }
            }
            gst::StateChange::PausedToReady => {
                let _ = self.srcpad.stop_task();
                // The next run's pipeline answers for its own liveness.
                *self.live_latency.lock().unwrap() = None;
                self.upstream_live.store(false, Ordering::Relaxed);
                let mut stream = self.stream.lock().unwrap();
                stream.reset();
                stream.info = None;
                drop(stream);
                // Kept, reset, for the next run (see `load`).
                *self.loaded.lock().unwrap() = None;
                self.models.lock().unwrap().keep_running();
            }
            _ => {}
        }
        Ok(res)
    }
}
