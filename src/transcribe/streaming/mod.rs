//! The low-latency transcriber: a 10.24 s window that slides with the live edge.
//!
//! Every step (about 0.5 s of new audio) the window ending at the live edge is encoded and the
//! text not yet committed is decoded again:
//! - the window starts at a committed word (a little before it, not before the word before it
//!   ends) so that it is at most 10.24 s long; the committed words inside it are the decoder's
//!   forced prefix, the committed text before it the `<|startofprev|>` prompt. Decoding only
//!   continues the committed text, so nothing is said twice by construction;
//! - the last step's uncommitted words are a draft of the text: the pass that reads the prefix
//!   reads them too, and every draft token the decoder would pick next costs no token-by-token
//!   pass of its own (speculative decoding; the text is the greedy decoding's);
//! - where the hypothesis' words are comes from the decoder's alignment heads over prefix and
//!   hypothesis ([`super::alignment`]), narrowed to loud audio as the window decoding does;
//! - [`commit::CommitPolicy`] decides which words are final (two passes agree, a pause, or a
//!   forced commit when a word gets old); committed words are never retracted;
//! - hallucination guards that leave real speech alone: no decoding while the uncommitted audio
//!   is quiet, Whisper's no-speech rule on the step, a loop in the new text cut off, words
//!   the alignment puts after the speech has ended (over silence) are not kept, and the text of
//!   a short window decoded without the forced prefix (a stall) counts only when the decoder is
//!   sure of it.
//!
//! A step always covers all the audio up to the live edge, so steps merge when processing falls
//! behind and the delay stays bounded.

use std::time::{Duration, Instant};

use ndarray::s;

use super::decoding::{self, DecodeParams};
use super::{
    alignment, text, Segment, Task, TranscribeTiming, Transcriber, Word, MAX_PROMPT_TOKENS,
    SAMPLES_PER_TIMESTAMP,
};
use crate::mel::{SAMPLE_RATE, WINDOW_SAMPLES};
use crate::model::decoder::{batch, CrossKv};

pub mod commit;

use commit::{CommitBounds, CommitPolicy, CommitReason, TimedWord};

/// Before a committed word that starts the window, this much audio is kept (seconds) when the word
/// before it ends earlier: the aligned start of a word is often a little late.
const WINDOW_LEAD: f64 = 0.2;
/// Less new audio than this (seconds) after the committed text holds no word.
const MIN_NEW_AUDIO: f64 = 0.1;
/// A hypothesis word starting this long (seconds) after the last speech is text over silence.
const AFTER_SPEECH: f64 = 0.3;
/// Tokens decoded at most: a floor plus a rate over the uncommitted audio (fast speech is about
/// 5 words, 7 tokens a second).
const TOKENS_FLOOR: f64 = 10.0;
const TOKENS_PER_SECOND: f64 = 10.0;

/// `<|startofprev|>`, `<|startoftranscript|>`, language, task, `<|notimestamps|>`, and one to
/// spare: the most tokens a decoding adds to prompt and prefix.
const START_TOKENS: usize = 6;
/// Draft tokens checked in the batched pass at most (a step's uncommitted words are rarely more
/// than 2 s of speech, about 15 tokens).
const MAX_DRAFT_TOKENS: usize = 32;

/// How the streaming transcriber steps and commits.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamOptions {
    /// New audio that makes a step (the window slides by this much at least).
    pub step: Duration,
    /// Silence up to the live edge that commits the whole hypothesis and closes its segment.
    pub pause: Duration,
    /// A word that started this long before the live edge is committed whatever the passes say.
    pub force_after: Duration,
    /// Two passes agreeing commit a word only once it ended this long before the live edge.
    pub min_age: Duration,
    /// Tokens of committed text before the window given as prompt (at most 223).
    pub prompt_tokens: usize,
    /// Agreement commits a word only when the decoder gave it at least this probability (the
    /// product of its tokens'); 0 commits whatever two passes agree on.
    pub min_word_prob: f64,
    /// A word given at least this probability is committed without a second pass agreeing
    /// (above 1: never).
    pub alone_word_prob: f64,
    /// Each step first checks the last step's uncommitted words as a draft of its text, in the
    /// pass that reads the prefix (speculative decoding: fewer token-by-token passes, the same
    /// text).
    pub draft: bool,
}

