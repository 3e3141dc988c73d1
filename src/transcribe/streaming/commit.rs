//! When words of a streaming hypothesis become final: the commit policy of the low-latency mode.
//!
//! Every step decodes the text not yet committed again, from a window ending at the live edge.
//! A word is committed (said, never retracted) when:
//! - **agreement** (LocalAgreement-2, ufal/whisper_streaming): this pass and the one before agree
//!   on it and on every word before it, this pass has a word after it (the last word of a pass
//!   may be cut by the live edge: "American" before "Americans"), it ended `min_age` before
//!   the live edge, and the decoder was sure of it and of every word before it (a word it
//!   guesses, two passes guess alike: they see nearly the same audio); of a word it is very sure
//!   of (`alone_prob`), one pass is enough;
//! - **pause**: nothing was spoken for `pause` up to the live edge: the whole hypothesis is final;
//! - **forced**: the word started `force_after` or more before the live edge: every word up to it
//!   is committed whatever the passes said, so the delay is bounded and the uncommitted span stays
//!   far shorter than the window.
//!
//! Words are compared by their normalised text (case and punctuation aside) and judged by their
//! aligned times. The policy is pure: it sees words and sample positions, no audio, no model.

/// A word of a hypothesis as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedWord {
    /// Normalised text (lower case, letters and digits): what two passes must agree on.
    pub key: String,
    /// Start and end as stream samples (from the alignment).
    pub start: u64,
    pub end: u64,
    /// The probability the decoder gave it (the product of its tokens').
    pub prob: f64,
}

/// Bounds of the policy, in stream samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CommitBounds {
    /// Silence up to the live edge that makes the whole hypothesis final.
    pub pause: u64,
    /// A word that started this long before the live edge is committed (with all before it).
    pub force_after: u64,
    /// Agreement commits only words that ended at least this long before the live edge: at the
    /// edge the decoder guesses (words cut, or words it expects next that are not there yet).
    pub min_age: u64,
    /// Agreement commits only words the decoder gave at least this probability: a word it
    /// guesses, two passes guess alike (they see nearly the same audio); such words wait for a
    /// pause or their forced commit, with more audio after them.
    pub min_prob: f64,
    /// A word given at least this probability (with every word before it) needs no second
    /// pass; 1 or more: every word needs two.
    pub alone_prob: f64,
}

/// Why words were committed (the strongest reason of the pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitReason {
    Agreement,
    /// A pause follows the hypothesis: its segment is closed.
    Pause,
    Forced,
    /// End of the stream: everything is committed.
    End,
}

/// What one pass commits: the first `count` words of its hypothesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub count: usize,
    /// `None` when nothing is committed.
    pub reason: Option<CommitReason>,
}

/// LocalAgreement-2 with a pause rule and a forced commit; remembers the last pass's uncommitted
/// words.
#[derive(Clone, Debug)]
pub struct CommitPolicy {
    bounds: CommitBounds,
    /// The previous pass's words after those committed then.
    previous: Vec<String>,
}

impl CommitPolicy {
    pub fn new(bounds: CommitBounds) -> CommitPolicy {
        CommitPolicy {
            bounds,
            previous: Vec::new(),
        }
    }

    pub fn bounds(&self) -> CommitBounds {
        self.bounds
    }

    /// Forgets the previous pass (after a flush).
    pub fn reset(&mut self) {
        self.previous.clear();
    }

    /// Judges one pass: `hyp` is the hypothesis after the committed text, `live_edge` the end of
    /// the audio it saw, `speech_end` where the last speech before the live edge ends (`None`:
    /// no speech since the committed text).
    pub fn decide(
        &mut self,
        hyp: &[TimedWord],
        live_edge: u64,
        speech_end: Option<u64>,
    ) -> Decision {
        let paused = speech_end.is_none_or(|e| e + self.bounds.pause <= live_edge);
        let decision = if hyp.is_empty() {
            Decision {
                count: 0,
                reason: None,
            }
        } else if paused {
            Decision {
                count: hyp.len(),
                reason: Some(CommitReason::Pause),
            }
        } else {
            let agreed = hyp
                .iter()
                .zip(&self.previous)
                .take_while(|(h, p)| h.key == **p)
                .count()
                .max(
                    hyp.iter()
                        .take_while(|w| w.prob >= self.bounds.alone_prob)
                        .count(),
                )
                .min(hyp.len() - 1)
                .min(
                    hyp.iter()
                        .take_while(|w| {
                            w.prob >= self.bounds.min_prob
                                && w.end + self.bounds.min_age <= live_edge
                        })
                        .count(),
                );
            let forced = hyp
                .iter()
                .rposition(|w| w.start + self.bounds.force_after <= live_edge)
                .map_or(0, |i| i + 1);
            if forced > agreed {
                Decision {
                    count: forced,
                    reason: Some(CommitReason::Forced),
                }
            } else if agreed > 0 {
                Decision {
                    count: agreed,
                    reason: Some(CommitReason::Agreement),
                }
            } else {
                Decision {
                    count: 0,
                    reason: None,
                }
            }
        };
        self.previous = hyp[decision.count..]
            .iter()
            .map(|w| w.key.clone())
            .collect();
        decision
    }

