//! Transcription output on the src task: the two ways of walking the stream (`latency-mode`), and
//! what each pushes downstream (text buffers, GAP and final-transcript events) and posts (timing,
//! segment and partial messages).

use std::time::{Duration, Instant};

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::step_bound::{StepTimes, SLOW_STEPS};
use super::{samples_to_time, window_duration, Processor, WhisperEncNpu, CAT};
use crate::mel::SAMPLE_RATE;
use crate::transcribe::streaming::{StepResult, StreamOptions, StreamingTranscriber};
use crate::transcribe::{self, Transcriber};
use crate::whisperenc::messages::{partial_message, segment_message, TimingReport};
use crate::whisperenc::LatencyMode;
use crate::window::WindowEncoder;

/// In the low-latency mode, audio still queued makes the next step wait for it (steps merge when
/// processing falls behind), but never for more than this many steps' worth: a step must come
/// even when upstream is faster than real time (a file).
const MAX_MERGED_STEPS: u32 = 4;
/// How long one low-latency step may take for the latency query when the `latency` property does
/// not say, in warm-up windows (the encoder's time at load): a step encodes one window and decodes
/// a few tokens, which took half to one encoder time again on base and tiny.en (0.35 s on average
/// against a 0.135 s warm-up, base f32 on 2 AVX2 cores). The slowest steps of a 10-minute live run
/// took 4 to 6 warm-ups: no multiple covers a shared host's worst step, so slower steps raise
/// the bound ([`WhisperEncNpu::adapt_step_bound`]) and a caption that still comes late is stamped
/// on time ([`WhisperEncNpu::on_time_caption`]); 4 warm-ups put the reported latency at 3.06 s on
/// this machine, 3.5 at 2.9 s. With the decoder's weights as half floats (a 2-core AVX2 EPYC,
/// 2026-12-03, warm-up 0.23 s) the slowest steps of two live runs took 3.2 and 3.4 warm-ups.
const STEP_PROCESSING_WARMUPS: f64 = 3.5;
/// A typical low-latency step, in warm-up windows, for the step before the one that commits a
/// word (see [`super::step_bound`]): with the decoder's weights as half floats, steps took 1.7 to
/// 1.9 warm-ups on average (0.39-0.45 s against 0.23 s, base f32, 2 AVX2 cores, 2026-12-03), 2.5
/// at the 95th percentile: the 0.5 s step moves the edge further than most of them.
const STEP_TYPICAL_WARMUPS: f64 = 2.0;
/// A caption lasts at least this long a word (a fast speaker's pace).
const MIN_WORD_CAPTION: gst::ClockTime = gst::ClockTime::from_mseconds(150);
/// A caption moved to be on time is stamped this much after the earliest time that is: the time
/// it takes to reach the sink (a queue, textoverlay) after it is pushed.
const ON_TIME_MARGIN: gst::ClockTime = gst::ClockTime::from_mseconds(50);
/// The first steps (allocations, caches) do not move the bound.
const STEPS_BEFORE_ADAPTING: u64 = 3;

/// How the stream is walked, as `latency-mode` resolved at the stream's first chunk.
pub(super) enum TextEngine {
    /// Whole windows from the seek position.
    Full(Box<Transcriber>),
    /// A window sliding with the live edge, words committed once stable.
    Low {
        transcriber: Box<StreamingTranscriber>,
        /// Samples pushed since the last step.
        unstepped: usize,
        steps: u64,
    },
}

/// Where the text output stands in stream time.
#[derive(Default)]
pub(super) struct TextClock {
    /// Stream time of the transcriber's sample 0 (the first chunk since start or flush).
    base_pts: Option<gst::ClockTime>,
    /// Text and gaps have been pushed up to here.
    position: Option<gst::ClockTime>,
    /// Low latency: the words committed in the segment still open (for the partial message).
    open_words: Vec<String>,
}

impl TextClock {
    /// Stream time of a transcriber sample.
    fn at(&self, sample: u64) -> gst::ClockTime {
        self.base_pts.unwrap_or(gst::ClockTime::ZERO) + samples_to_time(sample)
    }
}

/// One low-latency step's committed words as a text buffer.
struct Caption {
    start: gst::ClockTime,
    end: gst::ClockTime,
    text: String,
    /// How much later than its words it was put to be on time ([`WhisperEncNpu::on_time_caption`]).
    moved: Option<gst::ClockTime>,
}

