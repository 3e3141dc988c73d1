//! What the decoder needs when a model file carries no generation config (whisper.cpp's ggml
//! files): OpenAI's alignment heads for each released size, told apart by the shapes, and the
//! suppress lists OpenAI's `transcribe` uses by default, computed from the tokenizer.
use crate::model::tokenizer::Tokenizer;
use crate::model::{Dims, WhisperConfig};

/// `(decoder layers, d_model, n_vocab, (layer, head) pairs)`.
type HeadsBySize = (usize, usize, usize, &'static [(usize, usize)]);

/// The alignment heads of each released model whose shapes are its own: the (layer, head) pairs
/// OpenAI published with the models (`_ALIGNMENT_HEADS` in openai-whisper's `__init__.py`), as
/// whisper.cpp lists them (`g_aheads_*` in whisper.cpp). large-v1 and large-v2 have the same
/// shapes, so neither is listed: word timings are then off.
const ALIGNMENT_HEADS: &[HeadsBySize] = &[
    // tiny.en, tiny
    (
        4,
        384,
        51864,
        &[
            (1, 0),
            (2, 0),
            (2, 5),
            (3, 0),
            (3, 1),
            (3, 2),
            (3, 3),
            (3, 4),
        ],
    ),
    (
        4,
        384,
        51865,
        &[(2, 2), (3, 0), (3, 2), (3, 3), (3, 4), (3, 5)],
    ),
    // base.en, base
    (6, 512, 51864, &[(3, 3), (4, 7), (5, 1), (5, 5), (5, 7)]),
    (
        6,
        512,
        51865,
        &[
            (3, 1),
            (4, 2),
            (4, 3),
            (4, 7),
            (5, 1),
            (5, 2),
            (5, 4),
            (5, 6),
        ],
    ),
    // small.en, small
    (
        12,
        768,
        51864,
        &[
            (6, 6),
            (7, 0),
            (7, 3),
            (7, 8),
            (8, 2),
            (8, 5),
            (8, 7),
            (9, 0),
            (9, 4),
            (9, 8),
            (9, 10),
            (10, 0),
            (10, 1),
            (10, 2),
            (10, 3),
            (10, 6),
            (10, 11),
            (11, 2),
            (11, 4),
        ],
    ),
    (
        12,
        768,
        51865,
        &[
            (5, 3),
            (5, 9),
            (8, 0),
            (8, 4),
            (8, 7),
            (8, 8),
            (9, 0),
            (9, 7),
            (9, 9),
            (10, 5),
        ],
    ),
    // medium.en, medium
    (
        24,
        1024,
        51864,
        &[
            (11, 4),
            (14, 1),
            (14, 12),
            (14, 14),
            (15, 4),
            (16, 0),
            (16, 4),
            (16, 9),
            (17, 12),
            (17, 14),
            (18, 7),
            (18, 10),
            (18, 15),
            (20, 0),
            (20, 3),
            (20, 9),
            (20, 14),
            (21, 12),
        ],
    ),
    (
        24,
        1024,
        51865,
        &[(13, 15), (15, 4), (15, 15), (16, 1), (20, 0), (23, 4)],
    ),
    // large-v3, large-v3-turbo
    (
        32,
        1280,
        51866,
        &[
            (7, 0),
            (10, 17),
            (12, 18),
            (13, 12),
            (16, 1),
            (17, 14),
            (19, 11),
            (21, 4),
            (24, 1),
            (25, 6),
        ],
    ),
    (
        4,
        1280,
        51866,
        &[(2, 4), (2, 11), (3, 3), (3, 6), (3, 11), (3, 14)],
    ),
];

/// The alignment heads of the released model with these shapes (empty if none or ambiguous).
pub fn alignment_heads(dims: &Dims) -> Vec<(usize, usize)> {
    ALIGNMENT_HEADS
        .iter()
        .find(|&&(layers, d, vocab, _)| {
            layers == dims.n_decoder_layers && d == dims.d_model && vocab == dims.n_vocab
        })
        .map(|&(_, _, _, heads)| heads.to_vec())
        .unwrap_or_default()
}

/// Symbols OpenAI's `non_speech_tokens` suppresses (openai-whisper `tokenizer.py`): single
/// characters and runs, each as a token with and without a leading space.
const NON_SPEECH_SYMBOLS: &str = "\" # ( ) * + / : ; < = > @ [ \\ ] ^ _ ` { | } ~ 「 」 『 』 \
                                  << >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪";
/// Musical symbols, suppressed even when they take several tokens (their first is).
const MUSIC_SYMBOLS: &str = "♩♪♫♬♭♮♯";

/// OpenAI's default `suppress_tokens` (`"-1"`): the non-speech tokens, and the special tokens
/// that never appear in a transcript.
pub fn suppress_tokens(tok: &Tokenizer) -> Vec<i64> {
    let mut ids: Vec<u32> = Vec::new();
    // " -" and " '" are suppressed as single tokens even though the symbols are kept.
    for s in [" -", " '"] {
        ids.extend(tok.encode(s).first());
    }
    for sym in NON_SPEECH_SYMBOLS.split(' ') {
        for text in [sym.to_string(), format!(" {sym}")] {
            let t = tok.encode(&text);
            if t.len() == 1 {
                ids.push(t[0]);
            }
        }
    }
    for sym in MUSIC_SYMBOLS.chars() {
        for text in [sym.to_string(), format!(" {sym}")] {
            ids.extend(tok.encode(&text).first());
        }
    }
    let sp = tok.special();
    ids.extend(
        [
            sp.translate,
            sp.transcribe,
            Some(sp.sot),
            sp.sot_prev,
            sp.sot_lm,
            sp.no_speech,
        ]
        .into_iter()
        .flatten(),
    );
    let mut ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The configuration OpenAI's `transcribe` would use for a model with these shapes and tokenizer.
pub fn config(dims: &Dims, tok: &Tokenizer) -> WhisperConfig {
    let mut begin: Vec<i64> = tok.encode(" ").into_iter().map(i64::from).collect();
    begin.push(i64::from(tok.eot()));
    WhisperConfig {
        suppress_ids: suppress_tokens(tok),
        suppress_ids_begin: begin,
        alignment_heads: alignment_heads(dims),
    }
}