    /// The stream's end: the last pass's words are all committed.
    pub fn finish(&mut self, hyp: &[TimedWord]) -> Decision {
        self.previous.clear();
        Decision {
            count: hyp.len(),
            reason: (!hyp.is_empty()).then_some(CommitReason::End),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = crate::mel::SAMPLE_RATE as u64;
    const BOUNDS: CommitBounds = CommitBounds {
        pause: SECOND / 2,
        force_after: 2 * SECOND,
        min_age: 0,
        min_prob: 0.5,
        alone_prob: 2.0,
    };

    /// Words "a b c" at 0.4 s each from `from` seconds.
    fn words(text: &str, from: f64) -> Vec<TimedWord> {
        text.split_whitespace()
            .enumerate()
            .map(|(i, w)| {
                let start = ((from + 0.4 * i as f64) * SECOND as f64) as u64;
                TimedWord {
                    key: w.trim_end_matches('?').to_string(),
                    start,
                    end: start + SECOND * 3 / 10,
                    prob: if w.ends_with('?') { 0.1 } else { 0.9 },
                }
            })
            .collect()
    }

    /// One pass: hypothesis text, its first word's start (s), live edge (s), speech end (s, or
    /// none), then the words expected committed and why.
    type Pass<'a> = (
        &'a str,
        f64,
        f64,
        Option<f64>,
        &'a str,
        Option<CommitReason>,
    );

    fn run(name: &str, passes: &[Pass]) {
        let mut p = CommitPolicy::new(BOUNDS);
        for (i, &(text, from, edge, speech_end, expect, reason)) in passes.iter().enumerate() {
            let hyp = words(text, from);
            let at = |s: f64| (s * SECOND as f64) as u64;
            let d = p.decide(&hyp, at(edge), speech_end.map(at));
            let got: Vec<&str> = hyp[..d.count].iter().map(|w| w.key.as_str()).collect();
            assert_eq!(got.join(" "), expect, "{name}: pass {i} committed");
            assert_eq!(d.reason, reason, "{name}: pass {i} reason");
        }
    }

    use CommitReason::*;

    #[test]
    fn agreement_of_two_passes() {
        run(
            "growing hypothesis",
            &[
                ("and so", 0.0, 1.0, Some(1.0), "", None),
                // "and so" agreed; "my" is the last word: it may be cut.
                ("and so my", 0.0, 1.5, Some(1.5), "and so", Some(Agreement)),
                ("my fellow", 0.8, 2.0, Some(2.0), "my", Some(Agreement)),
                (
                    "fellow americans ask",
                    1.2,
                    2.5,
                    Some(2.5),
                    "fellow",
                    Some(Agreement),
                ),
            ],
        );
        run(
            "a change resets the agreement from there",
            &[
                ("ask not what", 0.0, 1.5, Some(1.5), "", None),
                (
                    "ask knot wat your",
                    0.0,
                    2.0,
                    Some(2.0),
                    "ask",
                    Some(Agreement),
                ),
                (
                    "knot wat your",
                    0.4,
                    2.1,
                    Some(2.1),
                    "knot wat",
                    Some(Agreement),
                ),
            ],
        );
        run(
            "the last word alone is never agreed on",
            &[
                ("country", 0.0, 0.6, Some(0.6), "", None),
                ("country", 0.0, 1.0, Some(1.0), "", None),
            ],
        );
    }

    #[test]
    fn agreement_waits_for_words_to_age() {
        let mut p = CommitPolicy::new(CommitBounds {
            min_age: SECOND / 2,
            ..BOUNDS
        });
        // Words end at 0.3, 0.7, 1.1 s; live edge 1.0 s: only the first is 0.5 s old.
        let hyp = words("which are an", 0.0);
        assert_eq!(p.decide(&hyp, SECOND, Some(SECOND)).count, 0, "first pass");
        let d = p.decide(&hyp, SECOND, Some(SECOND));
        assert_eq!((d.count, d.reason), (1, Some(Agreement)), "second pass");
    }

    #[test]
    fn agreement_waits_for_words_the_decoder_is_unsure_of() {
        run(
            "an unsure word stops the agreement until its forced commit",
            &[
                ("the merch? can do", 0.0, 1.5, Some(1.5), "", None),
                (
                    "the merch? can do so",
                    0.0,
                    1.7,
                    Some(1.7),
                    "the",
                    Some(Agreement),
                ),
                ("merch? can do so you", 0.4, 2.0, Some(2.0), "", None),
                // "merch" started 2 s before the edge.
                (
                    "merch? can do so you",
                    0.4,
                    2.4,
                    Some(2.4),
                    "merch",
                    Some(Forced),
                ),
                (
                    "can do so you",
                    0.8,
                    2.6,
                    Some(2.6),
                    "can do so",
                    Some(Agreement),
                ),
            ],
        );
    }

    #[test]
    fn one_pass_is_enough_for_words_the_decoder_is_very_sure_of() {
        let mut p = CommitPolicy::new(CommitBounds {
            alone_prob: 0.8,
            ..BOUNDS
        });
        // "ask" and "not" at 0.9, "what" at 0.1, "your" last: a first pass commits "ask not".
        let hyp = words("ask not what? your", 0.0);
        let d = p.decide(&hyp, 2 * SECOND, Some(2 * SECOND));
        assert_eq!((d.count, d.reason), (2, Some(Agreement)), "very sure words");
        // Nor is the last word of a pass committed alone.
        let mut p = CommitPolicy::new(CommitBounds {
            alone_prob: 0.8,
            ..BOUNDS
        });
        let d = p.decide(&words("country", 0.0), SECOND, Some(SECOND));
        assert_eq!((d.count, d.reason), (0, None), "the last word");
    }

    #[test]
    fn pause_commits_the_tail() {
        run(
            "silence after the words",
            &[
                ("for your country", 0.0, 1.3, Some(1.2), "", None),
                // 0.5 s without speech up to the live edge.
                (
                    "for your country",
                    0.0,
                    1.7,
                    Some(1.2),
                    "for your country",
                    Some(Pause),
                ),
                ("", 0.0, 2.2, None, "", None),
            ],
        );
        run(
            "a shorter silence is not a pause",
            &[("for your country", 0.0, 1.6, Some(1.2), "", None)],
        );
        run(
            "no speech since the committed text",
            &[("thank you", 0.0, 3.0, None, "thank you", Some(Pause))],
        );
    }

    #[test]
    fn forced_commit_bounds_the_delay() {
        run(
            "passes that never agree",
            &[
                ("one two three four", 0.0, 1.9, Some(1.9), "", None),
                (
                    "won too three four five",
                    0.0,
                    2.1,
                    Some(2.1),
                    "won",
                    Some(Forced),
                ),
                // Started 2 s before the edge or earlier: 0.4 and 0.8 s.
                (
                    "two tree for five",
                    0.4,
                    2.8,
                    Some(2.8),
                    "two tree",
                    Some(Forced),
                ),
            ],
        );
        run(
            "agreement reaching further wins",
            &[
                ("a b c d e f g", 0.0, 3.0, Some(3.0), "a b c", Some(Forced)),
                ("d e f g h", 1.2, 3.5, Some(3.5), "d e f g", Some(Agreement)),
            ],
        );
    }

    #[test]
    fn finish_commits_everything() {
        let mut p = CommitPolicy::new(BOUNDS);
        let hyp = words("ask what you can do", 0.0);
        assert_eq!(p.decide(&hyp, SECOND, Some(SECOND)).count, 0, "first pass");
        let d = p.finish(&hyp);
        assert_eq!((d.count, d.reason), (5, Some(End)), "finish");
        assert_eq!(p.finish(&[]).reason, None, "finish with nothing left");
    }
}
