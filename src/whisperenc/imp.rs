//! The element: cuts audio into 10.24 s windows on the streaming thread and encodes them on the
//! source pad's task, so that upstream (a live source above all) is never held up by inference.
//!
//! Data flow: sink chain -> adapter (float32 samples) -> full windows into a bounded queue, with the
//! serialized events between them in stream order -> src task: mel + encoder -> push downstream.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Condvar, LazyLock, Mutex};
use std::time::Instant;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::{Backend, Mode, Precision};
use crate::mel::{SAMPLE_RATE, WINDOW_SAMPLES};
use crate::npu;
use crate::npu::BackendChoice;
use crate::window::{EncoderOptions, SetupError, WindowEncoder};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "whisperencnpu",
        gst::DebugColorFlags::empty(),
        Some("Whisper encoder on CPU or XDNA2 NPU"),
    )
});

const WINDOW_BYTES: usize = WINDOW_SAMPLES * std::mem::size_of::<f32>();
/// Windows waiting for the encoder before the streaming thread waits: enough to ride out a slow
/// window, small enough to bound memory (each is 640 KiB).
const QUEUE_WINDOWS: usize = 2;
/// A timestamp jump larger than this is a hole in the stream, filled with silence.
const DISCONT_TOLERANCE: gst::ClockTime = gst::ClockTime::from_mseconds(40);

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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: crate::model::default_model_dir(),
            mode: Mode::default(),
            backend: Backend::default(),
            precision: Precision::default(),
            threads: 0,
        }
    }
}

/// One window of audio on its way to the encoder.
struct Window {
    index: u64,
    pts: gst::ClockTime,
    /// float32 samples; shorter than a window only at the end of the stream.
    audio: gst::Buffer,
}

enum Item {
    Window(Window),
    Event(gst::Event),
}

/// The hand-off between the streaming thread and the src task.
struct Queue {
    items: VecDeque<Item>,
    windows: usize,
    flushing: bool,
    /// What the last push downstream returned, handed back to upstream by the chain function.
    last_flow: Result<gst::FlowSuccess, gst::FlowError>,
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
    /// Windows handed to the encoder since `base_pts`.
    windows_out: u64,
}

impl Stream {
    fn next_pts(&self) -> Option<gst::ClockTime> {
        self.base_pts.map(|b| b + samples_to_time(self.samples_in))
    }

    fn reset(&mut self) {
        self.adapter.clear();
        self.base_pts = None;
        self.samples_in = 0;
        self.windows_out = 0;
    }
}

/// What the loaded model can do, kept for caps and latency.
#[derive(Clone, Copy)]
struct Loaded {
    d_model: usize,
    positions: usize,
    /// Measured time to encode one window at load (the warm-up run).
    processing: gst::ClockTime,
}

pub struct WhisperEncNpu {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    stream: Mutex<Stream>,
    queue: Mutex<Queue>,
    queue_cond: Condvar,
    encoder: Mutex<Option<WindowEncoder>>,
    loaded: Mutex<Option<Loaded>>,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            windows: 0,
            flushing: true,
            last_flow: Ok(gst::FlowSuccess::Ok),
        }
    }
}

impl WhisperEncNpu {
    // ---- hand-off queue -------------------------------------------------------------------

