//! Transcription: Whisper decoding on the element's 10.24 s windows, stream-driven, without
//! GStreamer.
//!
//! A [`Transcriber`] takes 16 kHz mono audio as it comes ([`Transcriber::push_audio`]) and, once a
//! full window is buffered past its seek position, encodes it and decodes it
//! ([`Transcriber::next_window`]), the way OpenAI's `transcribe.py` walks a long file: the window
//! starts at the seek position; complete segments (`<|start|> text <|end|>`) are emitted; the seek
//! moves to the end of the last segment emitted, so text after it is decoded again, with the audio
//! that follows, from the next window. At the end of the stream ([`Transcriber::finish`]) the rest
//! is decoded and all of it emitted.
//!
//! What the short windows need on top of Whisper's rules (the model was trained on 30 s). Decoded
//! text is dropped only as a hallucination: repetition, or text over silence or steady noise.
//! - no timestamp past the end of the audio in the window;
//! - a segment that ends within `edge_margin` (0.5 s) of the end of a window that is not the
//!   stream's last is held back (its last word may be cut) and decoded again from the next window,
//!   and so is one whose aligned words end there (its timestamps can run seconds early);
//! - decoding stops when a hypothesis starts repeating itself (a phrase back to back, one word six
//!   times, or six words said again): with complete segments before it, that is the model running past the audio and
//!   the cut result is kept; otherwise it is a failure and the temperature fallback runs;
//! - segments saying more than ~10 words a second are hallucinations and dropped, with all after
//!   them;
//! - a segment whose words the previous window ended with is dropped (nothing said twice), and so
//!   is one of six words or more found word for word in what was emitted lately while that text was
//!   the prompt, or in the prompt where the window decoded once more without it says less than
//!   half of them (the model copying its prompt; a speaker saying it again is in the audio); over
//!   speech, that audio is decoded again without the prompt, once, and the segments after it are
//!   left to that retry; and so is one whose words lie wholly or for half their span or more in
//!   audio whose text was shown already (a window or a retry going back over it);
//! - a segment with no frame under it louder than the window's noise floor is text over silence
//!   or noise, and dropped ([`loudness`]; the level never judges how many words fit);
//! - the stream's last window, usually short, is decoded as the last full 10.24 s (look-back) and
//!   only the words after those already emitted are kept (aligned word by word); if that does not
//!   align (or matches none of the emitted words it overlaps), it is decoded once more without the
//!   prompt, then the short window is decoded;
//! - a window whose loudest 20 ms is below -60 dBFS is silent without running the model, and
//!   emitted segments are narrowed to the loud part of their span (better start times after
//!   pauses);
//! - a window that yields no text but ends in speech begun after a pause (Whisper says nothing of
//!   words cut by the window's end, or calls the window silent) is followed by one starting half
//!   a second before that speech, not at its end;
//! - segment times shown are where their words are by the decoder's cross-attention
//!   ([`alignment`], OpenAI's word timestamps); the seek positions, prompt and look-back keep
//!   following the timestamp tokens, so the text does not depend on the alignment.

use std::sync::Arc;
use std::time::Instant;

use crate::cancel::Cancel;
use crate::mel::{SAMPLE_RATE, TIMESTAMP_STEP, WINDOW_SAMPLES};
use crate::model::decoder::{batch, CrossKv, Decoder, KvCache};
use crate::model::tokenizer::Tokenizer;
use crate::model::WhisperModel;
use crate::window::{EncoderOptions, WindowEncoder};

pub mod alignment;
mod decoding;
mod lookback;
mod loudness;
mod options;
mod repeats;
mod segments;
pub mod streaming;
pub mod text;
mod text_model;
mod words;

use decoding::{DecodeParams, DecodeResult, Rng};
use lookback::{LookbackMatch, RecentSegment};
use loudness::Span;
pub use options::{
    Segment, Task, TranscribeError, TranscribeOptions, TranscribeTiming, WindowResult, Word,
    SAMPLES_PER_TIMESTAMP,
};
use repeats::{says_again, share_in_order, CONFIRMED_SHARE, REPEATED_PHRASE_WORDS};
use segments::{split_segments, Selection};
pub use text_model::TextModel;

/// The `log` target of the decoding diagnostics (the element routes it to its GStreamer debug
/// category `whisperencnpu`).
const LOG_TARGET: &str = "whisperencnpu";
/// How far (seconds) a segment of the last window decoded with look-back may start before the seek
/// position and still count as new.
const LOOKBACK_TOLERANCE: f64 = 0.4;
/// A window that is not the stream's last moves the seek position on by this much at least (one
/// second, as stream samples), so that no window is decoded again and again.
const MIN_ADVANCE: u64 = SAMPLE_RATE as u64;
/// A segment with at least this share of its span in audio whose text was shown says that text
/// again.
const MAX_SHOWN_SHARE: f64 = 0.5;
/// Seconds of loud frames in a window judged silent with a prompt that make it decoded again
/// without the prompt (a window of noise has next to none; one of speech, several).
const MIN_SPEECH_TO_RETRY_SILENT: f64 = 1.0;
/// Tokens of previous text given as prompt at most (`n_text_ctx / 2 - 1`).
pub const MAX_PROMPT_TOKENS: usize = 223;
/// Rows of the largest call a transcriber makes on its own decoder cache: the prefill of
/// `<|startofprev|>`, the prompt and the start tokens (`<|startoftranscript|>`, language, task,
/// `<|notimestamps|>`). A window's alignment pass is shorter: its text is at most
/// 24 + 12 x 10.24 = 147 tokens. Activations for 228 rows rather than the 448 of the text context
/// are 4.4 MiB less per stream (issue 12); a longer call would grow them once.
const LARGEST_OWN_CALL: usize = MAX_PROMPT_TOKENS + 5;

