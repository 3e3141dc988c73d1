//! Whether a segment's words say again what was said before: the tests behind the rules that
//! drop a repeat (the model copying its prompt, or text it emitted lately).

/// A segment of at least this many words found word for word in earlier text is the model
/// repeating itself (its loop check takes six words said again for a loop too).
pub(super) const REPEATED_PHRASE_WORDS: usize = 6;

/// A phrase of the prompt said again is the audio's when the window decoded without the prompt
/// holds at least this share of its words, in order (one word heard differently, as happens
/// between two decodings, does not make a true repeat a copy).
pub(super) const CONFIRMED_SHARE: f64 = 0.5;

/// `words` (at least [`REPEATED_PHRASE_WORDS`] of them) occur word for word in `earlier`.
pub(super) fn says_again(words: &[String], earlier: &[String]) -> bool {
    words.len() >= REPEATED_PHRASE_WORDS && earlier.windows(words.len()).any(|w| w == words)
}

/// The share of `words` found in `other` in the same order (longest common subsequence).
pub(super) fn share_in_order(words: &[String], other: &[String]) -> f64 {
    if words.is_empty() {
        return 0.0;
    }
    common_in_order_to_prefixes(words, other)[other.len()] as f64 / words.len() as f64
}

/// For each `j`, how many of `words` occur in `other[..j]` in the same order (the longest common
/// subsequence with every prefix of `other`: the last row of its table).
pub(super) fn common_in_order_to_prefixes(words: &[String], other: &[String]) -> Vec<usize> {
    // One row of the longest-common-subsequence table at a time.
    let mut row = vec![0usize; other.len() + 1];
    for w in words {
        let mut diagonal = 0;
        for (j, o) in other.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if w == o {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn a_phrase_said_again() {
        // (segment, earlier text, said again)
        let table = [
            ("the girl at the root sold fifty months", "the salt breeze came across from the sea the girl at the root sold fifty months", true),
            ("the girl at the root sold fifty months", "the girl at the moot sold fifty months", false),
            // Too short to tell a repeat from a common phrase.
            ("and so my friend", "and so my friend", false),
            ("ask what you can do for", "and so my fellow americans ask not what your country can do for you ask what you can do for your country", true),
            ("ask what you can do for", "", false),
        ];
        for (segment, earlier, expected) in table {
            assert_eq!(
                says_again(&words(segment), &words(earlier)),
                expected,
                "{segment:?} in {earlier:?}"
            );
        }
    }

    #[test]
    fn share_of_words_in_order() {
        // (segment, the window decoded without the prompt, share)
        let table = [
            (
                "and so my fellow americans ask not",
                "and so my fellow americans ask not what your country can do for you",
                1.0,
            ),
            // One word heard differently.
            (
                "and so my fellow americans ask not",
                "and so my fellow americans asked not what",
                6.0 / 7.0,
            ),
            // A copy of the prompt over other words: only "the" is shared.
            (
                "the girl at the root sold fifty months",
                "its easy to tell the depth of a well these days a chicken leg is a rare dish",
                1.0 / 8.0,
            ),
            // Order counts.
            ("a b c d", "d c b a", 0.25),
            ("a b", "", 0.0),
            ("", "a b", 0.0),
        ];
        for (segment, other, share) in table {
            let got = share_in_order(&words(segment), &words(other));
            assert!(
                (got - share).abs() < 1e-12,
                "{segment:?} in {other:?}: {got}, expected {share}"
            );
        }
        assert!(share_in_order(&words("a b"), &words("a x")) >= CONFIRMED_SHARE);
        assert!(share_in_order(&words("a b c"), &words("a x y")) < CONFIRMED_SHARE);
    }
}