    /// Queues an item for the src task, waiting while the queue holds too many windows.
    fn enqueue(&self, item: Item) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut q = self.queue.lock().unwrap();
        let is_window = matches!(item, Item::Window(_));
        while is_window && q.windows >= QUEUE_WINDOWS && !q.flushing {
            q = self.queue_cond.wait(q).unwrap();
        }
        if q.flushing {
            return Err(gst::FlowError::Flushing);
        }
        q.last_flow?;
        if is_window {
            q.windows += 1;
        }
        q.items.push_back(item);
        self.queue_cond.notify_all();
        Ok(gst::FlowSuccess::Ok)
    }

    fn set_flushing(&self, flushing: bool) {
        let mut q = self.queue.lock().unwrap();
        q.flushing = flushing;
        if flushing {
            // Sticky events not yet sent (stream-start, caps, tags) still describe the stream
            // after the flush: keep them on the src pad, as GstQueue does.
            for item in q.items.drain(..) {
                if let Item::Event(event) = item {
                    if event.is_sticky()
                        && !matches!(event.type_(), gst::EventType::Segment | gst::EventType::Eos)
                    {
                        let _ = self.srcpad.store_sticky_event(&event);
                    }
                }
            }
            q.windows = 0;
        } else {
            q.last_flow = Ok(gst::FlowSuccess::Ok);
        }
        self.queue_cond.notify_all();
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
                this.queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_flow = Err(gst::FlowError::Error);
                let _ = this.srcpad.pause_task();
            }
        })
    }

    /// One iteration of the src task: take the next item and send it on.
    fn src_loop(&self) {
        let item = {
            let mut q = self.queue.lock().unwrap();
            while q.items.is_empty() && !q.flushing {
                q = self.queue_cond.wait(q).unwrap();
            }
            if q.flushing {
                drop(q);
                let _ = self.srcpad.pause_task();
                return;
            }
            let item = q.items.pop_front().unwrap();
            if matches!(item, Item::Window(_)) {
                q.windows -= 1;
            }
            self.queue_cond.notify_all();
            item
        };

        let flow = match item {
            Item::Event(event) => {
                let is_eos = event.type_() == gst::EventType::Eos;
                self.srcpad.push_event(event);
                if is_eos {
                    Err(gst::FlowError::Eos)
                } else {
                    Ok(gst::FlowSuccess::Ok)
                }
            }
            Item::Window(window) => self.encode_and_push(window),
        };

        if let Err(err) = flow {
            gst::debug!(CAT, imp = self, "src task pausing: {err:?}");
            let mut q = self.queue.lock().unwrap();
            q.last_flow = Err(err);
            self.queue_cond.notify_all();
            drop(q);
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

    fn encode_and_push(&self, window: Window) -> Result<gst::FlowSuccess, gst::FlowError> {
        let started = Instant::now();
        let map = window.audio.map_readable().map_err(|_| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ("Can't map audio"));
            gst::FlowError::Error
        })?;
        let samples: Vec<f32> = map
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        drop(map);

        let mut guard = self.encoder.lock().unwrap();
        let Some(encoder) = guard.as_mut() else {
            return Err(gst::FlowError::Flushing);
        };
        let (embeddings, timing) = encoder.encode(&samples);
        let (backend, precision) = (encoder.backend(), encoder.precision());
        drop(guard);

        let bytes: Vec<u8> = embeddings
            .as_standard_layout()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut buffer = gst::Buffer::from_mut_slice(bytes);
        {
            let buffer = buffer.get_mut().unwrap();
            buffer.set_pts(window.pts);
            buffer.set_duration(window_duration());
            buffer.set_offset(window.index);
            if window.index == 0 {
                buffer.set_flags(gst::BufferFlags::DISCONT);
            }
        }

        let processing = started.elapsed();
        let audio_duration = samples_to_time(samples.len() as u64);
        let processing_time = gst::ClockTime::from_nseconds(processing.as_nanos() as u64);
        let s = gst::Structure::builder("whisperencnpu-timing")
            .field("window", window.index)
            .field("pts", window.pts)
            .field("audio-duration", audio_duration)
            .field(
                "mel-time",
                gst::ClockTime::from_nseconds(timing.mel.as_nanos() as u64),
            )
            .field(
                "encoder-time",
                gst::ClockTime::from_nseconds(timing.encoder.as_nanos() as u64),
            )
            .field("processing-time", processing_time)
            .field(
                "realtime-factor",
                audio_duration.nseconds() as f64 / processing_time.nseconds().max(1) as f64,
            )
            .field("backend", backend.nick())
            .field("precision", precision.nick())
            .build();
        gst::debug!(CAT, imp = self, "window {}: {s:?}", window.index);
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());

        self.srcpad.push(buffer)
    }

    /// Loads the model and warms the encoder up once (first-window allocations, and a measure
    /// of the processing time that the latency query reports).
    fn load(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        if settings.mode == Mode::Transcription {
            return Err(gst::error_msg!(
                gst::CoreError::NotImplemented,
                ("mode=transcription is not implemented yet; use mode=embeddings")
            ));
        }
        let options = EncoderOptions {
            backend: match settings.backend {
                Backend::Auto => BackendChoice::Auto,
                Backend::Cpu => BackendChoice::Cpu,
                Backend::Xdna => BackendChoice::Xdna,
            },
            precision: match settings.precision {
                Precision::F32 => npu::Precision::F32,
                Precision::Int8 => npu::Precision::Int8,
            },
            threads: settings.threads as usize,
        };
        gst::info!(
            CAT,
            imp = self,
            "loading {} with {options:?}",
            settings.model.display()
        );
        let mut encoder =
            WindowEncoder::load(&settings.model, &options).map_err(|err| match err {
                SetupError::Model(err) => gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    (
                        "Could not load the Whisper model from '{}': {err}",
                        settings.model.display()
                    )
                ),
                other => gst::error_msg!(gst::LibraryError::Init, ("{other}")),
            })?;
        let started = Instant::now();
        let _ = encoder.encode(&[]);
        let processing = gst::ClockTime::from_nseconds(started.elapsed().as_nanos() as u64);
        gst::info!(
            CAT,
            imp = self,
            "model loaded: d_model {}, {} positions, {} per window on {} {}",
            encoder.d_model(),
            encoder.positions(),
            processing,
            encoder.backend().nick(),
            encoder.precision().nick()
        );
        *self.loaded.lock().unwrap() = Some(Loaded {
            d_model: encoder.d_model(),
            positions: encoder.positions(),
            processing,
        });
        *self.encoder.lock().unwrap() = Some(encoder);
        Ok(())
    }

    fn src_caps(&self) -> Option<gst::Caps> {
        let loaded = (*self.loaded.lock().unwrap())?;
        Some(
            gst::Caps::builder("other/tensors")
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
        )
    }

    /// Our own latency: a window must be complete before it is encoded, and encoding it takes a
    /// measured time. The bound is twice the warm-up measure, never more than a window (beyond
    /// that the element could not keep up with a live source anyway).
    fn own_latency(&self) -> gst::ClockTime {
        let processing = self
            .loaded
            .lock()
            .unwrap()
            .map(|l| (l.processing * 2).min(window_duration()))
            .unwrap_or_else(window_duration);
        window_duration() + processing
    }

    // ---- sink side ------------------------------------------------------------------------

    fn sink_chain(
        &self,
        _pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        gst::log!(CAT, imp = self, "handling {buffer:?}");
        self.queue.lock().unwrap().last_flow?;

        let mut stream = self.stream.lock().unwrap();
        let Some(info) = stream.info.clone() else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ("Received audio before caps")
            );
            return Err(gst::FlowError::NotNegotiated);
        };

        if let Some(pts) = buffer.pts() {
            match stream.next_pts() {
                None => stream.base_pts = Some(pts),
                Some(expected) if pts > expected + DISCONT_TOLERANCE => {
                    gst::debug!(
                        CAT,
                        imp = self,
                        "hole of {} before {pts}: filling with silence",
                        pts - expected
                    );
                    self.push_silence(&mut stream, time_to_samples(pts - expected));
                }
                _ => {}
            }
        } else if stream.base_pts.is_none() {
            stream.base_pts = Some(gst::ClockTime::ZERO);
        }

        let samples = {
            let map = buffer.map_readable().map_err(|_| {
                gst::element_imp_error!(self, gst::StreamError::Failed, ("Can't map buffer"));
                gst::FlowError::Error
            })?;
            to_f32(&map, info.format())
        };
        stream.samples_in += samples.len() as u64;
        stream.adapter.push(f32_buffer(samples));
        self.queue_full_windows(stream)
    }

    fn push_silence(&self, stream: &mut Stream, samples: u64) {
        if samples > 0 {
            stream.samples_in += samples;
            stream.adapter.push(f32_buffer(vec![0.0; samples as usize]));
        }
    }

    /// Hands every complete window in the adapter to the src task.
    fn queue_full_windows<'a>(
        &'a self,
        mut stream: std::sync::MutexGuard<'a, Stream>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        while stream.adapter.available() >= WINDOW_BYTES {
            let window = self.take_window(&mut stream, WINDOW_BYTES)?;
            // Never wait for the src task while holding the stream lock.
            drop(stream);
            self.enqueue(Item::Window(window))?;
            stream = self.stream.lock().unwrap();
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn take_window(&self, stream: &mut Stream, bytes: usize) -> Result<Window, gst::FlowError> {
        let audio = stream
            .adapter
            .take_buffer(bytes)
            .map_err(|_| gst::FlowError::Error)?;
        let index = stream.windows_out;
        let pts = stream.base_pts.unwrap_or(gst::ClockTime::ZERO)
            + samples_to_time(index * WINDOW_SAMPLES as u64);
        stream.windows_out += 1;
        Ok(Window { index, pts, audio })
    }

    /// At EOS: the last partial window is encoded too (zero-padded), so no audio is lost.
    fn drain(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut stream = self.stream.lock().unwrap();
        let rest = stream.adapter.available();
        if rest == 0 {
            return Ok(gst::FlowSuccess::Ok);
        }
        let window = self.take_window(&mut stream, rest)?;
        drop(stream);
        self.enqueue(Item::Window(window))
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
                self.stream.lock().unwrap().info = Some(info);
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
                self.enqueue(Item::Event(event)).is_ok()
            }
            EventView::Gap(gap) => {
                let (pts, duration) = gap.get();
                let mut stream = self.stream.lock().unwrap();
                match stream.next_pts() {
                    None => stream.base_pts = Some(pts),
                    Some(expected) if pts > expected => {
                        self.push_silence(&mut stream, time_to_samples(pts - expected))
                    }
                    _ => {}
                }
                if let Some(duration) = duration {
                    self.push_silence(&mut stream, time_to_samples(duration));
                }
                self.queue_full_windows(stream).is_ok()
            }
            EventView::Eos(_) => {
                let _ = self.drain();
                self.enqueue(Item::Event(event)).is_ok()
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
                self.enqueue(Item::Event(event)).is_ok()
            }
            _ if event.is_serialized() => self.enqueue(Item::Event(event)).is_ok(),
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
                let ours = self.own_latency();
                gst::debug!(CAT, imp = self, "upstream latency {min}, ours {ours}");
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