/// Defaults measured with `examples/stream_delay --processing 0.3` on `../shared/audio/real` and
/// `eval` (base; errors real + eval, 728 + 396 words, its own normaliser; mean caption delay on
/// `eval/long-form-mixed.wav`):
/// - forcing after 2 s rather than 1.5 s lost fewer words on accented and spontaneous speech
///   (words that never agree are forced with more audio after them);
/// - waiting 0.5 s rather than 0.3 s before agreeing changed nothing;
/// - agreement only on words the decoder gave a probability of 0.6 or more (a word it guesses,
///   two passes guess alike): 77 + 71 errors against 84 + 82 without, at 1.90 s against 1.63 s;
///   0.5: 81 + 71; 0.7: 76 + 72 at 1.97 s. Letting unsure words agree once they ended 0.9 s
///   before the edge, rather than waiting for their forced commit, lost most of the gain;
/// - a word of probability 0.95 or more needs no second pass: 74 + 72 against 76 + 72 at 0.7,
///   0.01 to 0.04 s sooner;
/// - forcing after 1.6 s rather than 1.8 s then: 78 + 75 errors at 1.82 s, and 0.2 s less in the
///   latency bound; live at real time 1.93 s against 2.02 s (the issue asks at most 2).
impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            step: Duration::from_millis(500),
            pause: Duration::from_millis(500),
            force_after: Duration::from_millis(1600),
            min_age: Duration::from_millis(300),
            prompt_tokens: 96,
            min_word_prob: 0.6,
            alone_word_prob: 0.95,
            draft: true,
        }
    }
}

impl StreamOptions {
    /// The longest delay from a word's start to its commit that the policy allows when one step
    /// takes `processing`: a word is forced once it is `force_after` old; the step that sees that
    /// starts at most a step (or, behind, one processing time) later and takes `processing`.
    pub fn delay_bound(&self, processing: Duration) -> Duration {
        self.delay_bound_after(processing, processing)
    }

    /// [`Self::delay_bound`] when the step before the one that commits took `previous` (the live
    /// edge moved by a step, or by that processing if it took longer) and the committing one
    /// `processing`.
    pub fn delay_bound_after(&self, previous: Duration, processing: Duration) -> Duration {
        self.force_after + self.step.max(previous) + processing
    }
}

/// The uncommitted hypothesis after a step (interim text).
#[derive(Clone, Debug, PartialEq)]
pub struct Partial {
    pub text: String,
    pub start_sample: u64,
    pub end_sample: u64,
}

/// What one step gave.
#[derive(Clone, Debug, Default)]
pub struct StepResult {
    /// Newly committed words, in order (never retracted, never said again).
    pub committed: Vec<Word>,
    /// Segments closed by a sentence end or a pause (their words were committed in this step or
    /// before).
    pub closed: Vec<Segment>,
    /// The uncommitted hypothesis after this step.
    pub partial: Option<Partial>,
    /// Stream sample up to which nothing more will be said.
    pub settled: u64,
    /// The live edge this step saw (the end of the audio decoded).
    pub live_edge: u64,
    /// Why the words were committed (`None`: nothing committed).
    pub reason: Option<CommitReason>,
    pub timing: TranscribeTiming,
}

/// A committed word with its tokens (for the prefix and the prompt of later steps).
#[derive(Clone, Debug)]
struct Committed {
    word: Word,
    tokens: Vec<u32>,
}

/// A word of a hypothesis.
#[derive(Clone, Debug)]
struct HypWord {
    tokens: Vec<u32>,
    key: String,
    start: u64,
    end: u64,
    /// Sum of its tokens' log-probabilities.
    logprob: f64,
}

/// The segment being filled with committed words.
#[derive(Clone, Debug, Default)]
struct OpenSegment {
    words: Vec<Word>,
    tokens: Vec<u32>,
    /// Average log-probability and no-speech probability of the steps that committed its words.
    logprobs: Vec<f64>,
    no_speech: Vec<f64>,
}

/// One decoding pass at the live edge.
struct Pass {
    words: Vec<HypWord>,
    avg_logprob: f64,
    no_speech_prob: f64,
    /// The text ends in a sentence end before the first hypothesis word (punctuation the model
    /// added to the committed text).
    closes_before: bool,
    /// The language token decoded with (multilingual models).
    language: Option<u32>,
}

/// Streaming transcription at the live edge (issue 9's `low` latency mode).
pub struct StreamingTranscriber {
    core: Transcriber,
    options: StreamOptions,
    policy: CommitPolicy,
    /// Stream sample of the first sample of this stream (after a reset).
    stream_start: u64,
    /// The live edge at the last step.
    last_step: u64,
    /// Committed words still in reach of a window or the prompt.
    committed: Vec<Committed>,
    /// End of the last committed word (nothing is said before it any more).
    committed_end: u64,
    settled: u64,
    open: OpenSegment,
    /// The last step's uncommitted words, as tokens: the draft the next step checks first.
    draft: Vec<u32>,
}

