//! Whisper's tokenizer, read from the model's `tokenizer.json` (Hugging Face format, byte-level BPE).
//!
//! Decoding turns ids back into UTF-8: every vocabulary entry is a string over GPT-2's
//! byte-to-unicode alphabet (each byte mapped to a printable character), so reversing that table
//! gives the entry's bytes; the bytes of a sequence are joined and read as UTF-8, lossily, since a
//! partial sequence may end inside a multi-byte character. Special tokens (`added_tokens`) are found
//! by name, never by hard-coded ids, so the multilingual (51865) and English-only (51864)
//! vocabularies both work. Timestamp tokens (`<|0.00|>` to `<|30.00|>`, 0.02 s apart) are not in
//! `tokenizer.json`: they follow `<|notimestamps|>` up to the end of the model's vocabulary.
//!
//! Encoding (text to ids) is byte-level BPE with GPT-2's pre-tokenizer; the transcriber only needs
//! it for an initial prompt given as text.
use std::collections::HashMap;
use std::path::Path;

use super::ModelError;

pub use crate::mel::TIMESTAMP_STEP;
/// Timestamp tokens of every Whisper model: `<|0.00|>` to `<|30.00|>` in [`TIMESTAMP_STEP`]s
/// (OpenAI's `whisper/tokenizer.py`: `[f"<|{i * 0.02:.2f}|>" for i in range(1501)]`).
pub const WHISPER_TIMESTAMPS: usize = 1501;

/// GPT-2's byte-to-unicode table: byte `b` is written as character `table[b]`.
pub(crate) fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut n = 0u32;
    for b in 0u32..256 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).expect("latin-1 code point")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("code point below 512")
        };
    }
    table
}

/// Ids of the special tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    pub eot: u32,
    pub sot: u32,
    pub transcribe: Option<u32>,
    pub translate: Option<u32>,
    pub sot_prev: Option<u32>,
    pub sot_lm: Option<u32>,
    /// `<|nospeech|>` (newer vocabularies) or `<|nocaptions|>`.
    pub no_speech: Option<u32>,
    pub no_timestamps: u32,
    /// `<|0.00|>`; every later id up to the end of the vocabulary is a timestamp.
    pub timestamp_begin: u32,
}

/// Byte-level BPE tokenizer of a Whisper model.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    /// Bytes of every id below `timestamp_begin` (special tokens: their name).
    pieces: Vec<Vec<u8>>,
    special: SpecialTokens,
    /// `(code, id)` of the language tokens `<|en|>`, `<|zh|>`, ... in id order.
    languages: Vec<(String, u32)>,
    /// Ids of the added (special) tokens.
    is_special: Vec<bool>,
    /// Vocabulary size (ids `0..n_vocab`, timestamps included).
    n_vocab: usize,
    multilingual: bool,
    /// Encoding: piece string (byte-to-unicode alphabet) to id, and merge ranks.
    vocab: HashMap<String, u32>,
    merges: HashMap<(String, String), usize>,
    byte_char: [char; 256],
}

fn unusable(path: &Path, reason: String) -> ModelError {
    ModelError::Tokenizer {
        path: path.to_path_buf(),
        reason,
    }
}

