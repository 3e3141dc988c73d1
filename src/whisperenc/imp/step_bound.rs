//! How long a low-latency step may take, as the latency the element reports counts it.
//!
//! The bound starts from the encoder's warm-up (see `text.rs`) and is raised when steps take
//! longer. Not by any single slow step: on a shared host one step now and then takes twice the
//! others (a neighbour's burst, a stall decoded again without the forced prefix), and a bound
//! raised past each of them grows over a long run to the slowest step seen, which every caption
//! then waits for. A step slower than the bound only makes its own words late, and those are
//! stamped on time instead (`on_time_caption`). So the bound follows the
//! [`SLOW_STEPS`]-th slowest of the last [`RECENT_STEPS`]: a machine that became slower raises
//! it within a few steps, an outlier does not.
//!
//! Beside the bound, a typical step's time: the live edge moves by a step between two steps, or
//! by the step before's processing when that took longer, which a typical step rarely does (the
//! delay bound counts it once, and the slow bound once, see `StreamOptions::delay_bound_after`).
//! When the bound is raised, the typical time follows the median of the recent steps.

use std::collections::VecDeque;
use std::time::Duration;

/// Steps the bound looks back on (10 s of 0.5 s steps).
pub(super) const RECENT_STEPS: usize = 20;
/// How many of the recent steps must be slower than the bound to raise it.
pub(super) const SLOW_STEPS: usize = 3;
/// A raised bound is this many times the step time that raised it.
pub(super) const MARGIN: f64 = 1.25;

/// What the latency counts for a step's processing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StepTimes {
    /// A typical step (the one before the step that commits a word).
    pub typical: Duration,
    /// A slow step: the bound.
    pub slow: Duration,
}

#[derive(Debug, Default)]
pub(super) struct StepBound {
    bound: Option<StepTimes>,
    recent: VecDeque<Duration>,
}

impl StepBound {
    /// The times, set to `initial()` if there are none yet.
    pub fn get_or_init(&mut self, initial: impl FnOnce() -> StepTimes) -> StepTimes {
        *self.bound.get_or_insert_with(initial)
    }

    /// Forgets the bound and the steps (a new stream).
    pub fn reset(&mut self) {
        *self = StepBound::default();
    }

    /// Records a step's processing time; returns the new times when the bound is raised. A bound
    /// not set yet (no latency answered) is not raised.
    pub fn record(&mut self, processing: Duration) -> Option<StepTimes> {
        if self.recent.len() == RECENT_STEPS {
            self.recent.pop_front();
        }
        self.recent.push_back(processing);
        let bound = self.bound?;
        if self.recent.len() < SLOW_STEPS {
            return None;
        }
        let mut sorted: Vec<Duration> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        let slow = sorted[sorted.len() - SLOW_STEPS];
        (slow > bound.slow).then(|| {
            let raised = StepTimes {
                typical: bound.typical.max(sorted[sorted.len() / 2]),
                slow: slow.mul_f64(MARGIN),
            };
            self.bound = Some(raised);
            raised
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Times with a typical step of 300 ms and the bound `slow` ms.
    fn times(slow: u64) -> StepTimes {
        StepTimes {
            typical: ms(300),
            slow: ms(slow),
        }
    }

    #[test]
    fn raised_by_a_few_slow_steps_not_by_one() {
        // (step in ms, the typical step and the bound after it: None = unchanged)
        struct Case {
            name: &'static str,
            steps: &'static [u64],
            raised: &'static [Option<(u64, u64)>],
        }
        let cases = [
            Case {
                name: "steps within the bound",
                steps: &[400, 450, 590, 600, 300],
                raised: &[None, None, None, None, None],
            },
            Case {
                name: "one step twice the bound",
                steps: &[400, 1200, 400, 400, 400],
                raised: &[None, None, None, None, None],
            },
            Case {
                name: "two slow steps",
                steps: &[700, 400, 800, 400],
                raised: &[None, None, None, None],
            },
            Case {
                name: "a third slow step raises it to the third slowest",
                steps: &[700, 400, 800, 400, 640],
                raised: &[None, None, None, None, Some((640, 800))],
            },
            Case {
                name: "a slower machine",
                steps: &[900, 900, 900, 900],
                raised: &[None, None, Some((900, 1125)), None],
            },
        ];
        for case in cases {
            let mut b = StepBound::default();
            assert_eq!(b.get_or_init(|| times(600)), times(600));
            for (i, (&step, &want)) in case.steps.iter().zip(case.raised).enumerate() {
                let want = want.map(|(typical, slow)| StepTimes {
                    typical: ms(typical),
                    slow: ms(slow),
                });
                assert_eq!(
                    b.record(ms(step)),
                    want,
                    "{}: step {i} ({step} ms)",
                    case.name
                );
            }
        }
    }

    #[test]
    fn outliers_leave_the_window() {
        let mut b = StepBound::default();
        b.get_or_init(|| times(600));
        // Two slow steps, then enough ordinary ones to push them out of the recent steps: a
        // third slow step later does not raise the bound.
        assert_eq!(b.record(ms(1000)), None);
        assert_eq!(b.record(ms(1000)), None);
        for _ in 0..RECENT_STEPS {
            assert_eq!(b.record(ms(400)), None);
        }
        assert_eq!(b.record(ms(1000)), None, "the old slow steps still counted");
    }

    #[test]
    fn not_raised_before_a_latency_was_answered() {
        let mut b = StepBound::default();
        for _ in 0..5 {
            assert_eq!(b.record(ms(2000)), None);
        }
        assert_eq!(b.get_or_init(|| times(600)), times(600));
        b.reset();
        assert_eq!(b.get_or_init(|| times(500)), times(500));
    }
}