impl std::fmt::Debug for StreamingTranscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingTranscriber")
            .field("options", &self.options)
            .field("pushed_end", &self.pushed_end())
            .field("committed_end", &self.committed_end)
            .finish()
    }
}

fn samples(d: Duration) -> u64 {
    (d.as_secs_f64() * f64::from(SAMPLE_RATE)).round() as u64
}

fn seconds_to_samples(s: f64) -> u64 {
    (s * f64::from(SAMPLE_RATE)).round() as u64
}

impl StreamingTranscriber {
    /// Streams with `core`'s model and options; its pending audio is dropped and the stream
    /// continues at its `pushed_end`.
    pub fn new(mut core: Transcriber, options: StreamOptions) -> Self {
        let start = core.pushed_end();
        core.reset(start);
        let policy = CommitPolicy::new(CommitBounds {
            pause: samples(options.pause),
            force_after: samples(options.force_after),
            min_age: samples(options.min_age),
            min_prob: options.min_word_prob,
            alone_prob: options.alone_word_prob,
        });
        StreamingTranscriber {
            core,
            options,
            policy,
            stream_start: start,
            last_step: start,
            committed: Vec::new(),
            committed_end: start,
            settled: start,
            open: OpenSegment::default(),
            draft: Vec::new(),
        }
    }

    /// The transcriber back, reset to continue at [`pushed_end`](Self::pushed_end) (uncommitted
    /// text is dropped: call [`finish`](Self::finish) first to keep it).
    pub fn into_inner(mut self) -> Transcriber {
        let end = self.pushed_end();
        self.core.reset(end);
        self.core
    }

    pub fn options(&self) -> &StreamOptions {
        &self.options
    }

    pub fn transcriber(&self) -> &Transcriber {
        &self.core
    }

    /// Appends audio (16 kHz mono, [-1, 1]).
    pub fn push_audio(&mut self, samples: &[f32]) {
        self.core.push_audio(samples);
    }

    /// Appends `n` samples of silence (a GAP).
    pub fn push_silence(&mut self, n: usize) {
        self.core.push_silence(n);
    }

    /// Stream sample just past the audio pushed so far (the live edge).
    pub fn pushed_end(&self) -> u64 {
        self.core.pushed_end()
    }

    /// Whether a step's worth of new audio came since the last step.
    pub fn wants_step(&self) -> bool {
        self.pushed_end() >= self.last_step + samples(self.options.step)
    }

    /// The longest delay from a word's start to its commit that the policy allows when one step
    /// takes `processing`: a word is forced once it is `force_after` old; the step that sees that
    /// starts at most a step (or, behind, one processing time) later and takes `processing`.
    pub fn delay_bound(&self, processing: Duration) -> Duration {
        self.options.delay_bound(processing)
    }

    /// One pass at the live edge: decodes what is not committed yet and commits what the policy
    /// says.
    pub fn step(&mut self) -> StepResult {
        self.pass(false)
    }

    /// End of stream: decodes the rest and commits all of it, closing the last segment. The
    /// transcriber is then ready for a stream continuing at [`pushed_end`](Self::pushed_end).
    pub fn finish(&mut self) -> StepResult {
        let out = self.pass(true);
        let end = self.pushed_end();
        self.reset(end);
        out
    }

    /// Drops all audio, text and context: the next sample pushed is stream sample `start_sample`.
    pub fn reset(&mut self, start_sample: u64) {
        self.core.reset(start_sample);
        self.policy.reset();
        self.stream_start = start_sample;
        self.last_step = start_sample;
        self.committed.clear();
        self.committed_end = start_sample;
        self.settled = start_sample;
        self.open = OpenSegment::default();
        self.draft.clear();
    }

    /// Where the window ending at `edge` starts, and the index of the first committed word in it.
    fn window_start(&self, edge: u64) -> (u64, usize) {
        let earliest = edge
            .saturating_sub(WINDOW_SAMPLES as u64)
            .max(self.core.buffer_start)
            .max(self.stream_start);
        let lead = seconds_to_samples(WINDOW_LEAD);
        for (i, c) in self.committed.iter().enumerate() {
            let before = match i {
                0 => self.stream_start,
                _ => self.committed[i - 1].word.end_sample,
            };
            let at = c.word.start_sample.saturating_sub(lead).max(before);
            if at >= earliest {
                return (at, i);
            }
        }
        (
            earliest.max(self.committed_end.min(edge)),
            self.committed.len(),
        )
    }

