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

use std::collections::VecDeque;
use std::time::Duration;

/// Steps the bound looks back on (10 s of 0.5 s steps).
pub(super) const RECENT_STEPS: usize = 20;
/// How many of the recent steps must be slower than the bound to raise it.
pub(super) const SLOW_STEPS: usize = 3;
/// A raised bound is this many times the step time that raised it.
pub(super) const MARGIN: f64 = 1.25;

#[derive(Debug, Default)]
pub(super) struct StepBound {
    bound: Option<Duration>,
    recent: VecDeque<Duration>,
}

impl StepBound {
    /// The bound, set to `initial()` if there is none yet.
    pub fn get_or_init(&mut self, initial: impl FnOnce() -> Duration) -> Duration {
        *self.bound.get_or_insert_with(initial)
    }

    /// Forgets the bound and the steps (a new stream).
    pub fn reset(&mut self) {
        *self = StepBound::default();
    }

    /// Records a step's processing time; returns the new bound when it is raised. A bound not
    /// set yet (no latency answered) is not raised.
    pub fn record(&mut self, processing: Duration) -> Option<Duration> {
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
        (slow > bound).then(|| {
            let raised = slow.mul_f64(MARGIN);
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

    #[test]
    fn raised_by_a_few_slow_steps_not_by_one() {
        // (step in ms, the bound after it: None = unchanged)
        struct Case {
            name: &'static str,
            steps: &'static [u64],
            raised: &'static [Option<u64>],
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
                raised: &[None, None, None, None, Some(800)],
            },
            Case {
                name: "a slower machine",
                steps: &[900, 900, 900, 900],
                raised: &[None, None, Some(1125), None],
            },
        ];
        for case in cases {
            let mut b = StepBound::default();
            assert_eq!(b.get_or_init(|| ms(600)), ms(600));
            for (i, (&step, &want)) in case.steps.iter().zip(case.raised).enumerate() {
                assert_eq!(
                    b.record(ms(step)),
                    want.map(ms),
                    "{}: step {i} ({step} ms)",
                    case.name
                );
            }
        }
    }

    #[test]
    fn outliers_leave_the_window() {
        let mut b = StepBound::default();
        b.get_or_init(|| ms(600));
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
        assert_eq!(b.get_or_init(|| ms(600)), ms(600));
        b.reset();
        assert_eq!(b.get_or_init(|| ms(500)), ms(500));
    }
}