fn f32_buffer(samples: Vec<f32>) -> gst::Buffer {
    let bytes: Vec<u8> = samples.iter().flat_map(|v| v.to_ne_bytes()).collect();
    gst::Buffer::from_mut_slice(bytes)
}

/// Interleaved mono samples of the negotiated format as float32 in [-1, 1).
fn to_f32(data: &[u8], format: gst_audio::AudioFormat) -> Vec<f32> {
    match format {
        gst_audio::AudioFormat::S16le => data
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
            .collect(),
        _ => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
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
            queue: Mutex::new(Queue::default()),
            queue_cond: Condvar::new(),
            encoder: Mutex::new(None),
            loaded: Mutex::new(None),
        }
    }
}

impl ObjectImpl for WhisperEncNpu {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let defaults = Settings::default();
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model directory")
                    .blurb(
                        "Whisper model in CTranslate2 format (model.bin, config.json, \
                         tokenizer.json); scripts/fetch-models installs base and tiny.en",
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
                    .blurb("Numeric precision of the encoder's matrix products")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("threads")
                    .nick("Threads")
                    .blurb("Encoder threads (0 = one per core)")
                    .maximum(1024)
                    .default_value(defaults.threads)
                    .mutable_ready()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
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
                "Runs Whisper's log-mel front end and encoder on 10.24 s windows of 16 kHz mono \
                 audio and pushes the encoder embeddings",
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
            let src_caps = gst::Caps::builder("other/tensors")
                .field("format", "static")
                .field("num_tensors", 1i32)
                .field("types", "float32")
                .build();
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
                let mut stream = self.stream.lock().unwrap();
                stream.reset();
                stream.info = None;
                drop(stream);
                *self.encoder.lock().unwrap() = None;
                *self.loaded.lock().unwrap() = None;
            }
            _ => {}
        }
        Ok(res)
    }
}