    fn pass(&mut self, at_end: bool) -> StepResult {
        batch::take_tally();
        let mut out = self.decode_step(at_end);
        out.timing.decoder_batch = batch::take_tally().mean_batch();
        out
    }

    fn decode_step(&mut self, at_end: bool) -> StepResult {
        let edge = self.pushed_end();
        self.last_step = edge;
        let mut out = StepResult {
            live_edge: edge,
            settled: self.settled,
            ..StepResult::default()
        };
        let (ws, first_prefix) = self.window_start(edge);
        let n = (edge - ws) as usize;
        let from = self.committed_end.clamp(ws, edge);
        let loud = if n > 0 {
            self.core.loud_frames(ws, n)
        } else {
            Vec::new()
        };
        let sps = SAMPLES_PER_TIMESTAMP;
        let frame_of = |sample: u64| ((sample - ws) / sps) as usize;
        let new_loud = loud.get(frame_of(from)..).unwrap_or(&[]);
        let speech = new_loud.iter().position(|&l| l).map(|a| {
            let b = new_loud.iter().rposition(|&l| l).unwrap_or(a);
            (
                from + a as u64 * sps,
                (from + (b as u64 + 1) * sps).min(edge),
            )
        });
        let enough = edge >= from + seconds_to_samples(MIN_NEW_AUDIO);
        let quiet = speech.is_none() || self.core.is_quiet(from, (edge - from) as usize);
        let mut pass = if enough && !quiet {
            self.decode_pass(ws, n, first_prefix, edge - from, &loud, &mut out.timing)
        } else {
            None
        };
        // Speech older than a forced commit and no word for it: the forced prefix may have led
        // the decoder to end the text (the committed words' times a little off, say). Decode once
        // more from the end of the committed text, the committed words as prompt only.
        let stalled = pass.as_ref().is_none_or(|p| p.words.is_empty())
            && first_prefix < self.committed.len()
            && speech.is_some_and(|(a, _)| a + samples(self.options.force_after) <= edge);
        if stalled && enough && !quiet {
            let ws = from;
            let n = (edge - ws) as usize;
            let loud = self.core.loud_frames(ws, n);
            log::debug!(
                "streaming: no text for speech from {:.2} s: again without the forced prefix",
                speech.map_or(0.0, |s| s.0 as f64 / f64::from(SAMPLE_RATE))
            );
            let min_prob = self.options.min_word_prob;
            let last_key = self
                .committed
                .last()
                .map(|c| text::normalize_word(&c.word.text));
            pass = self
                .decode_pass(
                    ws,
                    n,
                    self.committed.len(),
                    edge - from,
                    &loud,
                    &mut out.timing,
                )
                .map(|mut p| {
                    // Not the last committed word again.
                    if p.words.first().map(|w| Some(&w.key)) == Some(last_key.as_ref()) {
                        p.words.remove(0);
                    }
                    // The short window is where Whisper invents ("Great.", "Thanks.", "Yeah."
                    // over the noise after a sentence): its text counts only when the decoder is
                    // sure of it on the whole (a word of it may be unsure: "It" before a clear
                    // sentence). Else the audio stays uncommitted; later passes see more of it.
                    if !p.words.is_empty() && p.avg_logprob < min_prob.ln() {
                        log::debug!(
                            "streaming: the short window's text is unsure (lp {:.2}): dropped",
                            p.avg_logprob
                        );
                        p.words.clear();
                    }
                    p
                });
        }
        let speech_end = if quiet { None } else { speech.map(|s| s.1) };
        let mut words = pass.as_ref().map(|p| p.words.clone()).unwrap_or_default();
        // Text the alignment puts over the silence after the speech: not heard, invented.
        if let Some(end) = speech_end {
            let limit = end + seconds_to_samples(AFTER_SPEECH);
            if let Some(k) = words.iter().position(|w| w.start >= limit) {
                log::debug!(
                    "streaming: {} word(s) after the speech ended at {:.2} s dropped",
                    words.len() - k,
                    end as f64 / f64::from(SAMPLE_RATE)
                );
                words.truncate(k);
            }
        }
        let timed: Vec<TimedWord> = words
            .iter()
            .map(|w| TimedWord {
                key: w.key.clone(),
                start: w.start,
                end: w.end,
                prob: w.logprob.exp(),
            })
            .collect();
        let decision = if at_end {
            self.policy.finish(&timed)
        } else {
            self.policy.decide(&timed, edge, speech_end)
        };
        out.reason = decision.reason;
        if pass.as_ref().is_some_and(|p| p.closes_before) && !self.open.words.is_empty() {
            out.closed.extend(self.close_segment());
        }
        let (avg_logprob, no_speech) = pass
            .as_ref()
            .map_or((0.0, 0.0), |p| (p.avg_logprob, p.no_speech_prob));
        for w in words.drain(..decision.count) {
            let start = w.start.max(self.committed_end).max(self.settled);
            let end = w.end.max(start);
            let text = self.core.tokenizer.decode(&w.tokens).trim().to_string();
            let word = Word {
                text: text.clone(),
                start_sample: start,
                end_sample: end,
            };
            self.committed_end = end;
            self.committed.push(Committed {
                word: word.clone(),
                tokens: w.tokens.clone(),
            });
            self.open.words.push(word.clone());
            self.open.tokens.extend_from_slice(&w.tokens);
            out.committed.push(word);
            if text::sentence_end(&text) {
                self.open.logprobs.push(avg_logprob);
                self.open.no_speech.push(no_speech);
                out.closed.extend(self.close_segment());
            }
        }
        if decision.count > 0 {
            self.open.logprobs.push(avg_logprob);
            self.open.no_speech.push(no_speech);
            self.core
                .lock_language(pass.as_ref().and_then(|p| p.language));
        }
        if matches!(
            decision.reason,
            Some(CommitReason::Pause) | Some(CommitReason::End)
        ) || at_end
            || (words.is_empty()
                && speech_end.is_none()
                && edge >= self.committed_end + samples(self.options.pause))
        {
            out.closed.extend(self.close_segment());
        }
        self.draft.clear();
        if self.options.draft {
            self.draft
                .extend(words.iter().flat_map(|w| w.tokens.iter().copied()));
        }
        if let (Some(first), Some(last)) = (words.first(), words.last()) {
            let tokens: Vec<u32> = words.iter().flat_map(|w| w.tokens.clone()).collect();
            let start = first.start.max(self.committed_end);
            out.partial = Some(Partial {
                text: self.core.tokenizer.decode(&tokens).trim().to_string(),
                start_sample: start,
                end_sample: last.end.max(start),
            });
        }
        // Nothing will be said before the committed text ends, nor (no hypothesis) before the
        // speech not yet transcribed starts, nor (no speech) before the live edge.
        let open_from = match (&out.partial, speech) {
            (Some(_), _) => self.committed_end,
            (None, Some((a, _))) if !at_end => a.saturating_sub(seconds_to_samples(WINDOW_LEAD)),
            _ => edge,
        };
        self.settled = self
            .settled
            .max(self.committed_end)
            .max(open_from.min(edge));
        out.settled = self.settled;
        self.forget_old(edge);
        out
    }