impl Tokenizer {
    /// Reads `tokenizer.json`; `n_vocab` is the model's vocabulary size (the rows of
    /// `decoder/embeddings/weight`), which fixes how many timestamp tokens there are.
    pub fn load(path: &Path, n_vocab: usize) -> Result<Tokenizer, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ModelError::Config {
                path: path.to_path_buf(),
                source: e,
            })?;
        let tokenizer = Self::from_json(&json, n_vocab).map_err(|reason| unusable(path, reason))?;
        tokenizer
            .check_weights()
            .map_err(|reason| unusable(path, reason))?;
        Ok(tokenizer)
    }

    /// Whether this tokenizer belongs to weights of `n_vocab` tokens: every Whisper model has
    /// [`WHISPER_TIMESTAMPS`] timestamp tokens after its special tokens, so the vocabulary size
    /// and `<|0.00|>` (one past `<|notimestamps|>`) must leave exactly that many. A tokenizer
    /// of another model (tiny.en's with base's weights, or the other way round) is one token off.
    fn check_weights(&self) -> Result<(), String> {
        let timestamps = self.n_vocab as i64 - i64::from(self.special.timestamp_begin);
        if timestamps == WHISPER_TIMESTAMPS as i64 {
            return Ok(());
        }
        Err(format!(
            "the tokenizer is from another model: the weights have {} tokens, so with its \
             <|0.00|> at id {} (<|endoftext|> at {}) there would be {timestamps} timestamp tokens \
             instead of Whisper's {WHISPER_TIMESTAMPS}; use the tokenizer.json converted with \
             these weights",
            self.n_vocab, self.special.timestamp_begin, self.special.eot
        ))
    }

    /// Builds the tokenizer from parsed `tokenizer.json`.
    pub fn from_json(json: &serde_json::Value, n_vocab: usize) -> Result<Tokenizer, String> {
        let byte_char = bytes_to_unicode();
        let char_byte: HashMap<char, u8> = byte_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();

        let vocab_json = json
            .pointer("/model/vocab")
            .and_then(|v| v.as_object())
            .ok_or("no model.vocab object")?;
        let mut pieces: Vec<Option<Vec<u8>>> = vec![None; n_vocab];
        let mut vocab = HashMap::with_capacity(vocab_json.len());
        for (piece, id) in vocab_json {
            let id = id
                .as_u64()
                .ok_or_else(|| format!("vocab entry {piece:?} has no integer id"))?
                as usize;
            if id >= n_vocab {
                return Err(format!(
                    "vocab entry {piece:?} has id {id}, beyond the model's {n_vocab} tokens"
                ));
            }
            let bytes: Option<Vec<u8>> =
                piece.chars().map(|c| char_byte.get(&c).copied()).collect();
            let bytes = bytes.ok_or_else(|| {
                format!("vocab entry {piece:?} is not written in the byte-level alphabet")
            })?;
            pieces[id] = Some(bytes);
            vocab.insert(piece.clone(), id as u32);
        }

        let mut is_special = vec![false; n_vocab];
        let mut by_name: HashMap<String, u32> = HashMap::new();
        if let Some(added) = json.get("added_tokens").and_then(|a| a.as_array()) {
            for t in added {
                let (Some(id), Some(content)) = (
                    t.get("id").and_then(|v| v.as_u64()),
                    t.get("content").and_then(|v| v.as_str()),
                ) else {
                    return Err("an added token lacks its id or content".into());
                };
                let id = id as usize;
                if id >= n_vocab {
                    return Err(format!(
                        "added token {content:?} has id {id}, beyond the model's {n_vocab} tokens"
                    ));
                }
                pieces[id] = Some(content.as_bytes().to_vec());
                is_special[id] = t.get("special").and_then(|v| v.as_bool()).unwrap_or(true);
                by_name.insert(content.to_string(), id as u32);
            }
        }

        let need = |name: &str| -> Result<u32, String> {
            by_name
                .get(name)
                .copied()
                .ok_or_else(|| format!("special token {name} is missing"))
        };
        let eot = need("<|endoftext|>")?;
        let sot = need("<|startoftranscript|>")?;
        let no_timestamps = need("<|notimestamps|>")?;
        let timestamp_begin = by_name
            .get("<|0.00|>")
            .copied()
            .unwrap_or(no_timestamps + 1);
        if timestamp_begin as usize >= n_vocab {
            return Err(format!(
                "no room for timestamp tokens: <|0.00|> would be {timestamp_begin}, the model has \
                 {n_vocab} tokens"
            ));
        }
        let special = SpecialTokens {
            eot,
            sot,
            transcribe: by_name.get("<|transcribe|>").copied(),
            translate: by_name.get("<|translate|>").copied(),
            sot_prev: by_name.get("<|startofprev|>").copied(),
            sot_lm: by_name.get("<|startoflm|>").copied(),
            no_speech: by_name
                .get("<|nospeech|>")
                .or_else(|| by_name.get("<|nocaptions|>"))
                .copied(),
            no_timestamps,
            timestamp_begin,
        };
        // Language tokens sit between <|startoftranscript|> and the task tokens.
        let lang_end = special
            .translate
            .or(special.transcribe)
            .unwrap_or(no_timestamps);
        let mut languages: Vec<(String, u32)> = by_name
            .iter()
            .filter(|(_, &id)| id > sot && id < lang_end)
            .filter_map(|(name, &id)| {
                let code = name.strip_prefix("<|")?.strip_suffix("|>")?;
                (!code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                    .then(|| (code.to_string(), id))
            })
            .collect();
        languages.sort_by_key(|&(_, id)| id);

        // Timestamps: names for completeness (they decode to nothing in text).
        let pieces: Vec<Vec<u8>> = pieces
            .into_iter()
            .enumerate()
            .map(|(id, p)| {
                p.unwrap_or_else(|| {
                    if id >= timestamp_begin as usize {
                        let t = (id - timestamp_begin as usize) as f64 * TIMESTAMP_STEP;
                        format!("<|{t:.2}|>").into_bytes()
                    } else {
                        Vec::new()
                    }
                })
            })
            .collect();
        for id in timestamp_begin as usize..n_vocab {
            is_special[id] = true;
        }

        let mut merges = HashMap::new();
        if let Some(list) = json.pointer("/model/merges").and_then(|m| m.as_array()) {
            for (rank, m) in list.iter().enumerate() {
                let pair = match m {
                    serde_json::Value::String(s) => s
                        .split_once(' ')
                        .map(|(a, b)| (a.to_string(), b.to_string())),
                    serde_json::Value::Array(a) if a.len() == 2 => {
                        match (a[0].as_str(), a[1].as_str()) {
                            (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                if let Some(pair) = pair {
                    merges.entry(pair).or_insert(rank);
                }
            }
        }

        // The multilingual vocabulary has <|endoftext|> at 50257 (GPT-2's is 50256).
        let multilingual = languages.len() > 1 && n_vocab >= 51865;
        Ok(Tokenizer {
            pieces,
            special,
            languages,
            is_special,
            n_vocab,
            multilingual,
            vocab,
            merges,
            byte_char,
        })
    }

    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    pub fn eot(&self) -> u32 {
        self.special.eot
    }

    pub fn sot(&self) -> u32 {
        self.special.sot
    }

    pub fn timestamp_begin(&self) -> u32 {
        self.special.timestamp_begin
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Whether the model transcribes several languages (language and task tokens in the prompt).
    pub fn is_multilingual(&self) -> bool {
        self.multilingual
    }

    pub fn is_timestamp(&self, id: u32) -> bool {
        id >= self.special.timestamp_begin && (id as usize) < self.n_vocab
    }

    /// Special tokens: `<|...|>` markers and timestamps.
    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(true)
    }

    /// Text tokens: below `<|endoftext|>`.
    pub fn is_text(&self, id: u32) -> bool {
        id < self.special.eot
    }

    /// Seconds of a timestamp token (`None` for other tokens).
    pub fn timestamp_seconds(&self, id: u32) -> Option<f64> {
        self.is_timestamp(id)
            .then(|| (id - self.special.timestamp_begin) as f64 * TIMESTAMP_STEP)
    }

    /// The language tokens, `(code, id)` in id order (empty for English-only models).
    pub fn languages(&self) -> &[(String, u32)] {
        if self.multilingual {
            &self.languages
        } else {
            &[]
        }
    }

    /// The id of `<|code|>` (e.g. `"en"`), for multilingual models.
    pub fn language_token(&self, code: &str) -> Option<u32> {
        self.languages()
            .iter()
            .find(|(c, _)| c == code)
            .map(|&(_, id)| id)
    }

    /// The code of a language token (`"en"` for `<|en|>`).
    pub fn language_code(&self, id: u32) -> Option<&str> {
        self.languages
            .iter()
            .find(|&&(_, i)| i == id)
            .map(|(c, _)| c.as_str())
    }

    /// The raw bytes of one token (special tokens: their name).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p.as_slice())
    }

    /// Text of `ids`, special tokens (and timestamps) left out; lossy UTF-8.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter(|&&id| !self.is_special(id))
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Text of `ids` with special tokens and timestamps written out (`<|0.00|> Hello<|1.20|>`).
    pub fn decode_with_timestamps(&self, ids: &[u32]) -> String {
        let mut out = String::new();
        let mut bytes = Vec::new();
        for &id in ids {
            if self.is_special(id) {
                out.push_str(&String::from_utf8_lossy(&bytes));
                bytes.clear();
                out.push_str(&String::from_utf8_lossy(self.token_bytes(id)));
            } else {
                bytes.extend_from_slice(self.token_bytes(id));
            }
        }
        out.push_str(&String::from_utf8_lossy(&bytes));
        out
    }

    /// Ids of `text` (no special tokens are recognised in it): GPT-2's pre-tokenizer, then BPE on
    /// each word. Needs the merges of `tokenizer.json`; without them, falls back to one token per
    /// vocabulary piece found greedily.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for word in pretokenize(text) {
            let mapped: String = word.bytes().map(|b| self.byte_char[b as usize]).collect();
            if let Some(&id) = self.vocab.get(&mapped) {
                out.push(id);
                continue;
            }
            let mut parts: Vec<String> = mapped.chars().map(String::from).collect();
            loop {
                let best = parts
                    .windows(2)
                    .enumerate()
                    .filter_map(|(i, w)| {
                        self.merges
                            .get(&(w[0].clone(), w[1].clone()))
                            .map(|&r| (r, i))
                    })
                    .min();
                let Some((_, i)) = best else { break };
                let merged = format!("{}{}", parts[i], parts[i + 1]);
                parts[i] = merged;
                parts.remove(i + 1);
            }
            for p in parts {
                if let Some(&id) = self.vocab.get(&p) {
                    out.push(id);
                } else {
                    // Unknown piece (no merges): one token per byte.
                    for c in p.chars() {
                        if let Some(&id) = self.vocab.get(&c.to_string()) {
                            out.push(id);
                        }
                    }
                }
            }
        }
        out
    }
}

/// GPT-2's pre-tokenizer, `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`,
/// written out by hand.
fn pretokenize(text: &str) -> Vec<&str> {
    #[derive(PartialEq, Clone, Copy)]
    enum Class {
        Letter,
        Number,
        Space,
        Other,
    }
    let class = |c: char| {
        if c.is_alphabetic() {
            Class::Letter
        } else if c.is_numeric() {
            Class::Number
        } else if c.is_whitespace() {
            Class::Space
        } else {
            Class::Other
        }
    };
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = chars[i].0;
        // Contractions.
        if chars[i].1 == '\'' {
            let rest = &text[start + 1..];
            let suffix = ["re", "ve", "ll", "s", "t", "m", "d"]
                .into_iter()
                .find(|s| rest.starts_with(s));
            if let Some(s) = suffix {
                let n = 1 + s.len();
                out.push(&text[start..start + n]);
                i += n;
                continue;
            }
        }
        let c0 = class(chars[i].1);
        // " ?X+" for letters, numbers and others.
        let (lead, first) =
            if chars[i].1 == ' ' && i + 1 < chars.len() && class(chars[i + 1].1) != Class::Space {
                (1, class(chars[i + 1].1))
            } else {
                (0, c0)
            };
        if first != Class::Space {
            let mut j = i + lead;
            while j < chars.len() && class(chars[j].1) == first {
                if first == Class::Other && chars[j].1 == '\'' && j > i + lead {
                    // A contraction starts here.
                    let rest = &text[chars[j].0 + 1..];
                    if ["re", "ve", "ll", "s", "t", "m", "d"]
                        .iter()
                        .any(|s| rest.starts_with(s))
                    {
                        break;
                    }
                }
                j += 1;
            }
            out.push(&text[start..end_of(j)]);
            i = j;
            continue;
        }
        // Whitespace run: leave the last space for the next word if one follows.
        let mut j = i;
        while j < chars.len() && class(chars[j].1) == Class::Space {
            j += 1;
        }
        if j < chars.len() && j - i > 1 {
            j -= 1;
        }
        out.push(&text[start..end_of(j)]);
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = bytes_to_unicode();
        let mut seen = std::collections::HashSet::new();
        for c in t {
            assert!(seen.insert(c));
        }
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn pretokenizer_splits_like_gpt2() {
        assert_eq!(
            pretokenize("Hello world, it's 2024!  Yes"),
            vec!["Hello", " world", ",", " it", "'s", " 2024", "!", " ", " Yes"]
        );
        assert_eq!(pretokenize(" a"), vec![" a"]);
        assert_eq!(pretokenize("a  "), vec!["a", "  "]);
    }

    fn tiny_json() -> serde_json::Value {
        serde_json::json!({
            "model": {
                "type": "BPE",
                "vocab": {"H": 0, "i": 1, "Ġ": 2, "Hi": 3, "Ġt": 4, "t": 5, "Ãł": 6, "Ġthere": 7,
                          "h": 8, "e": 9, "r": 10, "th": 11, "ther": 12, "Ġth": 13},
                "merges": ["H i", "Ġ t", "t h", "Ġ th", "e r", "th er", "Ġth er", "Ġther e"]
            },
            "added_tokens": [
                {"id": 14, "content": "<|endoftext|>", "special": true},
                {"id": 15, "content": "<|startoftranscript|>", "special": true},
                {"id": 16, "content": "<|en|>", "special": true},
                {"id": 17, "content": "<|fr|>", "special": true},
                {"id": 18, "content": "<|translate|>", "special": true},
                {"id": 19, "content": "<|transcribe|>", "special": true},
                {"id": 20, "content": "<|startoflm|>", "special": true},
                {"id": 21, "content": "<|startofprev|>", "special": true},
                {"id": 22, "content": "<|nocaptions|>", "special": true},
                {"id": 23, "content": "<|notimestamps|>", "special": true}
            ]
        })
    }

    #[test]
    fn decodes_and_finds_specials() {
        let t = Tokenizer::from_json(&tiny_json(), 30).unwrap();
        let s = t.special();
        assert_eq!(
            (s.eot, s.sot, s.no_timestamps, s.timestamp_begin),
            (14, 15, 23, 24)
        );
        assert_eq!(s.no_speech, Some(22));
        assert_eq!(t.timestamp_seconds(26), Some(0.04));
        assert_eq!(t.decode(&[3, 7, 24, 14]), "Hi there");
        assert_eq!(t.decode_with_timestamps(&[24, 3, 25]), "<|0.00|>Hi<|0.02|>");
        // "Ãł" is the two bytes 0xC3 0xA0: "à" in UTF-8.
        assert_eq!(t.decode(&[6]), "\u{e0}");
        assert_eq!(t.encode("Hi there"), vec![3, 7]);
        assert!(!t.is_multilingual()); // vocabulary smaller than 51865
        assert_eq!(t.language_code(17), Some("fr"));
    }
}
