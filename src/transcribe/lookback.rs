//! The look-back of the stream's last window: the last full 10.24 s are decoded (the model does
//! much better with a full window than with a short one and padding), and only the words after
//! those already emitted are kept, found by aligning the decoded words with the emitted ones.

use super::options::SAMPLES_PER_TIMESTAMP;
use super::segments::{has_text, plausible, split_segments, END_SLACK};
use super::{text, Emit};
use crate::mel::SAMPLE_RATE;
use crate::model::tokenizer::Tokenizer;

/// Share of the emitted words that may differ in the look-back's decoding when the timestamps at
/// the boundary agree with the seek position ...
const EDIT_SHARE_BOUNDARY_AGREES: f64 = 0.5;
/// ... and when they do not.
const EDIT_SHARE: f64 = 0.3;
/// Words of the first overlapping segment assumed before the window on top of its share by time.
const EXTRA_FREE_WORDS: usize = 2;

/// An emitted segment a look-back may overlap (stream samples, by its timestamp tokens).
#[derive(Clone, Debug)]
pub(super) struct RecentSegment {
    pub start: u64,
    pub end: u64,
    pub words: Vec<String>,
}

/// What a look-back decoding adds.
pub(super) struct LookbackMatch {
    /// The segments after the words already emitted.
    pub segments: Vec<Emit>,
    /// Index in the decoded tokens where the new part begins.
    pub new_from: usize,
}

/// The segments of a look-back decode (`tokens` of the window from `start`, `n` samples; the seek
/// position at `seek`) that come after the words already emitted (`recent`): the decoded words are
/// aligned with the emitted ones that overlap the window (the first of which may begin before it).
/// `None` when they do not match well.
pub(super) fn align_lookback(
    tok: &Tokenizer,
    recent: &[RecentSegment],
    seek: u64,
    start: u64,
    n: usize,
    tokens: &[u32],
) -> Option<LookbackMatch> {
    let overlap: Vec<&RecentSegment> = recent.iter().filter(|r| r.end > start).collect();
    let mut target: Vec<String> = Vec::new();
    let mut free = 0;
    for (i, r) in overlap.iter().enumerate() {
        if i == 0 && r.start < start {
            // Roughly this many of its words lie before the window.
            let frac = (start - r.start) as f64 / (r.end - r.start).max(1) as f64;
            free = ((frac * r.words.len() as f64).ceil() as usize + EXTRA_FREE_WORDS)
                .min(r.words.len());
        }
        target.extend(r.words.iter().cloned());
    }
    let decoded = text::Words::from_tokens(tok, tokens);
    let dw = &decoded.words;
    /// Fewest edits between some target[i..] (i <= free) and the decoded words before `decoded`.
    struct Best {
        cost: usize,
        decoded: usize,
        matched: usize,
    }
    let mut best: Option<Best> = None;
    for i in 0..=free.min(target.len()) {
        let t = &target[i..];
        let row = text::edit_distance_to_prefixes(t, dw);
        for (j, &c) in row.iter().enumerate() {
            if best
                .as_ref()
                .is_none_or(|b| c < b.cost || (c == b.cost && j < b.decoded))
            {
                best = Some(Best {
                    cost: c,
                    decoded: j,
                    matched: t.len(),
                });
            }
        }
    }
    let best = best?;
    let j = best.decoded;
    let k = decoded.token_index.get(j).copied().unwrap_or(tokens.len());
    let rest = &tokens[k..];
    // The timestamps just before the new part (the end of the previous segment and the start
    // of the next) are near the seek position when the alignment is right: that allows more
    // differences between the two decodings of the same words.
    let boundary_agrees = tokens[..k]
        .iter()
        .rev()
        .take_while(|&&t| tok.is_timestamp(t))
        .any(|&t| {
            let ts = u64::from(t - tok.timestamp_begin());
            (start + ts * SAMPLES_PER_TIMESTAMP).abs_diff(seek) <= u64::from(SAMPLE_RATE)
        });
    let share = if boundary_agrees {
        EDIT_SHARE_BOUNDARY_AGREES
    } else {
        EDIT_SHARE
    };
    let allowed = ((best.matched as f64) * share).floor().max(1.0) as usize;
    log::debug!(
        target: super::LOG_TARGET,
        "  look-back: {} emitted word(s) overlap, {} decoded; {} edit(s) at word {j}",
        target.len(),
        dw.len(),
        best.cost
    );
    if !target.is_empty() && best.cost > allowed {
        return None;
    }
    let max_ts = (n as u64 / SAMPLES_PER_TIMESTAMP) as u32;
    let segments = plausible(tok, split_segments(tok, rest))
        .into_iter()
        .filter(|s| has_text(tok, s) && s.start + END_SLACK < max_ts)
        .map(|s| {
            let at = |ts: u32| start + u64::from(ts) * SAMPLES_PER_TIMESTAMP;
            let begin = at(s.start).max(seek);
            Emit {
                start: begin,
                end: at(s.end.unwrap_or(max_ts)).max(begin),
                tokens: s.tokens,
                words: None,
                word_list: Vec::new(),
            }
        })
        .collect();
    Some(LookbackMatch {
        segments,
        new_from: k,
    })
}