    /// Drops audio and committed words no later window can reach (the prompt's words stay).
    fn forget_old(&mut self, edge: u64) {
        let keep_from = edge.saturating_sub(WINDOW_SAMPLES as u64);
        let drop = keep_from.saturating_sub(self.core.buffer_start) as usize;
        let drop = drop.min(self.core.buffer.len());
        self.core.buffer.drain(..drop);
        self.core.buffer_start += drop as u64;
        // Keep the words of the window's reach plus enough before them for the prompt.
        let in_reach = self
            .committed
            .iter()
            .position(|c| c.word.start_sample >= keep_from)
            .unwrap_or(self.committed.len());
        let mut tokens = 0;
        let mut first = in_reach;
        while first > 0 && tokens < self.options.prompt_tokens.min(MAX_PROMPT_TOKENS) {
            first -= 1;
            tokens += self.committed[first].tokens.len();
        }
        self.committed.drain(..first);
    }

    /// Closes the open segment (if it has words).
    fn close_segment(&mut self) -> Option<Segment> {
        let open = std::mem::take(&mut self.open);
        let (first, last) = (open.words.first()?, open.words.last()?);
        let text = self.core.tokenizer.decode(&open.tokens);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let rate = f64::from(SAMPLE_RATE);
        Some(Segment {
            start_sample: first.start_sample,
            end_sample: last.end_sample,
            start: first.start_sample as f64 / rate,
            end: last.end_sample as f64 / rate,
            compression_ratio: text::compression_ratio(&text),
            text,
            tokens: open.tokens.clone(),
            avg_logprob: mean(&open.logprobs),
            no_speech_prob: mean(&open.no_speech),
            temperature: 0.0,
            language: self.core.language().map(str::to_string),
            words: open.words,
        })
    }

