//! Text helpers of the transcriber: words of a token sequence, repetition detection, the
//! compression ratio of Whisper's fallback rule, and the English normalisation and word error rate
//! used for evaluation.
use crate::model::tokenizer::Tokenizer;

/// Normalised words (lower case, letters and digits only) of a token sequence, each with the index
/// of the token it starts at. Timestamps and special tokens are skipped.
#[derive(Clone, Debug, Default)]
pub struct Words {
    pub words: Vec<String>,
    pub token_index: Vec<usize>,
}

impl Words {
    /// Words are runs of letters and digits (so "tell-to-tell" is three words).
    pub fn from_tokens(tok: &Tokenizer, tokens: &[u32]) -> Words {
        let mut out = Words::default();
        let mut cur = String::new();
        let mut cur_start = 0;
        // Bytes of a character split across tokens wait here.
        let mut pending: Vec<u8> = Vec::new();
        let mut pending_start = 0;
        for (i, &t) in tokens.iter().enumerate() {
            if tok.is_special(t) {
                continue;
            }
            if pending.is_empty() {
                pending_start = i;
            }
            pending.extend_from_slice(tok.token_bytes(t));
            let text = match std::str::from_utf8(&pending) {
                Ok(s) => s.to_string(),
                Err(e) if e.error_len().is_none() && pending.len() < 8 => continue,
                Err(_) => String::from_utf8_lossy(&pending).into_owned(),
            };
            pending.clear();
            for c in text.chars() {
                if c.is_alphanumeric() {
                    if cur.is_empty() {
                        cur_start = pending_start;
                    }
                    cur.extend(c.to_lowercase());
                } else if !cur.is_empty() {
                    out.words.push(std::mem::take(&mut cur));
                    out.token_index.push(cur_start);
                }
            }
        }
        if !cur.is_empty() {
            out.words.push(cur);
            out.token_index.push(cur_start);
        }
        out
    }
}

/// Lower case, letters and digits only.
pub fn normalize_word(w: &str) -> String {
    w.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(|c| c.to_lowercase())
        .collect()
}

/// Whether a word or text ends a sentence (`.`, `?` or `!`, closing quotes and brackets aside).
pub fn sentence_end(text: &str) -> bool {
    text.trim_end_matches(['"', '\'', ')', '\u{201d}'])
        .ends_with(['.', '?', '!'])
}

/// If the words end in a loop, the index of the word where the repeated copy starts (keeping one
/// copy). A loop is a block of `p` words repeated back to back `c` times at the end with
/// `p >= 4, c >= 2` (a phrase said twice), `p >= 2, c >= 3`, or `c >= 6` (one word: people say
/// "words, words, words, words"; a model stuck on a word goes on much longer); or the last six
/// words found earlier in the words.
pub fn repetition_start(words: &[String]) -> Option<usize> {
    let n = words.len();
    for p in 1..=n / 2 {
        let block = &words[n - p..];
        let mut c = 1;
        while (c + 1) * p <= n && &words[n - (c + 1) * p..n - c * p] == block {
            c += 1;
        }
        if (p >= 4 && c >= 2) || (p >= 2 && c >= 3) || c >= SAME_WORD_LOOP {
            return Some(n - p * (c - 1));
        }
    }
    // A phrase said again further on (the model going back to an earlier sentence).
    if n >= 2 * PHRASE {
        let tail = &words[n - PHRASE..];
        if words[..n - PHRASE].windows(PHRASE).any(|w| w == tail) {
            return Some(n - PHRASE);
        }
    }
    None
}

/// Times one word said back to back that [`repetition_start`] takes for a loop.
const SAME_WORD_LOOP: usize = 6;

/// Words of a phrase that [`repetition_start`] does not accept twice in one window.
const PHRASE: usize = 6;

/// Whisper's compression ratio: UTF-8 length over zlib-compressed length.
pub fn compression_ratio(text: &str) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let z = miniz_oxide::deflate::compress_to_vec_zlib(text.as_bytes(), 6);
    text.len() as f64 / z.len().max(1) as f64
}

const UNITS: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 8] = [
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

fn number_word(w: &str) -> Option<u64> {
    if let Some(i) = UNITS.iter().position(|&u| u == w) {
        return Some(i as u64);
    }
    TENS.iter()
        .position(|&t| t == w)
        .map(|i| 20 + 10 * i as u64)
}

/// Replaces runs of spelled-out numbers by digits ("fifty" and "50" both give "50",
/// "one hundred twenty" gives "120").
fn numbers_to_digits(words: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let (mut total, mut current, mut j, mut any) = (0u64, 0u64, i, false);
        while j < words.len() {
            let w = words[j].as_str();
            if let Some(v) = number_word(w) {
                // "twenty five" adds up; "five five" is two numbers.
                if any && current % 10 != 0 && v < 10 {
                    break;
                }
                if any && current % 100 != 0 && v >= 10 {
                    break;
                }
                current += v;
            } else if w == "hundred" && any {
                current = current.max(1) * 100;
            } else if w == "thousand" && any {
                total += current.max(1) * 1000;
                current = 0;
            } else if w == "million" && any {
                total += current.max(1) * 1_000_000;
                current = 0;
            } else {
                break;
            }
            any = true;
            j += 1;
        }
        if any {
            out.push((total + current).to_string());
            i = j;
        } else {
            out.push(words[i].clone());
            i += 1;
        }
    }
    out
}

