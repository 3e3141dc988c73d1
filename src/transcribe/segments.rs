//! The segment rules: a decoded window split into segments at its timestamps, which of them are
//! kept, and where the next window starts.

use super::options::SAMPLES_PER_TIMESTAMP;
use super::text;
use crate::mel::TIMESTAMP_STEP;
use crate::model::tokenizer::Tokenizer;

/// A segment of the last window that starts less than this many timestamp steps (0.1 s) before the
/// end of the audio is dropped: no word fits in it.
pub(super) const END_SLACK: u32 = 5;
/// Words a second no speaker says (fast speech is ~5): a segment saying more is hallucinated.
const MAX_WORDS_PER_SECOND: f64 = 10.0;
/// Words allowed on top of that, for short segments.
const WORDS_SLACK: f64 = 3.0;

/// A piece of a decoded window: `<|start|> text <|end|>`, or a last one left open.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct RawSegment {
    pub start: u32,
    pub end: Option<u32>,
    /// Tokens from the start timestamp to the end timestamp, both included.
    pub tokens: Vec<u32>,
}

/// The segments of a window to emit, and where the next window starts.
#[derive(Debug)]
pub(super) struct Selection {
    pub segments: Vec<RawSegment>,
    /// Timestamp steps from the window's start.
    pub next_seek: u32,
}

/// Splits sampled tokens into segments at timestamps.
pub(super) fn split_segments(tok: &Tokenizer, tokens: &[u32]) -> Vec<RawSegment> {
    let tb = tok.timestamp_begin();
    let mut out: Vec<RawSegment> = Vec::new();
    let mut cur: Option<RawSegment> = None;
    for &t in tokens {
        if tok.is_timestamp(t) {
            let ts = t - tb;
            match cur.take() {
                Some(mut c) if c.tokens.iter().any(|&x| tok.is_text(x)) => {
                    c.end = Some(ts);
                    c.tokens.push(t);
                    out.push(c);
                }
                // A start after a start (no text between): the later one counts.
                _ => {
                    cur = Some(RawSegment {
                        start: ts,
                        end: None,
                        tokens: vec![t],
                    })
                }
            }
        } else if tok.is_text(t) {
            cur.get_or_insert_with(|| RawSegment {
                start: out.last().and_then(|s| s.end).unwrap_or(0),
                end: None,
                tokens: Vec::new(),
            })
            .tokens
            .push(t);
        }
    }
    if let Some(c) = cur {
        out.push(c);
    }
    out
}

/// Whether a segment has text (not only timestamps).
pub(super) fn has_text(tok: &Tokenizer, s: &RawSegment) -> bool {
    s.tokens.iter().any(|&t| tok.is_text(t))
}

/// Segments that say more than a person can in their time are hallucinated: nothing from the
/// first of them on is kept.
pub(super) fn plausible(tok: &Tokenizer, raw: Vec<RawSegment>) -> Vec<RawSegment> {
    let n = raw
        .iter()
        .position(|s| too_fast(tok, s))
        .unwrap_or(raw.len());
    if n < raw.len() {
        log::debug!(
            target: super::LOG_TARGET,
            "  too many words a second from {:.2} s: {} segment(s) dropped",
            f64::from(raw[n].start) * TIMESTAMP_STEP,
            raw.len() - n
        );
    }
    raw.into_iter().take(n).collect()
}

/// More than 10 words a second (plus slack) between the segment's timestamps.
fn too_fast(tok: &Tokenizer, s: &RawSegment) -> bool {
    let Some(end) = s.end else {
        return false;
    };
    let words = text::Words::from_tokens(tok, &s.tokens).words.len();
    let seconds = f64::from(end.saturating_sub(s.start)) * TIMESTAMP_STEP;
    words as f64 > MAX_WORDS_PER_SECOND * seconds + WORDS_SLACK
}

/// Which segments of a window decoded from the seek position (`n` samples, `last` of the stream)
/// to emit, and where the next window starts. A segment ending within `edge_margin` seconds of
/// the end of a window that is not the last is held back.
pub(super) fn select_segments(
    tok: &Tokenizer,
    tokens: &[u32],
    n: usize,
    last: bool,
    edge_margin: f64,
) -> Selection {
    let raw = plausible(tok, split_segments(tok, tokens));
    let max_ts = (n as u64 / SAMPLES_PER_TIMESTAMP) as u32;
    let margin = (edge_margin / TIMESTAMP_STEP).round() as u32;
    let with_text = |v: Vec<RawSegment>| -> Vec<RawSegment> {
        v.into_iter().filter(|s| has_text(tok, s)).collect()
    };
    let selection = |segments, next_seek| Selection {
        segments,
        next_seek,
    };
    if last {
        // Not a segment starting at the very end of the audio (nothing can be in it).
        let v = with_text(raw)
            .into_iter()
            .filter(|s| s.start + END_SLACK < max_ts)
            .collect();
        return selection(v, max_ts);
    }
    let complete = |s: &&RawSegment| has_text(tok, s) && s.end.is_some();
    // Complete segments that end clear of the window's end: emitted; the rest is decoded again
    // from the next window, which starts where the last of them ends.
    let inside: Vec<RawSegment> = raw
        .iter()
        .filter(complete)
        .filter(|s| s.end.is_some_and(|e| e + margin <= max_ts))
        .cloned()
        .collect();
    if let Some(end) = inside.last().and_then(|s| s.end) {
        return selection(inside, end.max(1));
    }
    match raw.iter().find(|s| has_text(tok, s)) {
        // Nothing said: the whole window is used up.
        None => selection(Vec::new(), max_ts),
        // Speech starts a little into the window but runs past its end: start there.
        Some(first) if first.start > 0 => selection(Vec::new(), first.start),
        // Speech from the start to (nearly) the end of the window: emit the complete segments
        // (or the whole text if none is complete) and go on after them.
        Some(_) => {
            let done: Vec<RawSegment> = raw.iter().filter(complete).cloned().collect();
            match done.last().and_then(|s| s.end) {
                Some(end) if end > 0 => selection(done, end),
                _ => selection(with_text(raw), max_ts),
            }
        }
    }
}

/// How many of a window's selected segments to keep when those whose words (their aligned ends,
/// in `word_ends`; `None`: not aligned) run into the window's last `margin` samples before
/// `window_end` are held back from the end: never the first, so the stream moves on.
pub(super) fn kept_by_word_ends(word_ends: &[Option<u64>], window_end: u64, margin: u64) -> usize {
    let mut keep = word_ends.len();
    while keep > 1 && word_ends[keep - 1].is_some_and(|e| e + margin > window_end) {
        keep -= 1;
    }
    keep
}