/// The transcriber and where its output stands in stream time.
pub(super) struct TextOutput {
    /// `None` only while switching between the two engines.
    pub(super) engine: Option<TextEngine>,
    pub(super) stream_options: StreamOptions,
    pub(super) clock: TextClock,
}

/// What one low-latency step covered and cost.
pub(super) struct StepReport {
    index: u64,
    /// New audio since the step before (samples).
    audio: usize,
    processing: std::time::Duration,
}

impl TextOutput {
    /// Switches to the engine asked for, keeping the prepared model.
    fn use_low_latency(&mut self, low: bool) {
        self.engine = match (self.engine.take().expect("engine"), low) {
            (TextEngine::Full(t), true) => Some(TextEngine::Low {
                transcriber: Box::new(StreamingTranscriber::new(*t, self.stream_options.clone())),
                unstepped: 0,
                steps: 0,
            }),
            (TextEngine::Low { transcriber, .. }, false) => {
                Some(TextEngine::Full(Box::new(transcriber.into_inner())))
            }
            (engine, _) => Some(engine),
        };
    }

    /// A new stream (flush, stop): nothing pending, nothing said.
    pub(super) fn reset(&mut self) {
        match self.engine.as_mut().expect("engine") {
            TextEngine::Full(t) => t.reset(0),
            TextEngine::Low {
                transcriber,
                unstepped,
                steps,
            } => {
                transcriber.reset(0);
                *unstepped = 0;
                *steps = 0;
            }
        }
        self.clock = TextClock::default();
    }

    /// The transcriber's next sample (its count goes on across holes).
    fn pushed_end(&self) -> u64 {
        match self.engine.as_ref().expect("engine") {
            TextEngine::Full(t) => t.pushed_end(),
            TextEngine::Low { transcriber, .. } => transcriber.pushed_end(),
        }
    }
}

impl WhisperEncNpu {
    /// Transcription of one chunk: the stream's first chunk settles the latency mode; whole
    /// windows are decoded as they fill, low-latency steps as they are due.
    pub(super) fn process_text(
        &self,
        text: &mut TextOutput,
        pts: gst::ClockTime,
        samples: &[f32],
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        if text.clock.base_pts.is_none() {
            text.clock.base_pts = Some(pts);
            text.clock.position = Some(pts);
            let low = self.low_latency_wanted(self.upstream_is_live());
            gst::info!(
                CAT,
                imp = self,
                "transcribing with {} latency",
                if low { "low" } else { "full" }
            );
            text.use_low_latency(low);
        }
        let behind = self.audio_queued();
        let TextOutput { engine, clock, .. } = text;
        match engine.as_mut().expect("engine") {
            TextEngine::Full(transcriber) => {
                transcriber.push_audio(samples);
                loop {
                    // Flushing or stopping: the windows still buffered are not decoded.
                    if self.cancel.is_set() {
                        return Err(gst::FlowError::Flushing);
                    }
                    let started = Instant::now();
                    let Some(result) = transcriber.next_window() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let encoder = transcriber.encoder();
                    self.push_text(clock, encoder, result, started.elapsed())?;
                }
            }
            TextEngine::Low {
                transcriber,
                unstepped,
                steps,
            } => {
                transcriber.push_audio(samples);
                *unstepped += samples.len();
                // Behind: let the queued audio join this step, up to a bound.
                let step = transcriber.options().step.as_secs_f64() * f64::from(SAMPLE_RATE);
                let merge_limit = step as usize * MAX_MERGED_STEPS as usize;
                if !transcriber.wants_step() || (behind && *unstepped < merge_limit) {
                    return Ok(gst::FlowSuccess::Ok);
                }
                let started = Instant::now();
                let result = transcriber.step();
                let report = StepReport {
                    index: *steps,
                    audio: *unstepped,
                    processing: started.elapsed(),
                };
                *steps += 1;
                *unstepped = 0;
                self.push_step(clock, transcriber, result, report)
            }
        }
    }