    /// Encodes the window `[ws, ws + n)` and decodes the text after the committed words from
    /// `first_prefix` on. `None` when the step is judged silent.
    fn decode_pass(
        &mut self,
        ws: u64,
        n: usize,
        first_prefix: usize,
        uncommitted: u64,
        loud: &[bool],
        timing: &mut TranscribeTiming,
    ) -> Option<Pass> {
        let off = (ws - self.core.buffer_start) as usize;
        let (encoded, enc) = self.core.encoder.encode(&self.core.buffer[off..off + n]);
        timing.mel += enc.mel;
        timing.encoder += enc.encoder;
        timing.encoder_wait += enc.waited;
        timing.encoder_batch = enc.batch;
        let t0 = Instant::now();
        let cross = self.core.decoder.cross_kv(encoded.view());
        let language = if self.core.tokenizer.is_multilingual() {
            self.core.language.or_else(|| {
                let core = &mut self.core;
                decoding::detect_language(&core.decoder, &core.tokenizer, &cross, &mut core.kv)
                    .first()
                    .map(|&(id, _)| id)
            })
        } else {
            None
        };
        let prefix: Vec<u32> = self.committed[first_prefix..]
            .iter()
            .flat_map(|c| c.tokens.iter().copied())
            .collect();
        let mut prompt: Vec<u32> = self.committed[..first_prefix]
            .iter()
            .flat_map(|c| c.tokens.iter().copied())
            .collect();
        let seconds = uncommitted as f64 / f64::from(SAMPLE_RATE);
        let sample_len = (TOKENS_FLOOR + TOKENS_PER_SECOND * seconds).ceil() as usize;
        // The text context (448) holds prompt, start tokens, prefix and what is decoded: the
        // prompt gives way first.
        let room = self
            .core
            .decoder
            .n_text_ctx()
            .saturating_sub(prefix.len() + START_TOKENS + sample_len);
        let budget = self.options.prompt_tokens.min(MAX_PROMPT_TOKENS).min(room);
        if prompt.len() > budget {
            prompt.drain(..prompt.len() - budget);
        }
        if prefix.len() + START_TOKENS + 1 >= self.core.decoder.n_text_ctx() {
            timing.decoder += t0.elapsed();
            return None;
        }
        let o = &self.core.options;
        let params = DecodeParams {
            prompt,
            language,
            task: o.task,
            temperature: 0.0,
            beam_size: 1,
            patience: 1.0,
            best_of: 1,
            sample_len,
            max_initial_timestamp: None,
            max_timestamp: 0,
            suppress_blank: if o.suppress_blank {
                self.core.suppress_blank.clone()
            } else {
                Vec::new()
            },
            suppress: self.core.suppress.clone(),
            without_timestamps: true,
            check_repetition: o.check_repetition,
            cancel: self.core.cancel.clone(),
        };
        let cont = continue_text(&mut self.core, &cross, &params, &prefix, &self.draft);
        timing.decoded_tokens += cont.tail.len() + 1;
        let is_silence = self.core.options.no_speech_threshold.is_some_and(|th| {
            f64::from(cont.no_speech_prob) > th
                && self
                    .core
                    .options
                    .logprob_threshold
                    .is_none_or(|lt| cont.avg_logprob <= lt)
        });
        let tail_text = self.core.tokenizer.decode(&cont.tail);
        let too_repetitive = self
            .core
            .options
            .compression_ratio_threshold
            .is_some_and(|th| text::compression_ratio(&tail_text) > th);
        log::debug!(
            "streaming: window {:.2}-{:.2} s, prefix {} prompt {} tokens: {:?} lp={:.2} ns={:.2}{}",
            ws as f64 / f64::from(SAMPLE_RATE),
            (ws + n as u64) as f64 / f64::from(SAMPLE_RATE),
            prefix.len(),
            params.prompt.len(),
            tail_text,
            cont.avg_logprob,
            cont.no_speech_prob,
            if cont.repetition { " (loop cut)" } else { "" }
        );
        if is_silence || too_repetitive {
            timing.decoder += t0.elapsed();
            return None;
        }
        let (groups, closes_before) = word_groups(&self.core, &cont.tail);
        let mut words: Vec<HypWord> = Vec::with_capacity(groups.len());
        if !groups.is_empty() {
            let starts = self.align(&cross, language, n, &prefix, &cont.tail);
            let at = |p: usize| ws + p as u64 * SAMPLES_PER_TIMESTAMP;
            for &(a, b) in &groups {
                let tokens = cont.tail[a..b].to_vec();
                let key = text::normalize_word(&self.core.tokenizer.decode(&tokens));
                let (start, end) = match &starts {
                    Some(st) => {
                        let base = prefix.len();
                        let start = at(st[base + a]);
                        let end = if b == cont.tail.len() {
                            at(st[base + b]).max(start)
                        } else {
                            at(st[base + b])
                        };
                        (start, end.min(ws + n as u64))
                    }
                    // No alignment: spread the words over the uncommitted audio.
                    None => {
                        let from = ws + n as u64 - uncommitted;
                        let share = uncommitted / cont.tail.len().max(1) as u64;
                        (from + a as u64 * share, from + b as u64 * share)
                    }
                };
                let island = super::loudness::loudest_island(loud, ws, start, end.max(start));
                let (start, end) = (island.start, island.end);
                words.push(HypWord {
                    tokens,
                    key,
                    start,
                    end,
                    logprob: cont.logprobs[a..b].iter().sum(),
                });
            }
        }
        timing.decoder += t0.elapsed();
        Some(Pass {
            words,
            avg_logprob: cont.avg_logprob,
            no_speech_prob: f64::from(cont.no_speech_prob),
            closes_before,
            language,
        })
    }

