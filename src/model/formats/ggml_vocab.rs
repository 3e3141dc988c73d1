//! A [`Tokenizer`] from the vocabulary inside a whisper.cpp ggml file.
//!
//! The file holds the bytes of the text tokens only (OpenAI's tiktoken ranks: id = rank); the
//! special tokens follow at fixed places, as in OpenAI's tokenizer and whisper.cpp's
//! `whisper_vocab`: `<|endoftext|>` right after the text tokens, `<|startoftranscript|>`, one token
//! per language, `<|translate|>`, `<|transcribe|>`, `<|startoflm|>`, `<|startofprev|>`,
//! `<|nospeech|>`, `<|notimestamps|>`, then the 1501 timestamps. The BPE merges are recovered from
//! the ranks the way tiktoken merges (lowest-ranked pair first), so prompts encode as with
//! `tokenizer.json`. The result is handed to [`Tokenizer::from_json`] in `tokenizer.json`'s shape.
use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::model::tokenizer::{bytes_to_unicode, Tokenizer};

/// OpenAI Whisper's language codes in token order (`whisper/tokenizer.py` `LANGUAGES`); large-v3
/// added the 100th, `yue`.
pub const LANGUAGES: [&str; 100] = [
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it",
    "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur",
    "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn",
    "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si",
    "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo",
    "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln",
    "ha", "ba", "jw", "su", "yue",
];

/// Timestamp tokens `<|0.00|>` .. `<|30.00|>`.
const N_TIMESTAMPS: usize = 1501;
/// Longest token whose merge is recovered (Whisper's longest is well under this): bounds the
/// quadratic search on a corrupt file.
const MAX_MERGED_LEN: usize = 256;
/// Special tokens other than languages and timestamps: endoftext, startoftranscript, translate,
/// transcribe, startoflm, startofprev, nospeech, notimestamps.
const N_FIXED_SPECIALS: usize = 8;

/// Where tiktoken's merging splits for `token` using only ranks below its own, when
/// it ends in two parts (`None` for single bytes and unreachable tokens).
fn last_merge(token: &[u8], rank: &HashMap<&[u8], usize>, own: usize) -> Option<usize> {
    // Part boundaries as byte offsets.
    let mut cuts: Vec<usize> = (0..=token.len()).collect();
    loop {
        let best = (0..cuts.len().saturating_sub(2))
            .filter_map(|i| {
                let r = *rank.get(&token[cuts[i]..cuts[i + 2]])?;
                (r < own).then_some((r, i))
            })
            .min();
        match best {
            Some((_, i)) => {
                cuts.remove(i + 1);
            }
            None => break,
        }
    }
    (cuts.len() == 3).then_some(cuts[1])
}

/// Builds the tokenizer of a ggml model: `tokens` are the file's text tokens, `n_vocab` the
/// model's vocabulary size (its embedding rows).
pub fn tokenizer(tokens: &[Vec<u8>], n_vocab: usize) -> Result<Tokenizer, String> {
    let eot = tokens.len();
    let n_langs = n_vocab
        .checked_sub(eot + N_FIXED_SPECIALS + N_TIMESTAMPS)
        .filter(|&n| n <= LANGUAGES.len())
        .ok_or_else(|| {
            format!(
                "{eot} text tokens and a vocabulary of {n_vocab} leave no room for Whisper's \
                 special tokens"
            )
        })?;
    let table = bytes_to_unicode();
    let piece = |b: &[u8]| -> String { b.iter().map(|&c| table[c as usize]).collect() };

    let mut rank: HashMap<&[u8], usize> = HashMap::with_capacity(eot);
    let mut vocab = Map::with_capacity(eot);
    for (id, t) in tokens.iter().enumerate() {
        // An empty entry (id 50256 of the multilingual vocabulary) is no token at all.
        if t.is_empty() {
            continue;
        }
        rank.entry(t.as_slice()).or_insert(id);
        vocab.insert(piece(t), json!(id));
    }
    let mut merges: Vec<(usize, Value)> = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        if t.len() < 2 || t.len() > MAX_MERGED_LEN || rank.get(t.as_slice()) != Some(&id) {
            continue;
        }
        if let Some(cut) = last_merge(t, &rank, id) {
            merges.push((
                id,
                json!(format!("{} {}", piece(&t[..cut]), piece(&t[cut..]))),
            ));
        }
    }
    merges.sort_by_key(|(id, _)| *id);

    let mut names = vec![
        "<|endoftext|>".to_string(),
        "<|startoftranscript|>".to_string(),
    ];
    names.extend(LANGUAGES[..n_langs].iter().map(|l| format!("<|{l}|>")));
    // Tokenizers before large-v3 (and whisper.cpp's) name the no-speech token `<|nocaptions|>`.
    let no_speech = if n_langs < LANGUAGES.len() {
        "nocaptions"
    } else {
        "nospeech"
    };
    for n in [
        "translate",
        "transcribe",
        "startoflm",
        "startofprev",
        no_speech,
        "notimestamps",
    ] {
        names.push(format!("<|{n}|>"));
    }
    let added: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"id": eot + i, "content": n, "special": true}))
        .collect();
    let doc = json!({
        "model": {"vocab": vocab, "merges": merges.into_iter().map(|(_, m)| m).collect::<Vec<_>>()},
        "added_tokens": added,
    });
    Tokenizer::from_json(&doc, n_vocab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_ranks() {
        // 0..4 single bytes, then "ab" (4), "abc" (5), "bc" (6): "abc" merges as "ab" + "c",
        // because "bc" ranks after it.
        let toks: Vec<Vec<u8>> = ["a", "b", "c", " ", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let rank: HashMap<&[u8], usize> = toks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_slice(), i))
            .collect();
        assert_eq!(last_merge(b"abc", &rank, 5), Some(2));
        assert_eq!(last_merge(b"bc", &rank, 6), Some(1));
        assert_eq!(last_merge(b"a", &rank, 0), None);
    }

    #[test]
    fn specials_sit_after_the_text_tokens() {
        let mut toks: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        toks.push(b"he".to_vec());
        toks.push(b"llo".to_vec());
        toks.push(b"ll".to_vec());
        let n_text = toks.len();
        let n_vocab = n_text + N_FIXED_SPECIALS + 99 + N_TIMESTAMPS;
        let t = tokenizer(&toks, n_vocab).unwrap();
        assert_eq!(t.eot() as usize, n_text);
        assert_eq!(t.sot() as usize, n_text + 1);
        assert_eq!(t.special().no_timestamps as usize, n_text + 1 + 99 + 6);
        assert_eq!(t.timestamp_begin() as usize, n_vocab - N_TIMESTAMPS);
        assert_eq!(t.language_code(n_text as u32 + 2), Some("en"));
        assert_eq!(t.decode(&[256, 258, 111]), "hello");
        assert!(tokenizer(&toks, n_text + 10).is_err());
    }
}