/// A segment to emit, in stream samples.
struct Emit {
    start: u64,
    end: u64,
    tokens: Vec<u32>,
    /// Where its words are by the cross-attention alignment (stream samples), when known.
    words: Option<Span>,
    /// Each word and where it is (stream samples), when known.
    word_list: Vec<Word>,
}

impl Emit {
    /// Where its words end by the alignment: the last segment of a window ends at its timestamp
    /// (the alignment places the end of the text late), but not before its last word starts.
    fn words_end(&self) -> Option<u64> {
        let last_start = self.word_list.last().map_or(0, |w| w.start_sample);
        self.words.map(|w| w.end.max(last_start))
    }
}

/// An emitted segment kept for the prompt.
struct PromptSegment {
    /// Stream sample where it ends (by its timestamp tokens).
    end: u64,
    tokens: Vec<u32>,
}

/// One window encoded and decoded with the temperature fallback.
struct DecodedWindow {
    result: DecodeResult,
    /// Every temperature failed.
    failed: bool,
    /// The words of the text given as prompt; empty: none was (without it, the model cannot
    /// repeat earlier text unless the audio says it again).
    prompt_words: Vec<String>,
    language: Option<u32>,
}

/// The transcriber: owns the encoder, the decoder and the stream's seek position.
pub struct Transcriber {
    /// Shared with every stream of the same model ([`TextModel`]).
    tokenizer: Arc<Tokenizer>,
    decoder: Arc<Decoder>,
    /// For decodings of several hypotheses, shared likewise ([`text_model::WideCache`]).
    wide: Arc<text_model::WideCache>,
    encoder: WindowEncoder,
    options: TranscribeOptions,
    model_name: String,
    /// Language token fixed by the options or detected on the first window with speech.
    language: Option<u32>,
    language_fixed: bool,
    /// The language token the options ask for.
    language_option: Option<u32>,
    suppress: Vec<u32>,
    suppress_blank: Vec<u32>,
    initial_prompt: Vec<u32>,
    /// Audio from `buffer_start` on.
    buffer: Vec<f32>,
    buffer_start: u64,
    seek: u64,
    /// Segments emitted since the prompt was last reset.
    history: Vec<PromptSegment>,
    /// Emitted segments a look-back may overlap.
    recent: Vec<RecentSegment>,
    /// Words of the segments emitted from the last window (to drop repeats).
    last_words: Vec<String>,
    window_index: u64,
    rng: Rng,
    /// The seek position of the last window decoded again without the prompt (see `process`).
    retried_at: Option<u64>,
    /// End of the last segment emitted (as shown).
    shown_until: u64,
    /// The decoder's (layer, head) pairs that follow the speech; none: no word alignment.
    alignment_heads: Vec<(usize, usize)>,
    /// Raised by the element to abandon the window being decoded (see [`Self::set_cancel`]).
    cancel: Cancel,
    /// The decoder's self-attention cache, kept from window to window with the memory of the
    /// largest batch the options decode with ([`decoding::largest_batch`]), taken at construction.
    kv: KvCache,
    /// The cross-attention keys and values of the last window run ([`Self::run_window`]), kept
    /// from window to window; its words are aligned on them.
    cross: CrossKv,
}

