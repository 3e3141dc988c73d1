//! The look-back of the stream's last window: the last full 10.24 s are decoded (the model does
//! much better with a full window than with a short one and padding), and only the words after
//! those already emitted are kept, found by aligning the decoded words with the emitted ones.

use super::options::SAMPLES_PER_TIMESTAMP;
use super::repeats::common_in_order_to_prefixes;
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
    /// Fewest edits between some target[i..] (i <= free) and the decoded words before `decoded`;
    /// of equals, the one with the most words alike in order (the same audio decoded twice,
    /// heard a little differently: "can do soot on the smooth planks" and "can use lid on the
    /// smooth planks" are two edits, as are the two words "smooth planks" and no decoded word),
    /// then the fewest decoded words.
    struct Best {
        cost: usize,
        decoded: usize,
        matched: usize,
        alike: usize,
    }
    let mut best: Option<Best> = None;
    for i in 0..=free.min(target.len()) {
        let t = &target[i..];
        let row = text::edit_distance_to_prefixes(t, dw);
        let alike_row = common_in_order_to_prefixes(t, dw);
        for (j, (&c, &alike)) in row.iter().zip(&alike_row).enumerate() {
            if best.as_ref().is_some_and(|b| c > b.cost) {
                continue;
            }
            if best.as_ref().is_none_or(|b| {
                c < b.cost || alike > b.alike || (alike == b.alike && j < b.decoded)
            }) {
                best = Some(Best {
                    cost: c,
                    decoded: j,
                    matched: t.len(),
                    alike,
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
    // Emitted words overlap the window (it starts a second or more before the seek position),
    // yet none of them matched the decoded text: it is either the model saying something else
    // (earlier text again) or the same words heard differently, which would then be said twice
    // ("monastery of Subeacco near Rome" and "On a story of Subecko near Rome",
    // long_ljspeech_LJ001-0017_0032.wav). Neither can be told apart here: not aligned.
    if !target.is_empty() && j == 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Words "a" to "l" are ids 0..12, "." is 12; then <|endoftext|>, <|startoftranscript|>,
    /// <|notimestamps|>; timestamps from id 16.
    fn tokenizer() -> Tokenizer {
        let mut vocab = serde_json::Map::new();
        for (i, c) in ('A'..='L').enumerate() {
            vocab.insert(format!("Ġ{c}"), i.into());
        }
        vocab.insert(".".into(), 12.into());
        let json = serde_json::json!({
            "model": {"type": "BPE", "vocab": vocab, "merges": []},
            "added_tokens": [
                {"id": 13, "content": "<|endoftext|>", "special": true},
                {"id": 14, "content": "<|startoftranscript|>", "special": true},
                {"id": 15, "content": "<|notimestamps|>", "special": true}
            ]
        });
        Tokenizer::from_json(&json, 1700).unwrap()
    }

    const SECOND: u64 = SAMPLE_RATE as u64;

    /// Tokens of "<|t0|> words <|t1|><|t1|> words <|t2|>" (times in seconds, words as letters).
    fn decoded(first: &str, boundary: f64, second: &str, end: f64) -> Vec<u32> {
        let ts = |s: f64| 16 + (s / 0.02).round() as u32;
        let word = |c: char| c.to_ascii_uppercase() as u32 - 'A' as u32;
        let mut t = vec![ts(0.0)];
        t.extend(first.chars().filter(|c| *c != ' ').map(word));
        t.extend([12, ts(boundary), ts(boundary)]);
        t.extend(second.chars().filter(|c| *c != ' ').map(word));
        t.extend([12, ts(end)]);
        t
    }

    #[test]
    fn new_words_found_after_the_emitted_ones() {
        struct Case {
            name: &'static str,
            /// The emitted segment (letters as words), from 0 s to 2 s; the window starts at 1 s.
            emitted: &'static str,
            /// What the look-back decodes: a first segment to 1 s, then a second to 4 s.
            first: &'static str,
            second: &'static str,
            /// The words kept as new; `None`: not aligned.
            new: Option<&'static str>,
        }
        let table = [
            Case {
                name: "the same words again",
                emitted: "a b c d e f g h i",
                first: "c d e f g h i",
                second: "j k l",
                new: Some("j k l"),
            },
            Case {
                // Two words heard differently cost two edits, as would the last two emitted
                // words with no decoded word: the reading that matches five words wins.
                name: "the same audio heard a little differently",
                emitted: "a b c d e f g h i",
                first: "c j k f g h i",
                second: "j k l",
                new: Some("j k l"),
            },
            Case {
                name: "other words altogether",
                emitted: "a b c d e f g h i",
                first: "j k l j k l j",
                second: "k l",
                new: None,
            },
        ];
        let tok = tokenizer();
        for case in table {
            let recent = [RecentSegment {
                start: 0,
                end: 2 * SECOND,
                words: case.emitted.split(' ').map(String::from).collect(),
            }];
            let tokens = decoded(case.first, 1.0, case.second, 4.0);
            let got = align_lookback(
                &tok,
                &recent,
                2 * SECOND,
                SECOND,
                10 * SECOND as usize,
                &tokens,
            )
            .map(|m| {
                let toks: Vec<u32> = m.segments.iter().flat_map(|s| s.tokens.clone()).collect();
                text::Words::from_tokens(&tok, &toks).words.join(" ")
            });
            assert_eq!(got.as_deref(), case.new, "{}", case.name);
        }
    }
}