    /// Start position (20 ms steps from the window start) of every token of `prefix` + `tail`,
    /// and where the text ends, from the alignment heads; `None` without them.
    fn align(
        &mut self,
        cross: &CrossKv,
        language: Option<u32>,
        n: usize,
        prefix: &[u32],
        tail: &[u32],
    ) -> Option<Vec<usize>> {
        let core = &mut self.core;
        if core.alignment_heads.is_empty() {
            return None;
        }
        let n_text = prefix.len() + tail.len();
        let sp = core.tokenizer.special();
        let mut seq = vec![sp.sot];
        if core.tokenizer.is_multilingual() {
            seq.extend(language);
            seq.extend(match core.options.task {
                Task::Transcribe => sp.transcribe,
                Task::Translate => sp.translate,
            });
        }
        let start_tokens = seq.len();
        if n_text + start_tokens + 2 > core.decoder.n_text_ctx() {
            return None;
        }
        seq.push(sp.no_timestamps);
        seq.extend_from_slice(prefix);
        seq.extend_from_slice(tail);
        seq.push(sp.eot);
        let scores = core.decoder.cross_attention_scores_in(
            &mut core.kv,
            cross,
            &seq,
            &core.alignment_heads,
        );
        let positions = n.div_ceil(SAMPLES_PER_TIMESTAMP as usize);
        alignment::token_positions(&scores, start_tokens, n_text, positions)
    }
}

/// The greedy continuation of a forced prefix.
struct Continuation {
    tail: Vec<u32>,
    /// Log-probability of each token of `tail`.
    logprobs: Vec<f64>,
    avg_logprob: f64,
    no_speech_prob: f32,
    repetition: bool,
}