    /// The low-latency mode's own latency: what the commit policy allows from a word's start to its
    /// commit, with a step's processing as the `latency` property says (`configured`) or, else,
    /// [`STEP_PROCESSING_WARMUPS`] times the encoder's warm-up window (`warmup`) for the step that
    /// commits and [`STEP_TYPICAL_WARMUPS`] for the one before, raised later by
    /// [`Self::adapt_step_bound`] if steps take longer.
    pub(super) fn low_latency(
        &self,
        configured: Option<gst::ClockTime>,
        warmup: Option<gst::ClockTime>,
    ) -> gst::ClockTime {
        let times = match configured {
            Some(c) => StepTimes {
                typical: Duration::from_nanos(c.nseconds()),
                slow: Duration::from_nanos(c.nseconds()),
            },
            None => self.step_bound.lock().unwrap().get_or_init(|| {
                let warmup =
                    Duration::from_nanos(warmup.unwrap_or_else(window_duration).nseconds());
                StepTimes {
                    typical: warmup.mul_f64(STEP_TYPICAL_WARMUPS),
                    slow: warmup.mul_f64(STEP_PROCESSING_WARMUPS),
                }
            }),
        };
        let bound = StreamOptions::default().delay_bound_after(times.typical, times.slow);
        gst::ClockTime::from_nseconds(bound.as_nanos() as u64)
    }

    /// Whether upstream is live, as its latency query says (what `latency-mode=auto` follows).
    fn upstream_is_live(&self) -> bool {
        let mut query = gst::query::Latency::new();
        self.sinkpad.peer_query(&mut query) && query.result().0
    }

    /// Whether transcription runs in the low-latency mode, for an upstream that is `live` or not.
    pub(super) fn low_latency_wanted(&self, live: bool) -> bool {
        match self.settings.lock().unwrap().latency_mode {
            LatencyMode::Low => true,
            LatencyMode::Full => false,
            LatencyMode::Auto => live,
        }
    }

    /// Whether audio waits in the queue for the src task.
    fn audio_queued(&self) -> bool {
        self.queue.has_audio()
    }

    /// At EOS in transcription mode: decodes what is left and pushes all of it. The next stream
    /// (after a flush) starts afresh.
    pub(super) fn finish_transcription(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut models = self.models.lock().unwrap();
        let Some(Processor::Transcription(text)) = models.processor() else {
            return Ok(gst::FlowSuccess::Ok);
        };
        if text.clock.base_pts.is_none() {
            return Ok(gst::FlowSuccess::Ok);
        }
        self.decode_rest(text)?;
        text.reset();
        Ok(gst::FlowSuccess::Ok)
    }

    /// After a hole too long to fill (see `cover_hole`): the audio before it is decoded as at the
    /// end of a stream and all of it pushed, a GAP covers the hole, and the text clock goes on at
    /// `pts` with the transcriber's next sample, so its prompt and language are kept.
    pub(super) fn resume_text(
        &self,
        pts: gst::ClockTime,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut models = self.models.lock().unwrap();
        let Some(Processor::Transcription(text)) = models.processor() else {
            return Ok(gst::FlowSuccess::Ok);
        };
        // Nothing came before the hole: the first chunk sets the clock.
        if text.clock.base_pts.is_none() {
            return Ok(gst::FlowSuccess::Ok);
        }
        self.decode_rest(text)?;
        let next = samples_to_time(text.pushed_end());
        let clock = &mut text.clock;
        let mut position = clock.position.unwrap_or(pts);
        self.push_gap_until(&mut position, pts);
        clock.position = Some(position);
        clock.base_pts = Some(pts.saturating_sub(next));
        Ok(gst::FlowSuccess::Ok)
    }

