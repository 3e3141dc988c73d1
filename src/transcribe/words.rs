//! Where each word of the emitted segments is: the window's text aligned with its audio through
//! the decoder's alignment heads (OpenAI's word timestamps, [`super::alignment`]).

use super::loudness::Span;
use super::options::{Task, Word, SAMPLES_PER_TIMESTAMP};
use super::{alignment, text, Emit, Transcriber};
use crate::mel::SAMPLE_RATE;
use crate::model::tokenizer::Tokenizer;

impl Transcriber {
    /// Sets where the words of each segment of `emit` are, by aligning all the text of the
    /// window's decoded `tokens` with its audio (`n` samples from `window_start`) through the
    /// decoder's alignment heads on the window's cross-attention keys and values (`self.cross`).
    /// The segments are, in order, pieces of `tokens[from..]`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn align_words(
        &mut self,
        language: Option<u32>,
        window_start: u64,
        n: usize,
        tokens: &[u32],
        from: usize,
        emit: &mut [Emit],
    ) {
        let heads = &self.alignment_heads;
        if heads.is_empty() || emit.is_empty() {
            return;
        }
        let is_text = |t: &&u32| self.tokenizer.is_text(**t);
        let text: Vec<u32> = tokens.iter().filter(is_text).copied().collect();
        if text.is_empty() || text.len() + 8 > self.decoder.n_text_ctx() {
            return;
        }
        let sp = self.tokenizer.special();
        let mut seq = vec![sp.sot];
        if self.tokenizer.is_multilingual() {
            seq.extend(language);
            let task = match self.options.task {
                Task::Transcribe => sp.transcribe,
                Task::Translate => sp.translate,
            };
            seq.extend(task);
        }
        let prefix = seq.len();
        seq.push(sp.no_timestamps);
        seq.extend_from_slice(&text);
        seq.push(sp.eot);
        let scores = self
            .decoder
            .cross_attention_scores_in(&mut self.kv, &self.cross, &seq, heads);
        let positions = n / SAMPLES_PER_TIMESTAMP as usize;
        let Some(starts) = alignment::token_positions(&scores, prefix, text.len(), positions)
        else {
            return;
        };
        let at = |p: usize| window_start + p as u64 * SAMPLES_PER_TIMESTAMP;
        let mut cursor = tokens[..from.min(tokens.len())]
            .iter()
            .filter(is_text)
            .count();
        for e in emit.iter_mut() {
            let seg: Vec<u32> = e.tokens.iter().filter(is_text).copied().collect();
            if seg.is_empty() {
                continue;
            }
            let Some(i) = text[cursor.min(text.len())..]
                .windows(seg.len())
                .position(|w| w == seg.as_slice())
            else {
                continue;
            };
            let first = cursor + i;
            cursor = first + seg.len();
            // The end of the text is where <|endoftext|> takes over, which the attention places
            // late (it spreads over what follows); the timestamp is better there.
            let end = if cursor == text.len() {
                e.end
            } else {
                at(starts[cursor])
            };
            e.words = Some(Span::new(at(starts[first]), end));
            e.word_list = words_of(
                &self.tokenizer,
                &text[first..cursor],
                &starts[first..=cursor],
                &at,
                end,
            );
            {
                log::debug!(
                    target: super::LOG_TARGET,
                    "  words at {:.2}-{:.2} s (timestamps {:.2}-{:.2} s)",
                    at(starts[first]) as f64 / f64::from(SAMPLE_RATE),
                    at(starts[cursor]) as f64 / f64::from(SAMPLE_RATE),
                    e.start as f64 / f64::from(SAMPLE_RATE),
                    e.end as f64 / f64::from(SAMPLE_RATE)
                );
            }
        }
    }
}

/// Whether a text token begins a word of [`words_of`]: it begins with a space and has letters or
/// digits (tokens without them stay with the word before them).
fn starts_word(tokenizer: &Tokenizer, token: u32) -> bool {
    let text = String::from_utf8_lossy(tokenizer.token_bytes(token));
    text.starts_with(' ') && text.chars().any(char::is_alphanumeric)
}

/// Splits aligned text tokens into words: a word starts at a token that begins with a space
/// (or the first), and tokens without letters or digits stay with the word before them.
/// `starts` has one more entry than `tokens` (where the last ends); the last word ends at `end`.
fn words_of(
    tokenizer: &Tokenizer,
    tokens: &[u32],
    starts: &[usize],
    at: &dyn Fn(usize) -> u64,
    end: u64,
) -> Vec<Word> {
    /// A word's bytes and its tokens `first..end` of `tokens`.
    struct TokenWord {
        bytes: Vec<u8>,
        first: usize,
        end: usize,
    }
    let mut words: Vec<TokenWord> = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        let bytes = tokenizer.token_bytes(t);
        match words.last_mut() {
            Some(w) if !starts_word(tokenizer, t) => {
                w.bytes.extend_from_slice(bytes);
                w.end = i + 1;
            }
            _ => words.push(TokenWord {
                bytes: bytes.to_vec(),
                first: i,
                end: i + 1,
            }),
        }
    }
    words
        .into_iter()
        .map(|w| Word {
            text: String::from_utf8_lossy(&w.bytes).trim().to_string(),
            start_sample: at(starts[w.first]),
            end_sample: if w.end == tokens.len() {
                end
            } else {
                at(starts[w.end])
            },
        })
        .collect()
}

/// Cuts the aligned segment `e` of the window starting at `window_start` after its last sentence
/// that has a word after it, and returns where the cut is (the first word left out starts there);
/// `None` (and `e` as it was) when no sentence ends before its last word, or the cut would be
/// before `not_before` (the stream must move on).
///
/// A window's only segment can run to the window's end, its last sentence cut there: in the
/// whole-second timestamp mode long joins fall into, the model closes it with a timestamp seconds
/// early and finishes the sentence with words that are not there ("The sauce on the huge river is
/// very very sour.", the next window saying it again as it is). The sentences before the cut are
/// kept; the rest is decoded again from the next window, which starts at the cut.
pub(super) fn cut_after_last_sentence(
    tokenizer: &Tokenizer,
    e: &mut Emit,
    window_start: u64,
    not_before: u64,
) -> Option<u64> {
    let last = e.word_list.len().checked_sub(1)?;
    let keep = e.word_list[..last]
        .iter()
        .rposition(|w| text::sentence_end(&w.text))?
        + 1;
    let cut = e.word_list[keep].start_sample;
    if cut < not_before {
        return None;
    }
    // The token where word `keep` starts: the first text token starts the first word whatever
    // it is, as in `words_of`.
    let mut seen = 0;
    let at = e.tokens.iter().position(|&t| {
        let starts = tokenizer.is_text(t) && (seen == 0 || starts_word(tokenizer, t));
        seen += usize::from(starts);
        starts && seen == keep + 1
    })?;
    e.tokens.truncate(at);
    let steps = (cut.saturating_sub(window_start) / SAMPLES_PER_TIMESTAMP) as u32;
    e.tokens.push(tokenizer.timestamp_begin() + steps);
    e.word_list.truncate(keep);
    e.end = cut;
    e.words = e.words.map(|w| Span::new(w.start, cut));
    Some(cut)
}