/// Runs prompt, start tokens, `prefix` and `draft` through the decoder in one batched pass, then
/// decodes greedily token by token, in the transcriber's own cache (a step would otherwise
/// allocate a 448-token cache, 11 MB on base).
///
/// `draft` is a guess at the continuation (the previous step's uncommitted words, which the next
/// step mostly says again): the batched pass gives the decoder's choice after each of its
/// tokens, so every draft token that is what greedy decoding picks costs no token-by-token pass
/// (each reads all the decoder's weights and the vocabulary's: on base f32, 194 MB). The first
/// token that differs ends the draft; what follows is decoded as without one. The text is the
/// greedy decoding's whatever the draft (tested: `a_draft_changes_no_token`), up to the last bits
/// of a logit: a row computed in the batched pass may round differently from the same row
/// computed alone (as the prefix's rows already do), which could only matter at a near-tie.
fn continue_text(
    core: &mut Transcriber,
    cross: &CrossKv,
    p: &DecodeParams,
    prefix: &[u32],
    draft: &[u32],
) -> Continuation {
    let (dec, tok, cache) = (&core.decoder, &core.tokenizer, &mut core.kv);
    let (mut initial, sot_index) = decoding::initial_tokens(p, tok);
    initial.extend_from_slice(prefix);
    let base = initial.len();
    let sample_len = p.sample_len.min(cache.capacity().saturating_sub(base + 1));
    let draft = &draft[..draft.len().min(sample_len).min(MAX_DRAFT_TOKENS)];
    initial.extend_from_slice(draft);
    cache.reset();
    let h = dec.forward(cache, cross, &initial, initial.len());
    let sot_logits = dec.logits(h.slice(s![sot_index..sot_index + 1, ..]));
    let no_speech_prob = match tok.special().no_speech {
        Some(ns) => {
            let row = sot_logits.row(0);
            let lse = log_sum_exp(row.iter().copied());
            (row[ns as usize] - lse).exp()
        }
        None => 0.0,
    };
    // The decoder's logits after the prefix and after each draft token.
    let draft_logits = dec.logits(h.slice(s![base - 1.., ..]));
    let mut logits = draft_logits.row(0).to_vec();
    let mut confirmed = Some(0usize);
    let mut seq = prefix.to_vec();
    let mut logprobs = Vec::new();
    let mut sum_logprob = 0.0;
    let mut sampled = 0usize;
    let mut repetition = false;
    let _stepping = dec.stepping();
    for _ in 0..sample_len {
        if p.cancel.is_set() {
            break;
        }
        decoding::apply_filters(&mut logits, &seq, p, tok);
        let next = decoding::argmax(&logits);
        let lse = log_sum_exp(logits.iter().copied());
        let logprob = f64::from(logits[next as usize] - lse);
        sum_logprob += logprob;
        sampled += 1;
        if next == tok.eot() {
            break;
        }
        seq.push(next);
        logprobs.push(logprob);
        if p.check_repetition && tok.is_text(next) {
            if let Some(at) = loop_start(tok, &seq, prefix.len()) {
                seq.truncate(at);
                logprobs.truncate(at - prefix.len());
                repetition = true;
                break;
            }
        }
        match confirmed {
            // The draft's next token: the batched pass has already run it.
            Some(k) if draft.get(k) == Some(&next) => {
                confirmed = Some(k + 1);
                logits = draft_logits.row(k + 1).to_vec();
                continue;
            }
            // The draft ends here: the cache forgets the rest of it.
            Some(k) => {
                cache.truncate(base + k);
                confirmed = None;
            }
            None => {}
        }
        logits = dec.step(cache, cross, &[next]).row(0).to_vec();
    }
    Continuation {
        tail: seq[prefix.len()..].to_vec(),
        logprobs,
        avg_logprob: sum_logprob / sampled.max(1) as f64,
        no_speech_prob,
        repetition,
    }
}

/// Where the decoded tail `seq[prefix..]` starts looping, as a token index of `seq` (not before
/// the tail): [`text::repetition_start`] over the committed words in the window and the tail, so
/// that a phrase of the committed text said again is caught. Committed speech that really repeats
/// itself ("words words words words") then gives an empty tail: the stall fallback of
/// [`StreamingTranscriber`] decodes it again without the forced prefix.
fn loop_start(
    tok: &crate::model::tokenizer::Tokenizer,
    seq: &[u32],
    prefix: usize,
) -> Option<usize> {
    let words = text::Words::from_tokens(tok, seq);
    text::repetition_start(&words.words).map(|w| words.token_index[w].max(prefix))
}

fn log_sum_exp(v: impl Iterator<Item = f32> + Clone) -> f32 {
    let max = v.clone().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + v.map(|x| f64::from(x - max).exp()).sum::<f64>().ln() as f32
}

/// Token ranges of the words of a decoded tail: a word starts at a token that begins with a space
/// and has a letter or digit (or at the first token); tokens without letters or digits stay with
/// the word before them. Punctuation before the first word belongs to committed text and is left
/// out; the flag says whether it ends a sentence.
fn word_groups(core: &Transcriber, tail: &[u32]) -> (Vec<(usize, usize)>, bool) {
    let tok = &core.tokenizer;
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut lead = String::new();
    for (i, &t) in tail.iter().enumerate() {
        if !tok.is_text(t) {
            continue;
        }
        let piece = String::from_utf8_lossy(tok.token_bytes(t));
        let has_word = piece.chars().any(char::is_alphanumeric);
        let new_word = has_word && (piece.starts_with(' ') || groups.is_empty());
        match groups.last_mut() {
            Some(g) if !new_word => g.1 = i + 1,
            _ if !has_word => lead.push_str(&piece),
            _ => groups.push((i, i + 1)),
        }
    }
    (groups, text::sentence_end(lead.trim()))
}