    /// Decodes everything the transcriber holds and pushes all of it (the end of a stream).
    fn decode_rest(&self, text: &mut TextOutput) -> Result<gst::FlowSuccess, gst::FlowError> {
        let TextOutput { engine, clock, .. } = text;
        let started = Instant::now();
        match engine.as_mut().expect("engine") {
            TextEngine::Full(transcriber) => {
                let results = transcriber.finish();
                let per_window = started.elapsed() / results.len().max(1) as u32;
                for result in results {
                    self.push_text(clock, transcriber.encoder(), result, per_window)?;
                }
            }
            TextEngine::Low {
                transcriber,
                unstepped,
                steps,
            } => {
                let result = transcriber.finish();
                let report = StepReport {
                    index: *steps,
                    audio: *unstepped,
                    processing: started.elapsed(),
                };
                *steps += 1;
                *unstepped = 0;
                self.push_step(clock, transcriber, result, report)?;
            }
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// Pushes one decoded window's segments as text buffers, with GAP events over the silences
    /// between them and up to where the transcriber has moved on.
    fn push_text(
        &self,
        clock: &mut TextClock,
        encoder: &WindowEncoder,
        result: transcribe::WindowResult,
        processing: std::time::Duration,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let at = |sample: u64| clock.at(sample);
        let timing = TimingReport {
            index: result.index,
            pts: at(result.start_sample),
            audio: samples_to_time(result.audio_samples as u64),
            mel: result.timing.mel,
            encoder: result.timing.encoder,
            encoder_wait: result.timing.encoder_wait,
            encoder_batch: result.timing.encoder_batch,
            decoder: Some(result.timing.decoder),
            decoder_batch: Some(result.timing.decoder_batch),
            processing,
            backend: encoder.backend(),
            precision: encoder.precision(),
            npu: encoder.npu_window(),
            caption_moved: None,
        };
        self.post(timing.message());

        let mut position = clock.position.unwrap_or(at(0));
        for segment in &result.segments {
            let start = at(segment.start_sample).max(position);
            let end = at(segment.end_sample).max(start);
            let words = segment.text.trim();
            self.post(segment_message(segment, words, start, end, at));
            self.push_text_buffer(&mut position, start, end, words)?;
            self.push_final_transcript();
        }
        // Audio before the next window's start is settled: keep downstream's time moving.
        self.push_gap_until(&mut position, at(result.next_seek));
        clock.position = Some(position);
        Ok(gst::FlowSuccess::Ok)
    }

    /// Pushes what one low-latency step committed: its words as one text buffer, the segments it
    /// closed (message and final-transcript event), the hypothesis still open (message), and a GAP
    /// up to where nothing more will be said.
    fn push_step(
        &self,
        clock: &mut TextClock,
        transcriber: &StreamingTranscriber,
        result: StepResult,
        report: StepReport,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let base = clock.base_pts.unwrap_or(gst::ClockTime::ZERO);
        let at = |sample: u64| base + samples_to_time(sample);
        let mut position = clock.position.unwrap_or(at(0));
        let caption = match (result.committed.first(), result.committed.last()) {
            (Some(first), Some(last)) => {
                let start = at(first.start_sample).max(position);
                // Words the alignment put over text already shown collapse onto its end: they
                // were said before the live edge, and a caption of no duration is never shown.
                let shortest = (MIN_WORD_CAPTION * result.committed.len() as u64)
                    .min(at(result.live_edge).saturating_sub(start));
                let end = at(last.end_sample).max(start + shortest);
                let text = result
                    .committed
                    .iter()
                    .map(|w| w.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                Some(self.on_time_caption(start, end, result.committed.len(), text))
            }
            _ => None,
        };
        let encoder = transcriber.transcriber().encoder();
        let timing = TimingReport {
            index: report.index,
            pts: at(result.live_edge.saturating_sub(report.audio as u64)),
            audio: samples_to_time(report.audio as u64),
            mel: result.timing.mel,
            encoder: result.timing.encoder,
            encoder_wait: result.timing.encoder_wait,
            encoder_batch: result.timing.encoder_batch,
            decoder: Some(result.timing.decoder),
            decoder_batch: Some(result.timing.decoder_batch),
            processing: report.processing,
            backend: encoder.backend(),
            precision: encoder.precision(),
            npu: encoder.npu_window(),
            caption_moved: caption.as_ref().and_then(|c| c.moved),
        };
        self.post(timing.message());
        self.adapt_step_bound(report.index, report.processing);

        if let Some(c) = caption {
            self.push_text_buffer(&mut position, c.start, c.end, &c.text)?;
        }
        clock
            .open_words
            .extend(result.committed.iter().map(|w| w.text.clone()));
        for segment in &result.closed {
            let start = at(segment.start_sample);
            let end = at(segment.end_sample).max(start);
            self.post(segment_message(
                segment,
                segment.text.trim(),
                start,
                end,
                at,
            ));
            self.push_final_transcript();
            let closed_words = if segment.words.is_empty() {
                segment.text.split_whitespace().count()
            } else {
                segment.words.len()
            };
            let n = closed_words.min(clock.open_words.len());
            clock.open_words.drain(..n);
        }
        if result.partial.is_some() || !clock.open_words.is_empty() {
            let (text, start, end) = match &result.partial {
                Some(p) => (p.text.as_str(), at(p.start_sample), at(p.end_sample)),
                None => ("", position, position),
            };
            self.post(partial_message(
                text,
                &clock.open_words.join(" "),
                start,
                end,
            ));
        }
        self.push_gap_until(&mut position, at(result.settled));
        clock.position = Some(position);
        Ok(gst::FlowSuccess::Ok)
    }

    /// `[start, end]` as a caption that is on time at a synchronising sink: a sink shows a buffer
    /// at its running time plus the pipeline's latency, so one pushed now must not start before
    /// now minus the latency this element answered. Words committed later than the policy allows
    /// (rare: a word the decoder only found after a stall or a pause) start that much later
    /// (and [`ON_TIME_MARGIN`]) rather than be shown late or, behind `textoverlay`, not at all.
    fn on_time_caption(
        &self,
        start: gst::ClockTime,
        end: gst::ClockTime,
        words: usize,
        text: String,
    ) -> Caption {
        let moved = self
            .earliest_on_time()
            .map(|earliest| earliest + ON_TIME_MARGIN)
            .and_then(|earliest| earliest.checked_sub(start))
            .filter(|m| !m.is_zero());
        let Some(m) = moved else {
            return Caption {
                start,
                end,
                text,
                moved,
            };
        };
        gst::info!(
            CAT,
            imp = self,
            "{text:?} committed {m} later than the latency allows: moved to be on time"
        );
        // Its end stays where its words end (the next caption is not pushed later for it), but
        // the caption lasts as long as its words need.
        let start = start + m;
        Caption {
            start,
            end: end.max(start + MIN_WORD_CAPTION * words as u64),
            text,
            moved,
        }
    }

    /// The earliest stream time a buffer pushed now may carry and still be on time downstream;
    /// `None` when upstream is not live or the element runs without a clock.
    fn earliest_on_time(&self) -> Option<gst::ClockTime> {
        let latency = (*self.live_latency.lock().unwrap())?;
        let now = self.obj().current_running_time()?;
        let deadline = now.checked_sub(latency)?;
        let event = self.srcpad.sticky_event::<gst::event::Segment>(0)?;
        let segment = event.segment().downcast_ref::<gst::ClockTime>()?;
        segment.position_from_running_time(deadline)
    }

    /// Steps slower than the processing bound the latency query answered with would make their
    /// words late at a syncing sink: when a few recent ones are ([`StepBound::record`]), the bound
    /// is raised past them and the pipeline told to ask again.
    fn adapt_step_bound(&self, index: u64, processing: std::time::Duration) {
        if index < STEPS_BEFORE_ADAPTING || self.settings.lock().unwrap().latency_ms > 0 {
            return;
        }
        let raised = self.step_bound.lock().unwrap().record(processing);
        if let Some(raised) = raised {
            gst::info!(
                CAT,
                imp = self,
                "{} of the last steps took more than the latency allows (this one {processing:?}): {raised:?} now", SLOW_STEPS
            );
            let _ = self
                .obj()
                .post_message(gst::message::Latency::builder().src(&*self.obj()).build());
        }
    }

    /// Pushes `text` over `[start, end]`, with a GAP before it from `position`.
    fn push_text_buffer(
        &self,
        position: &mut gst::ClockTime,
        start: gst::ClockTime,
        end: gst::ClockTime,
        text: &str,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.push_gap_until(position, start);
        let mut buffer = gst::Buffer::from_mut_slice(text.as_bytes().to_vec());
        {
            let buffer = buffer.get_mut().unwrap();
            buffer.set_pts(start);
            buffer.set_duration(end - start);
        }
        *position = end;
        self.srcpad.push(buffer)
    }

    /// Keeps downstream's time moving over audio that has no text.
    fn push_gap_until(&self, position: &mut gst::ClockTime, until: gst::ClockTime) {
        if until > *position {
            self.srcpad.push_event(
                gst::event::Gap::builder(*position)
                    .duration(until - *position)
                    .build(),
            );
            *position = until;
        }
    }

    /// What gst-plugins-rs transcribers send after a final transcript (textaccumulate drains on
    /// it).
    fn push_final_transcript(&self) {
        self.srcpad.push_event(
            gst::event::CustomDownstream::builder(
                gst::Structure::builder("rstranscribe/final-transcript").build(),
            )
            .build(),
        );
    }
}
