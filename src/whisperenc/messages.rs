//! The element messages posted on the bus: `whisperencnpu-timing` per window,
//! `whisperencnpu-segment` per transcribed segment and, in low-latency mode,
//! `whisperencnpu-partial` for the text not yet committed.

use std::time::Duration;

use crate::npu::{BackendKind, DeviceCounters, Precision};
use crate::transcribe::Segment;

fn clock_time(d: Duration) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(d.as_nanos() as u64)
}

/// What one window cost.
pub(super) struct TimingReport {
    pub index: u64,
    pub pts: gst::ClockTime,
    /// Real audio in the window (less than a window only at the end of the stream).
    pub audio: gst::ClockTime,
    pub mel: Duration,
    pub encoder: Duration,
    /// Waiting for other elements' windows to be encoded first (elements sharing a model).
    pub encoder_wait: Duration,
    /// Windows encoded in one pass with this one, across elements sharing the model.
    pub encoder_batch: usize,
    /// Transcription mode only.
    pub decoder: Option<Duration>,
    /// Transcription mode only: streams' token steps per decoder call, seen from this window's.
    pub decoder_batch: Option<f64>,
    pub processing: Duration,
    pub backend: BackendKind,
    pub precision: Precision,
    /// The NPU's launches and reconfigurations for the window's encoder pass (NPU only).
    pub npu: Option<DeviceCounters>,
    /// Low latency: how far the step's caption was moved later so that it is not late at a
    /// synchronising sink (its words were committed later than the latency allows).
    pub caption_moved: Option<gst::ClockTime>,
}

impl TimingReport {
    pub fn message(&self) -> gst::Structure {
        let processing = clock_time(self.processing);
        let mut s = gst::Structure::builder("whisperencnpu-timing")
            .field("window", self.index)
            .field("pts", self.pts)
            .field("audio-duration", self.audio)
            .field("mel-time", clock_time(self.mel))
            .field("encoder-time", clock_time(self.encoder))
            .field("encoder-wait", clock_time(self.encoder_wait))
            .field("encoder-batch", self.encoder_batch as u32)
            .field("processing-time", processing)
            .field(
                "realtime-factor",
                self.audio.nseconds() as f64 / processing.nseconds().max(1) as f64,
            )
            .field("backend", self.backend.nick())
            .field("precision", self.precision.nick())
            .build();
        if let Some(decoder) = self.decoder {
            s.set("decoder-time", clock_time(decoder));
        }
        if let Some(batch) = self.decoder_batch {
            s.set("decoder-batch", batch);
        }
        if let Some(npu) = self.npu {
            s.set("npu-launches", npu.launches);
            s.set("npu-reconfigurations", npu.reconfigurations);
        }
        if let Some(moved) = self.caption_moved {
            s.set("caption-moved", moved);
        }
        s
    }
}

/// `words` is an array of `word` structures (`text`, `start`, `end`), in stream time like the
/// segment's own `start` and `end`, when the model can align words.
pub(super) fn segment_message(
    segment: &Segment,
    text: &str,
    start: gst::ClockTime,
    end: gst::ClockTime,
    at: impl Fn(u64) -> gst::ClockTime,
) -> gst::Structure {
    let words = gst::Array::new(segment.words.iter().map(|w| {
        gst::Structure::builder("word")
            .field("text", w.text.as_str())
            .field("start", at(w.start_sample).clamp(start, end))
            .field("end", at(w.end_sample).clamp(start, end))
            .build()
    }));
    gst::Structure::builder("whisperencnpu-segment")
        .field("text", text)
        .field("start", start)
        .field("end", end)
        .field("avg-logprob", segment.avg_logprob)
        .field("no-speech-prob", segment.no_speech_prob)
        .field("language", segment.language.as_deref().unwrap_or("en"))
        .field("words", words)
        .build()
}

/// After a low-latency step, for applications that show interim text: `text` is the hypothesis
/// not yet committed (it may still change) from `start` to `end`; `committed` the words already
/// committed (pushed downstream) in the segment still open.
pub(super) fn partial_message(
    text: &str,
    committed: &str,
    start: gst::ClockTime,
    end: gst::ClockTime,
) -> gst::Structure {
    gst::Structure::builder("whisperencnpu-partial")
        .field("text", text)
        .field("committed", committed)
        .field("start", start)
        .field("end", end)
        .build()
}