impl std::fmt::Debug for Transcriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcriber")
            .field("model", &self.model_name)
            .field("options", &self.options)
            .field("seek", &self.seek)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl Transcriber {
    /// Loads the decoder and tokenizer of `model` (and `tokenizer.json` from its directory),
    /// prepares the encoder as `encoder` says and the decoder on a CPU engine of
    /// `options.decoder_precision`.
    pub fn new(
        model: &WhisperModel,
        encoder: &EncoderOptions,
        options: TranscribeOptions,
    ) -> Result<Transcriber, TranscribeError> {
        let window_encoder = WindowEncoder::new(model, encoder)?;
        Self::with_encoder(model, window_encoder, options)
    }

    /// Builds a transcriber from parts made elsewhere (another engine for the decoder, say).
    pub fn with_parts(
        model: &WhisperModel,
        tokenizer: Tokenizer,
        encoder: WindowEncoder,
        decoder: Decoder,
        options: TranscribeOptions,
    ) -> Result<Transcriber, TranscribeError> {
        let text = TextModel::with_parts(model, tokenizer, decoder);
        Self::with_text_model(&text, encoder, options)
    }

    /// A stream's transcriber on a text model and an encoder that other streams may share.
    pub fn with_text_model(
        text: &TextModel,
        encoder: WindowEncoder,
        options: TranscribeOptions,
    ) -> Result<Transcriber, TranscribeError> {
        let (tokenizer, decoder) = (text.tokenizer.clone(), text.decoder.clone());
        let wide = text.wide.clone();
        let (config, dims) = (&text.config, &text.dims);
        let model_name = text.name.clone();
        if options.temperatures.is_empty() {
            return Err(TranscribeError::InvalidOption(
                "temperatures is empty".to_string(),
            ));
        }
        if options.beam_size == 0 || options.best_of == 0 {
            return Err(TranscribeError::InvalidOption(
                "beam_size and best_of must be at least 1".to_string(),
            ));
        }
        let multilingual = tokenizer.is_multilingual();
        if !multilingual && options.task == Task::Translate {
            return Err(TranscribeError::CannotTranslate(model_name));
        }
        let language = match (&options.language, multilingual) {
            (Some(code), true) => Some(
                tokenizer
                    .language_token(&code.to_lowercase())
                    .ok_or_else(|| TranscribeError::UnknownLanguage(code.clone()))?,
            ),
            _ => None,
        };
        let sp = tokenizer.special().clone();
        let suppress: Vec<u32> = match &options.suppress_tokens {
            Some(list) => list.clone(),
            None if !config.suppress_ids.is_empty() => config
                .suppress_ids
                .iter()
                .filter_map(|&i| u32::try_from(i).ok())
                .collect(),
            None => Vec::new(),
        }
        .into_iter()
        // Never sampled whatever the list says: the prompt's own special tokens.
        .chain(
            [
                Some(sp.sot),
                sp.transcribe,
                sp.translate,
                sp.sot_prev,
                sp.sot_lm,
                sp.no_speech,
            ]
            .into_iter()
            .flatten(),
        )
        .collect();
        let suppress_blank: Vec<u32> = if config.suppress_ids_begin.is_empty() {
            let mut v = tokenizer.encode(" ");
            v.push(sp.eot);
            v
        } else {
            config
                .suppress_ids_begin
                .iter()
                .filter_map(|&i| u32::try_from(i).ok())
                .collect()
        };
        let initial_prompt = options
            .initial_prompt
            .as_deref()
            .map(|p| tokenizer.encode(&format!(" {}", p.trim())))
            .unwrap_or_default();
        let seed = options.seed;
        let alignment_heads = if options.word_timestamps {
            config
                .alignment_heads
                .iter()
                .copied()
                .filter(|&(l, h)| l < dims.n_decoder_layers && h < dims.n_decoder_heads)
                .collect()
        } else {
            Vec::new()
        };
        let mut kv = decoder.new_cache();
        // One hypothesis: several are decoded in the shared wide cache.
        kv.reserve(1, LARGEST_OWN_CALL);
        Ok(Transcriber {
            kv,
            cross: CrossKv::default(),
            alignment_heads,
            tokenizer,
            decoder,
            wide,
            encoder,
            language_fixed: language.is_some(),
            language_option: language,
            language,
            options,
            model_name,
            suppress,
            suppress_blank,
            initial_prompt,
            buffer: Vec::new(),
            buffer_start: 0,
            seek: 0,
            history: Vec::new(),
            recent: Vec::new(),
            last_words: Vec::new(),
            window_index: 0,
            rng: Rng::new(seed),
            retried_at: None,
            shown_until: 0,
            cancel: Cancel::default(),
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The window encoder (which backend and precision run).
    pub fn encoder(&self) -> &WindowEncoder {
        &self.encoder
    }

    /// Like [`new`](Self::new), with an encoder already prepared (and warmed up) by the caller.
    pub fn with_encoder(
        model: &WhisperModel,
        encoder: WindowEncoder,
        options: TranscribeOptions,
    ) -> Result<Transcriber, TranscribeError> {
        let text = TextModel::new(model, options.decoder_precision, options.decoder_threads)?;
        Self::with_text_model(&text, encoder, options)
    }

    /// The flag that abandons decoding: once raised, decoding stops at its next token and the
    /// window's result is meaningless (the element drops it: it is flushing or stopping).
    pub fn set_cancel(&mut self, cancel: Cancel) {
        self.cancel = cancel;
    }

    pub fn options(&self) -> &TranscribeOptions {
        &self.options
    }

    /// The language in use: fixed by the options or detected (`None` before detection and for
    /// English-only models).
    pub fn language(&self) -> Option<&str> {
        self.language.and_then(|t| self.tokenizer.language_code(t))
    }

    /// Appends audio (16 kHz mono, [-1, 1]); holes in the stream are to be pushed as silence.
    pub fn push_audio(&mut self, samples: &[f32]) {
        self.buffer.extend_from_slice(samples);
    }

    /// Appends `n` samples of silence (a GAP, a hole in the timestamps).
    pub fn push_silence(&mut self, n: usize) {
        self.buffer.resize(self.buffer.len() + n, 0.0);
    }

    /// Stream sample just past the audio pushed so far.
    pub fn pushed_end(&self) -> u64 {
        self.buffer_start + self.buffer.len() as u64
    }

    /// Stream sample where the next window starts.
    pub fn seek(&self) -> u64 {
        self.seek
    }

    /// Whether [`next_window`](Self::next_window) has a full window to decode.
    pub fn has_window(&self) -> bool {
        self.pushed_end() >= self.seek + WINDOW_SAMPLES as u64
    }

    /// Decodes the window at the seek position if a full one is buffered.
    pub fn next_window(&mut self) -> Option<WindowResult> {
        self.has_window().then(|| self.process(false))
    }

    /// End of stream: decodes everything left (windows in turn until the audio is used up) and
    /// emits all of it. The transcriber is then ready for a new stream continuing at
    /// [`pushed_end`](Self::pushed_end).
    pub fn finish(&mut self) -> Vec<WindowResult> {
        let mut out = Vec::new();
        // Less than 0.1 s left: nothing a word fits in.
        while self.pushed_end() > self.seek + u64::from(SAMPLE_RATE) / 10 {
            // Abandoned (NULL, flush): no other window is encoded.
            if self.cancel.is_set() {
                break;
            }
            let r = self.process(true);
            let last = r.last;
            out.push(r);
            if last {
                break;
            }
        }
        let end = self.pushed_end();
        self.seek = end;
        self.buffer.clear();
        self.buffer_start = end;
        out
    }

    /// Drops all pending audio and the text context: the next sample pushed is stream sample
    /// `start_sample` (a flushing seek). A detected language is forgotten.
    pub fn reset(&mut self, start_sample: u64) {
        self.buffer.clear();
        self.buffer_start = start_sample;
        self.seek = start_sample;
        self.history.clear();
        self.recent.clear();
        self.last_words.clear();
        self.shown_until = start_sample;
        self.retried_at = None;
        self.window_index = 0;
        self.rng = Rng::new(self.options.seed);
        // A language detected in the last stream is detected again.
        self.language = self.language_option;
        self.language_fixed = self.language_option.is_some();
    }

    fn decode_params(
        &self,
        language: Option<u32>,
        audio_samples: usize,
        prompt_before: Option<u64>,
    ) -> DecodeParams {
        let o = &self.options;
        let mut prompt: Vec<u32> = Vec::new();
        if let Some(prompt_before) = prompt_before.filter(|_| o.use_prompt) {
            prompt.extend_from_slice(&self.initial_prompt);
            let tol = (LOOKBACK_TOLERANCE * f64::from(SAMPLE_RATE)) as u64;
            for h in &self.history {
                if h.end <= prompt_before + tol {
                    prompt.extend_from_slice(&h.tokens);
                }
            }
            if prompt.len() > MAX_PROMPT_TOKENS {
                prompt.drain(..prompt.len() - MAX_PROMPT_TOKENS);
            }
        } else if self.history.is_empty() && !o.use_prompt {
            prompt.extend_from_slice(&self.initial_prompt);
        }
        let seconds = audio_samples as f64 / f64::from(SAMPLE_RATE);
        DecodeParams {
            prompt,
            language,
            task: o.task,
            temperature: 0.0,
            beam_size: o.beam_size,
            patience: o.patience,
            best_of: o.best_of,
            // At most ~12 tokens a second of audio (fast speech is ~5 words a second).
            sample_len: (24.0 + 12.0 * seconds).ceil() as usize,
            max_initial_timestamp: Some((o.max_initial_timestamp / TIMESTAMP_STEP).round() as u32),
            max_timestamp: (audio_samples as u64 / SAMPLES_PER_TIMESTAMP) as u32,
            suppress_blank: if o.suppress_blank {
                self.suppress_blank.clone()
            } else {
                Vec::new()
            },
            suppress: self.suppress.clone(),
            without_timestamps: false,
            check_repetition: o.check_repetition,
            cancel: self.cancel.clone(),
        }
    }

    /// OpenAI's `decode_with_fallback`, with a repetition counting as a failure. Returns the result
    /// kept and whether every temperature failed.
    fn decode_with_fallback(
        &mut self,
        cross: &CrossKv,
        mut params: DecodeParams,
        at_end: bool,
        timing: &mut TranscribeTiming,
    ) -> (DecodeResult, bool) {
        let o = self.options.clone();
        let mut tried: Vec<DecodeResult> = Vec::new();
        for &t in &o.temperatures {
            params.temperature = t;
            let hypotheses = if t > 0.0 { o.best_of } else { o.beam_size };
            let r = if hypotheses > 1 {
                match self.wide.take(&self.cancel) {
                    Some(mut wide) => {
                        wide.reserve_batch(hypotheses);
                        let (dec, tok) = (&self.decoder, &self.tokenizer);
                        decoding::decode(dec, tok, cross, &params, &mut self.rng, &mut wide)
                    }
                    None => DecodeResult::default(),
                }
            } else {
                decoding::decode(
                    &self.decoder,
                    &self.tokenizer,
                    cross,
                    &params,
                    &mut self.rng,
                    &mut self.kv,
                )
            };
            // Abandoned (NULL, flush): no other temperature is tried.
            if self.cancel.is_set() {
                return (r, false);
            }
            let n = if t > 0.0 { o.best_of } else { o.beam_size };
            timing.decoded_tokens += n * (r.tokens.len() + 1);
            {
                log::debug!(
                    target: LOG_TARGET,
                    "  t={t:.1} lp={:.3} cr={:.2} ns={:.3} rep={} {}",
                    r.avg_logprob,
                    r.compression_ratio,
                    r.no_speech_prob,
                    r.repetition,
                    self.tokenizer.decode_with_timestamps(&r.tokens)
                );
            }
            // A loop after complete segments is the model running on past the end of the
            // window's audio: the cut result is good, its open tail is decoded again from the
            // next window. A loop with nothing complete before it is a failure.
            let mut fail = r.repetition
                && !split_segments(&self.tokenizer, &r.tokens)
                    .iter()
                    .any(|s| s.end.is_some() || (at_end && !s.tokens.is_empty()));
            if o.compression_ratio_threshold
                .is_some_and(|th| r.compression_ratio > th)
            {
                fail = true;
            }
            if o.logprob_threshold.is_some_and(|th| r.avg_logprob < th) {
                fail = true;
            }
            if self.is_silence(&r) {
                fail = false;
            }
            if !fail {
                return (r, false);
            }
            tried.push(r);
        }
        // Every temperature failed: the best non-looping result, else the greedy one (its
        // repetition is cut already).
        let best = tried
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                !r.repetition
                    && o.compression_ratio_threshold
                        .is_none_or(|th| r.compression_ratio <= th)
            })
            .max_by(|a, b| a.1.avg_logprob.total_cmp(&b.1.avg_logprob))
            .map_or(0, |(i, _)| i);
        (tried.swap_remove(best), true)
    }

    fn is_silence(&self, r: &DecodeResult) -> bool {
        let o = &self.options;
        match o.no_speech_threshold {
            Some(th) => {
                f64::from(r.no_speech_prob) > th
                    && o.logprob_threshold.is_none_or(|lt| r.avg_logprob <= lt)
            }
            None => false,
        }
    }

    /// Encodes `n` samples of the buffer from stream sample `window_start` and decodes them with
    /// the fallback; the prompt is the text emitted before `prompt_before` (none without it).
    fn run_window(
        &mut self,
        window_start: u64,
        n: usize,
        last: bool,
        prompt_before: Option<u64>,
        timing: &mut TranscribeTiming,
    ) -> DecodedWindow {
        let off = (window_start - self.buffer_start) as usize;
        let (encoded, enc_timing) = self.encoder.encode(&self.buffer[off..off + n]);
        timing.mel += enc_timing.mel;
        timing.encoder += enc_timing.encoder;
        timing.encoder_wait += enc_timing.waited;
        timing.encoder_batch = enc_timing.batch;
        let t0 = Instant::now();
        let mut cross = std::mem::take(&mut self.cross);
        self.decoder.cross_kv_into(encoded.view(), &mut cross);
        let language = if self.tokenizer.is_multilingual() {
            match self.language {
                Some(l) => Some(l),
                None => {
                    decoding::detect_language(&self.decoder, &self.tokenizer, &cross, &mut self.kv)
                }
                .first()
                .map(|&(id, _)| id),
            }
        } else {
            None
        };
        let params = self.decode_params(language, n, prompt_before);
        let prompt_words = text::Words::from_tokens(&self.tokenizer, &params.prompt).words;
        log::debug!(
            target: LOG_TARGET,
            "window at {:.2} s, {:.2} s of audio{}",
            window_start as f64 / f64::from(SAMPLE_RATE),
            n as f64 / f64::from(SAMPLE_RATE),
            if last { ", last" } else { "" }
        );
        let (result, failed) = self.decode_with_fallback(&cross, params, last, timing);
        self.cross = cross;
        timing.decoder += t0.elapsed();
        DecodedWindow {
            result,
            failed,
            prompt_words,
            language,
        }
    }

    /// The words emitted lately, in order (what a look-back may overlap).
    fn recent_words(&self) -> Vec<String> {
        self.recent.iter().flat_map(|r| r.words.clone()).collect()
    }

    /// Which segments of a window decoded with `prompt_words` as prompt say again a phrase of it
    /// that the audio does not say. Such a phrase is the model copying its prompt, or the speaker
    /// saying it again (a refrain; jfk.wav twice within a minute); only the audio tells them
    /// apart: the window is decoded once more without the prompt (its cross-attention keys are
    /// still at hand) and a phrase is a copy when that text holds less than
    /// [`CONFIRMED_SHARE`] of its words in order. Phrases also in what was emitted lately are
    /// left to the rule for those (`emit`).
    fn prompt_copies(
        &mut self,
        segments: &[Emit],
        prompt_words: &[String],
        language: Option<u32>,
        n: usize,
        last: bool,
        timing: &mut TranscribeTiming,
    ) -> Vec<bool> {
        // Unprompted (most windows after a retry, every window without `previous-text-prompt`):
        // nothing to copy, nothing to look at.
        if prompt_words.len() < REPEATED_PHRASE_WORDS {
            return vec![false; segments.len()];
        }
        let recent = self.recent_words();
        let phrases: Vec<Option<Vec<String>>> = segments
            .iter()
            .map(|s| {
                let words = text::Words::from_tokens(&self.tokenizer, &s.tokens).words;
                (says_again(&words, prompt_words) && !says_again(&words, &recent)).then_some(words)
            })
            .collect();
        if phrases.iter().all(Option::is_none) {
            return vec![false; segments.len()];
        }
        let params = self.decode_params(language, n, None);
        let cross = std::mem::take(&mut self.cross);
        let (unprompted, _) = self.decode_with_fallback(&cross, params, last, timing);
        self.cross = cross;
        let heard = text::Words::from_tokens(&self.tokenizer, &unprompted.tokens).words;
        phrases
            .into_iter()
            .map(|p| {
                p.is_some_and(|words| {
                    let share = share_in_order(&words, &heard);
                    log::debug!(
                        target: LOG_TARGET,
                        "  {:?} says the prompt again; {:.0}% of it decoded without the prompt",
                        words.join(" "),
                        100.0 * share
                    );
                    share < CONFIRMED_SHARE
                })
            })
            .collect()
    }

    /// Speech the model answered with earlier text (`why`) is decoded again from `at` without the
    /// prompt that led it astray: whether it will be (once per position, so the stream always
    /// moves on).
    fn retry_without_prompt(&mut self, at: u64, why: &str) -> bool {
        if self.retried_at == Some(at) {
            return false;
        }
        log::debug!(
            target: LOG_TARGET,
            "  {why}: again from {:.2} s without the prompt",
            at as f64 / f64::from(SAMPLE_RATE)
        );
        self.retried_at = Some(at);
        self.history.clear();
        true
    }

    fn process(&mut self, at_end: bool) -> WindowResult {
        batch::take_tally();
        let mut out = self.process_window(at_end);
        out.timing.decoder_batch = batch::take_tally().mean_batch();
        out
    }

    fn process_window(&mut self, at_end: bool) -> WindowResult {
        let available = (self.pushed_end() - self.seek) as usize;
        let last = at_end && available <= WINDOW_SAMPLES;
        let index = self.window_index;
        self.window_index += 1;
        let mut timing = TranscribeTiming::default();

        // The stream's last window is short: decode the last full 10.24 s instead, the audio before
        // the seek position too, and keep the words after those already emitted (the model does
        // much better with a full window than with a short one and padding).
        let lookback = if last {
            (WINDOW_SAMPLES - available).min((self.seek - self.buffer_start) as usize)
        } else {
            0
        };
        if lookback >= SAMPLE_RATE as usize && !self.is_quiet(self.seek, available) {
            let start = self.seek - lookback as u64;
            let n = lookback + available;
            // The second try of a look-back is without the prompt (below).
            let prompt_before = (self.retried_at != Some(self.seek)).then_some(start);
            let DecodedWindow {
                result,
                failed,
                prompt_words,
                language,
            } = self.run_window(start, n, true, prompt_before, &mut timing);
            let matched = (!failed && !self.is_silence(&result))
                .then(|| {
                    lookback::align_lookback(
                        &self.tokenizer,
                        &self.recent,
                        self.seek,
                        start,
                        n,
                        &result.tokens,
                    )
                })
                .flatten();
            if let Some(LookbackMatch {
                segments: mut emit,
                new_from,
            }) = matched
            {
                let t0 = Instant::now();
                self.align_words(language, start, n, &result.tokens, new_from, &mut emit);
                timing.decoder += t0.elapsed();
                let mut out = self.window_result(index, start, n, true, &result, failed, language);
                self.lock_language(language);
                out.timing = timing;
                let untranscribed =
                    self.emit(&mut out, emit, &result, !prompt_words.is_empty(), &[], true);
                out.next_seek = start + n as u64;
                // The model said again what was said before, over speech: once more from there
                // without the prompt (the stream is then not done yet).
                if let Some(at) = untranscribed.map(|at| at.max(self.seek)) {
                    if self.retry_without_prompt(at, "look-back repeated earlier text over speech")
                    {
                        out.next_seek = at;
                        out.last = false;
                    }
                }
                self.advance(out.next_seek);
                return out;
            }
            // Not aligned with the prompt given: once more without it (the model often says the
            // prompt again over a stream's last words), then from the seek position.
            if self.options.use_prompt && !self.history.is_empty() && prompt_before.is_some() {
                log::debug!(
                    target: LOG_TARGET,
                    "  look-back not aligned: again without the prompt"
                );
                self.retried_at = Some(self.seek);
                let mut out = self.window_result(index, start, n, false, &result, failed, language);
                out.timing = timing;
                out.next_seek = self.seek;
                return out;
            }
            log::debug!(
                target: LOG_TARGET,
                "  look-back not aligned: decoding from the seek position"
            );
        }

        // A pause before the speech: start the window half a second before the speech instead.
        // Whisper times speech after a long pause badly and invents text in it.
        let n = available.min(WINDOW_SAMPLES);
        if let Some(first) = self.loud_frames(self.seek, n).iter().position(|&l| l) {
            let onset = self.seek + first as u64 * SAMPLES_PER_TIMESTAMP;
            let new_seek = onset.saturating_sub(u64::from(SAMPLE_RATE) / 2);
            if new_seek > self.seek + u64::from(SAMPLE_RATE) {
                let skipped = (new_seek - self.seek) as usize;
                let mut out = self.window_result(
                    index,
                    self.seek,
                    skipped,
                    false,
                    &DecodeResult::default(),
                    false,
                    None,
                );
                out.no_speech = true;
                out.next_seek = new_seek;
                log::debug!(
                    target: LOG_TARGET,
                    "pause from {:.2} s: the window starts at {:.2} s",
                    self.seek as f64 / f64::from(SAMPLE_RATE),
                    new_seek as f64 / f64::from(SAMPLE_RATE)
                );
                self.advance(new_seek);
                return out;
            }
        }

        let start = self.seek;
        if self.is_quiet(start, n) {
            let mut out =
                self.window_result(index, start, n, last, &DecodeResult::default(), false, None);
            out.no_speech = true;
            out.no_speech_prob = 1.0;
            log::debug!(
                target: LOG_TARGET,
                "window at {:.2} s: below the silence threshold",
                start as f64 / f64::from(SAMPLE_RATE)
            );
            self.advance(out.next_seek);
            return out;
        }
        let DecodedWindow {
            result,
            failed,
            prompt_words,
            language,
        } = self.run_window(start, n, last, Some(start), &mut timing);
        let mut out = self.window_result(index, start, n, last, &result, failed, language);
        out.timing = timing;
        if out.no_speech {
            // Judged silent (Whisper's no-speech rule) over a window with speech in it: the
            // prompt can lead the model there ("The dog is a dog.", logprob -2.5, over 10 s of
            // sentences on the 20-minute join). Once more without the prompt before moving on.
            let loud = self.loud_frames(start, n);
            let speech = loudness::speech_seconds(&loud, start, start, start + n as u64);
            if !last
                && !prompt_words.is_empty()
                && speech >= MIN_SPEECH_TO_RETRY_SILENT
                && self.retry_without_prompt(start, "judged silent over speech")
            {
                out.next_seek = start;
            } else if !last {
                out.next_seek = self.stop_before_trailing_speech(start, n, out.next_seek);
            }
            self.advance(out.next_seek);
            return out;
        }
        self.lock_language(language);
        let Selection {
            segments: raw,
            next_seek: seek_ts,
        } = segments::select_segments(
            &self.tokenizer,
            &result.tokens,
            n,
            last,
            self.options.edge_margin,
        );
        let mut emit: Vec<Emit> = raw
            .into_iter()
            .map(|s| Emit {
                start: start + u64::from(s.start) * SAMPLES_PER_TIMESTAMP,
                end: start + u64::from(s.end.unwrap_or(seek_ts)) * SAMPLES_PER_TIMESTAMP,
                tokens: s.tokens,
                words: None,
                word_list: Vec::new(),
            })
            .collect();
        let t0 = Instant::now();
        self.align_words(language, start, n, &result.tokens, 0, &mut emit);
        let mut seek_ts = seek_ts;
        if !last {
            // A segment's timestamps can end seconds before its words (whole seconds): one whose
            // words run into the window's last `edge_margin` is cut there as surely as one whose
            // timestamp does, and is held back likewise; so are the sentences of the first
            // segment that do.
            let margin = (self.options.edge_margin * f64::from(SAMPLE_RATE)) as u64;
            let word_ends: Vec<Option<u64>> = emit.iter().map(Emit::words_end).collect();
            let keep = segments::kept_by_word_ends(&word_ends, start + n as u64, margin);
            for held in emit.drain(keep..) {
                log::debug!(
                    target: LOG_TARGET,
                    "  held back, its words run into the window's end: {:?}",
                    self.tokenizer.decode(&held.tokens)
                );
            }
            if let Some(kept) = emit.last().filter(|_| keep < word_ends.len()) {
                seek_ts = ((kept.end - start) / SAMPLES_PER_TIMESTAMP) as u32;
            }
            if let Some(first) = emit.first_mut().filter(|e| {
                e.words_end()
                    .is_some_and(|end| end + margin > start + n as u64)
            }) {
                if let Some(cut) = words::cut_after_last_sentence(
                    &self.tokenizer,
                    first,
                    start,
                    start + MIN_ADVANCE,
                ) {
                    log::debug!(
                        target: LOG_TARGET,
                        "  held back from {:.2} s, its words run into the window's end; kept {:?}",
                        cut as f64 / f64::from(SAMPLE_RATE),
                        self.tokenizer.decode(&first.tokens)
                    );
                    seek_ts = ((cut - start) / SAMPLES_PER_TIMESTAMP) as u32;
                }
            }
        }
        let copies = self.prompt_copies(&emit, &prompt_words, language, n, last, &mut out.timing);
        out.timing.decoder += t0.elapsed();
        let prompted = !prompt_words.is_empty();
        let untranscribed = self.emit(&mut out, emit, &result, prompted, &copies, !last);
        out.next_seek = if last {
            start + n as u64
        } else {
            let seek = start + (u64::from(seek_ts) * SAMPLES_PER_TIMESTAMP).min(n as u64);
            if out.segments.is_empty() {
                self.stop_before_trailing_speech(start, n, seek)
            } else {
                seek // the next window starts after the text said, with what follows it
            }
        };
        // Speech the model answered with the previous text: decode it again from there without the
        // prompt that led it astray (once per position, so this always moves on).
        if let Some(at) = untranscribed.filter(|_| !last) {
            // A little before: the dropped segment's timestamp may be late for the speech.
            let at = at
                .saturating_sub(u64::from(SAMPLE_RATE))
                .clamp(start, out.next_seek);
            if self.retry_without_prompt(at, "repeated the prompt over speech") {
                out.next_seek = at;
            }
        }
        self.advance(out.next_seek);
        out
    }

    /// Turns the chosen segments into [`Segment`]s of `out`, dropping one the previous window
    /// ended with already, and records them for the prompt.
    /// Returns where the first segment dropped with speech under it starts: the model said
    /// something other than what is there (usually the prompt again), so that audio is still to
    /// be transcribed. With `retry_after_repeat` (the caller then decodes it again without the
    /// prompt) the segments after one saying the prompt again are left to that retry.
    fn emit(
        &mut self,
        out: &mut WindowResult,
        emit: Vec<Emit>,
        result: &DecodeResult,
        prompted: bool,
        prompt_copies: &[bool],
        retry_after_repeat: bool,
    ) -> Option<u64> {
        let window_end = out.start_sample + out.audio_samples as u64;
        let prev_words = self.last_words.clone();
        let mut emitted_words: Vec<String> = Vec::new();
        let mut untranscribed = None;
        let loud = self.loud_frames(out.start_sample, out.audio_samples);
        for (i, s) in emit.into_iter().enumerate() {
            let text = self.tokenizer.decode(&s.tokens);
            let words: Vec<String> = text::Words::from_tokens(&self.tokenizer, &s.tokens).words;
            if words.is_empty() {
                continue;
            }
            // Said already: at the end of the previous window, or a whole phrase of what was
            // emitted lately (the model going back to the prompt, as over a long pause; decoded
            // without a prompt, the phrase is in the audio again), or of the prompt where the
            // audio does not say it (`prompt_copies`).
            let repeated_phrase = prompted && says_again(&words, &self.recent_words())
                || prompt_copies.get(i).copied().unwrap_or(false);
            if (out.segments.is_empty() && prev_words.ends_with(&words)) || repeated_phrase {
                log::debug!(target: LOG_TARGET, "dropped as said already: {text:?}");
                let speech =
                    loudness::speech_seconds(&loud, out.start_sample, s.start, s.end.max(s.start));
                if speech > 0.5 && untranscribed.is_none() {
                    untranscribed = Some(s.start);
                    // What the model said after its prompt again follows from it, and the retry
                    // without the prompt decodes that audio again: shown now, it would end the
                    // text shown after the retry's words, and they would be dropped as shown.
                    if repeated_phrase && retry_after_repeat {
                        break;
                    }
                }
                continue;
            }
            // The span by the timestamp tokens: what the decoding state (prompt, look-back)
            // follows, as the seek positions do.
            let span = |start: u64, end: u64, floor: u64| {
                let start = start.clamp(floor.min(window_end), window_end);
                let end = end.clamp(start, window_end);
                loudness::trim_to_speech(&loud, out.start_sample, start, end)
            };
            let by_timestamps = span(s.start, s.end, self.seek);
            // The span shown: where the words are, when the alignment found them, not before the
            // text shown last ends.
            let shown_from = self.seek.max(self.shown_until);
            let (own_start, own_end) = match s.words.filter(|w| w.end > w.start) {
                Some(w) => (w.start, w.end),
                None => (s.start, s.end),
            };
            let Span { start, end } = span(own_start, own_end, shown_from);
            // All of it is in audio whose text was shown already (by its words, or by its
            // timestamps where the alignment has none): the model went back over it (a window
            // started before the end of the text shown, a retry without the prompt) and says it
            // again, often garbled. Shown, it would be a repeat of no length. So is one with at
            // least half of its span there: the text shown ended early (a last segment's end is
            // its timestamp, which can run seconds early) or this window's alignment runs late,
            // and its words are the ones shown.
            let shown_share = share_before(own_start, own_end, shown_from);
            if s.end > s.start && (end <= start || shown_share >= MAX_SHOWN_SHARE) {
                log::debug!(
                    target: LOG_TARGET,
                    "dropped as said already ({:.0}% of it before {:.2} s, where the text shown ends): {text:?}",
                    100.0 * shown_share,
                    self.shown_until as f64 / f64::from(SAMPLE_RATE)
                );
                continue;
            }
            // Text over silence or steady noise is the model talking to itself (often the prompt
            // again): not one frame under the segment rises above the window's noise floor.
            // (Over the span the model gave: clamping to the seek may collapse it.) How many
            // words the loud frames could hold is no test: in fast, continuous or reverberant
            // speech few frames stand 12 dB above the floor, and the words are real.
            let speech =
                loudness::speech_seconds(&loud, out.start_sample, s.start, s.end.max(s.start));
            let judged = s.end > s.start; // a look-back segment may have no span of its own
            if judged && speech == 0.0 {
                log::debug!(target: LOG_TARGET, "dropped over silence: {text:?}");
                continue;
            }
            emitted_words.extend(words.iter().cloned());
            self.recent.push(RecentSegment {
                start: by_timestamps.start,
                end: by_timestamps.end,
                words,
            });
            self.history.push(PromptSegment {
                end: by_timestamps.end,
                tokens: s.tokens.clone(),
            });
            self.shown_until = end;
            out.segments.push(Segment {
                start_sample: start,
                end_sample: end,
                start: start as f64 / f64::from(SAMPLE_RATE),
                end: end as f64 / f64::from(SAMPLE_RATE),
                text,
                tokens: s.tokens,
                avg_logprob: result.avg_logprob,
                no_speech_prob: f64::from(result.no_speech_prob),
                compression_ratio: result.compression_ratio,
                temperature: result.temperature,
                language: out.language.clone(),
                words: s
                    .word_list
                    .into_iter()
                    .map(|w| {
                        let a = w.start_sample.clamp(start, end);
                        let b = w.end_sample.clamp(a, end);
                        let island = loudness::loudest_island(&loud, out.start_sample, a, b);
                        Word {
                            start_sample: island.start,
                            end_sample: island.end,
                            text: w.text,
                        }
                    })
                    .collect(),
            });
        }
        if !emitted_words.is_empty() {
            self.last_words = emitted_words;
        }
        if !self.options.use_prompt || result.temperature > 0.5 {
            self.history.clear();
        }
        // Keep what a look-back could overlap.
        let horizon = window_end.saturating_sub(2 * WINDOW_SAMPLES as u64);
        self.recent.retain(|r| r.end > horizon);
        untranscribed
    }

    /// Where the next window should start instead of `seek` when speech begins shortly before
    /// the end of this window (`n` samples from `start`) after a pause: half a second before that
    /// speech. Whisper often says nothing of words cut at a window's end (or judges the window
    /// silent), and moving on to the window's end would lose their beginning.
    fn stop_before_trailing_speech(&self, start: u64, n: usize, seek: u64) -> u64 {
        let Some(onset) = loudness::trailing_speech_onset(&self.loud_frames(start, n)) else {
            return seek;
        };
        let at = (start + onset as u64 * SAMPLES_PER_TIMESTAMP)
            .saturating_sub(u64::from(SAMPLE_RATE) / 2);
        if at < seek && at >= start + MIN_ADVANCE {
            log::debug!(
                target: LOG_TARGET,
                "  speech from {:.2} s runs into the window's end: next window from {:.2} s",
                (start + onset as u64 * SAMPLES_PER_TIMESTAMP) as f64 / f64::from(SAMPLE_RATE),
                at as f64 / f64::from(SAMPLE_RATE)
            );
            at
        } else {
            seek
        }
    }

    /// The `n` buffered samples from stream sample `start`.
    fn samples(&self, start: u64, n: usize) -> &[f32] {
        let off = (start - self.buffer_start) as usize;
        &self.buffer[off..off + n]
    }

    /// Whether the loudest 20 ms of the `n` samples from `start` are below the silence threshold.
    fn is_quiet(&self, start: u64, n: usize) -> bool {
        self.options
            .silence_threshold_db
            .is_some_and(|db| loudness::is_quiet(self.samples(start, n), db))
    }

    /// Which 20 ms frames of the `n` samples from `start` are loud ([`loudness::loud_frames`]).
    fn loud_frames(&self, start: u64, n: usize) -> Vec<bool> {
        loudness::loud_frames(self.samples(start, n))
    }

    fn lock_language(&mut self, language: Option<u32>) {
        if !self.language_fixed && language.is_some() {
            // Keep the language of the first window with speech.
            self.language = language;
            self.language_fixed = true;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn window_result(
        &self,
        index: u64,
        start: u64,
        n: usize,
        last: bool,
        result: &DecodeResult,
        failed: bool,
        language: Option<u32>,
    ) -> WindowResult {
        WindowResult {
            index,
            start_sample: start,
            audio_samples: n,
            next_seek: start + n as u64,
            segments: Vec::new(),
            no_speech: self.is_silence(result),
            no_speech_prob: f64::from(result.no_speech_prob),
            avg_logprob: result.avg_logprob,
            temperature: result.temperature,
            failed,
            language: language
                .and_then(|l| self.tokenizer.language_code(l))
                .map(str::to_string),
            last,
            timing: TranscribeTiming::default(),
        }
    }

    /// Moves the seek position, keeping one window of audio before it (for the look-back of the
    /// last window).
    fn advance(&mut self, seek: u64) {
        self.seek = seek;
        let keep_from = seek
            .saturating_sub(WINDOW_SAMPLES as u64)
            .max(self.buffer_start);
        let drop = (keep_from - self.buffer_start) as usize;
        self.buffer.drain(..drop.min(self.buffer.len()));
        self.buffer_start += drop as u64;
    }
}

/// The share of the span `start..end` that lies before `at` (1 for an empty span before it).
fn share_before(start: u64, end: u64, at: u64) -> f64 {
    if end <= start {
        return if start < at { 1.0 } else { 0.0 };
    }
    (at.clamp(start, end) - start) as f64 / (end - start) as f64
}

#[cfg(test)]
mod tests;