/// English normalisation in the spirit of Whisper's `EnglishTextNormalizer`: lower case, hyphens
/// to spaces, apostrophes dropped, other punctuation removed, digit separators removed, spelled-out
/// numbers as digits.
pub fn normalize_english(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let chars: Vec<char> = lower.chars().collect();
    let mut cleaned = String::with_capacity(lower.len());
    for (i, &c) in chars.iter().enumerate() {
        let prev_digit = i > 0 && chars[i - 1].is_ascii_digit();
        let next_digit = chars.get(i + 1).is_some_and(|c| c.is_ascii_digit());
        if c.is_alphanumeric() {
            cleaned.push(c);
        } else if c == '\'' || c == '\u{2019}' {
            // "it's" -> "its", on both sides alike.
        } else if (c == ',' || c == '.') && prev_digit && next_digit {
            if c == '.' {
                cleaned.push('.');
            }
        } else {
            cleaned.push(' ');
        }
    }
    let words: Vec<String> = cleaned.split_whitespace().map(str::to_string).collect();
    numbers_to_digits(words)
}

/// Word-level edit distance (substitutions + deletions + insertions) of `hyp` against `reference`.
pub fn word_errors(reference: &[String], hyp: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=hyp.len()).collect();
    let mut cur = vec![0; hyp.len() + 1];
    for (i, r) in reference.iter().enumerate() {
        cur[0] = i + 1;
        for (j, h) in hyp.iter().enumerate() {
            let sub = prev[j] + usize::from(r != h);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[hyp.len()]
}

/// Edit distances between `a` and every prefix of `b`: `out[j]` for `b[..j]`.
pub fn edit_distance_to_prefixes(a: &[String], b: &[String]) -> Vec<usize> {
    // Rows over a, columns over b.
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(x != y);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev
}

/// Reads a RIFF WAVE file of 16-bit PCM or 32-bit float samples, averaging channels. Returns the
/// samples and the sample rate.
pub fn read_wav(bytes: &[u8]) -> Result<(Vec<f32>, u32), String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a RIFF WAVE file".into());
    }
    let mut pos = 12;
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
        let body = &bytes[pos + 8..(pos + 8 + len).min(bytes.len())];
        if id == b"fmt " {
            if body.len() < 16 {
                return Err("short fmt chunk".into());
            }
            let u16_at = |o: usize| u16::from_le_bytes([body[o], body[o + 1]]);
            let rate = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes"));
            fmt = Some((u16_at(0), u16_at(2), rate, u16_at(14)));
        } else if id == b"data" {
            let (format, channels, rate, bits) = fmt.ok_or("data chunk before fmt chunk")?;
            let channels = channels.max(1) as usize;
            let mono: Vec<f32> = match (format, bits) {
                (1, 16) | (0xFFFE, 16) => body
                    .chunks_exact(2 * channels)
                    .map(|f| {
                        f.chunks_exact(2)
                            .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
                            .sum::<f32>()
                            / channels as f32
                    })
                    .collect(),
                (3, 32) | (0xFFFE, 32) => body
                    .chunks_exact(4 * channels)
                    .map(|f| {
                        f.chunks_exact(4)
                            .map(|s| f32::from_le_bytes([s[0], s[1], s[2], s[3]]))
                            .sum::<f32>()
                            / channels as f32
                    })
                    .collect(),
                _ => return Err(format!("unsupported WAVE format {format} with {bits} bits")),
            };
            return Ok((mono, rate));
        }
        pos += 8 + len + (len & 1);
    }
    Err("no data chunk".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn sentence_ends() {
        for (text, expect) in [
            ("country.", true),
            ("you?", true),
            ("\"Stop!\"", true),
            ("Mr", false),
            ("Americans,", false),
            ("", false),
        ] {
            assert_eq!(sentence_end(text), expect, "{text:?}");
        }
    }

    #[test]
    fn repetition() {
        assert_eq!(repetition_start(&w("a b c d a b c d")), Some(4));
        assert_eq!(repetition_start(&w("x a b a b a b")), Some(3));
        assert_eq!(repetition_start(&w("no no no no no no")), Some(1));
        assert_eq!(
            repetition_start(&w("some more words words words words")),
            None,
            "a word said four times is speech (mfa_acoustic_corpus.wav)"
        );
        assert_eq!(repetition_start(&w("no no no")), None);
        let jfk = "and so my fellow americans ask not what your country can do for you ask what \
                   you can do for your country";
        assert_eq!(repetition_start(&w(jfk)), None);
        let looped = format!("{jfk} ask what you can do for your country");
        assert_eq!(repetition_start(&w(&looped)), Some(w(jfk).len()));
        let back =
            "the salt breeze came across from the sea the girl sold bonds the salt breeze came \
                    across from";
        assert_eq!(repetition_start(&w(back)), Some(12));
    }

    #[test]
    fn normalisation() {
        assert_eq!(
            normalize_english("The girl at the booth sold fifty bonds."),
            w("the girl at the booth sold 50 bonds")
        );
        assert_eq!(
            normalize_english("The girl at the booth sold 50 bonds"),
            w("the girl at the booth sold 50 bonds")
        );
        assert_eq!(
            normalize_english("It's a well-known fact"),
            w("its a well known fact")
        );
        assert_eq!(normalize_english("one hundred twenty five"), w("125"));
        assert_eq!(normalize_english("1,000 and twenty-one"), w("1000 and 21"));
        assert_eq!(normalize_english("five five"), w("5 5"));
    }

    #[test]
    fn wer() {
        assert_eq!(word_errors(&w("a b c"), &w("a b c")), 0);
        assert_eq!(word_errors(&w("a b c"), &w("a x c d")), 2);
        assert_eq!(word_errors(&w("a b c"), &w("")), 3);
    }

    #[test]
    fn compression() {
        let r = compression_ratio(&"ask what you can do for your country ".repeat(10));
        assert!(r > 2.4, "{r}");
        let r = compression_ratio("And so my fellow Americans, ask not what your country can do");
        assert!(r < 2.0, "{r}");
    }
}
