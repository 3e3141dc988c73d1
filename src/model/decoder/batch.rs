//! Token-by-token decoder calls of different streams, run as one call (issue 12).
//!
//! A token-by-token pass reads every weight of the decoder and the vocabulary projection for a
//! handful of rows (194 MB on base f32, about 20 ms on two cores): it is bound by memory, not
//! arithmetic. Streams decoding at the same time each read all of it for their own rows; run as
//! one call, the weights are read once for all their rows and the call costs about what one
//! stream's does.
//!
//! Like the shared encoder, no thread of its own: a stream queues its step, and a stream whose
//! step is queued runs the batch itself when none is running and the batch is ready, that is
//! when every stream now in a token loop ([`StepBatcher::enter`]) has queued a step, or the
//! oldest step has waited [`GRACE`]. A stream alone is never made to wait: it is the only one in
//! a token loop. Two streams fall into step after their first batch: each gets its logits back
//! at the same moment and queues its next token a fraction of a millisecond later.
//!
//! The batcher knows nothing of decoders: a job is whatever the closure given to
//! [`StepBatcher::run`] runs, so that the rendezvous is tested here on its own.
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long the oldest queued step waits for streams in a token loop that have not queued theirs
/// yet. Between two steps a stream only picks its next token (well under a millisecond); a
/// stream that takes longer (its thread not scheduled, say) is left for the next batch, at a
/// cost of a tenth of a step to the others.
pub const GRACE: Duration = Duration::from_millis(2);

/// Most jobs in one batch: the rows of a batch are activations held once (a few hundred KB for
/// sixteen streams), and more than this many streams in a token loop at once would already be
/// far from real time on a machine of a few cores.
pub const MAX_JOBS: usize = 16;

/// How many batches ran and how many jobs they held (their mean: the batching achieved).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub batches: u64,
    pub jobs: u64,
}

/// The steps a thread ran through a batcher and the company they had.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepTally {
    pub steps: u64,
    /// The sum over those steps of the jobs in their batch.
    pub batched_with: u64,
}

impl StepTally {
    /// Jobs per batch, seen from this thread's steps (1: alone; 0: no step).
    pub fn mean_batch(&self) -> f64 {
        self.batched_with as f64 / self.steps.max(1) as f64
    }
}

thread_local! {
    static TALLY: Cell<StepTally> = const { Cell::new(StepTally { steps: 0, batched_with: 0 }) };
}

/// The calling thread's steps since the last call (a stream decodes on one thread, so that a
/// window's steps are what its thread ran between two calls).
pub fn take_tally() -> StepTally {
    TALLY.with(|t| t.take())
}

fn tally(batch: usize) {
    TALLY.with(|t| {
        let mut v = t.get();
        v.steps += 1;
        v.batched_with += batch as u64;
        t.set(v);
    });
}

struct State<J> {
    next_ticket: u64,
    /// Queued jobs, oldest first, with their tickets.
    pending: Vec<(u64, J)>,
    /// When the oldest queued job was queued.
    oldest: Option<Instant>,
    /// Jobs run, by ticket: the size of their batch, `None` if it panicked.
    finished: HashMap<u64, Option<usize>>,
    running: bool,
    /// Streams in a token loop.
    stepping: usize,
    counts: BatchCounts,
}

impl<J> State<J> {
    fn ready(&self, now: Instant, grace: Duration) -> bool {
        !self.running
            && !self.pending.is_empty()
            && (self.pending.len() >= self.stepping.clamp(1, MAX_JOBS)
                || self.oldest.is_some_and(|t| now.duration_since(t) >= grace))
    }
}

/// The rendezvous of the streams' token-by-token steps (see the module doc).
pub struct StepBatcher<J> {
    state: Mutex<State<J>>,
    changed: Condvar,
    /// How long a queued step waits for the other streams' ([`GRACE`]; longer in tests, so that
    /// a loaded machine's scheduling does not decide them).
    grace: Duration,
}

impl<J> Default for StepBatcher<J> {
    fn default() -> Self {
        StepBatcher::with_grace(GRACE)
    }
}

impl<J> StepBatcher<J> {
    fn with_grace(grace: Duration) -> Self {
        StepBatcher {
            grace,
            state: Mutex::new(State {
                next_ticket: 0,
                pending: Vec::new(),
                oldest: None,
                finished: HashMap::new(),
                running: false,
                stepping: 0,
                counts: BatchCounts::default(),
            }),
            changed: Condvar::new(),
        }
    }
}

/// A stream in a token loop, until dropped: the batcher waits (up to [`GRACE`]) for its steps.
pub struct Stepping<'a, J> {
    batcher: &'a StepBatcher<J>,
}

impl<J> Drop for Stepping<'_, J> {
    fn drop(&mut self) {
        let mut s = self.batcher.lock();
        s.stepping -= 1;
        drop(s);
        // A batch waiting for this stream's step is ready without it.
        self.batcher.changed.notify_all();
    }
}

/// Marks the jobs of a batch finished when dropped, whether the batch ran or panicked, so that
/// no stream waits for ever on a batch that will not end.
struct Running<'a, J> {
    batcher: &'a StepBatcher<J>,
    tickets: Vec<u64>,
    ok: bool,
}

impl<J> Drop for Running<'_, J> {
    fn drop(&mut self) {
        let mut s = self.batcher.lock();
        s.running = false;
        let batch = self.ok.then_some(self.tickets.len());
        for &t in &self.tickets {
            s.finished.insert(t, batch);
        }
        drop(s);
        self.batcher.changed.notify_all();
    }
}

impl<J> StepBatcher<J> {
    fn lock(&self) -> MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the calling stream as in a token loop while the guard lives.
    pub fn enter(&self) -> Stepping<'_, J> {
        self.lock().stepping += 1;
        Stepping { batcher: self }
    }

    pub fn counts(&self) -> BatchCounts {
        self.lock().counts
    }

    /// Queues `job` and returns once a batch holding it has run: `work` runs every batch this
    /// stream runs (the streams give the same `work`; whichever runs the batch runs it on all of
    /// its jobs).
    ///
    /// # Panics
    /// If the batch that held `job` panicked (in this stream or another).
    pub fn run(&self, job: J, work: impl Fn(&mut [J])) {
        let mut s = self.lock();
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        if s.pending.is_empty() {
            s.oldest = Some(Instant::now());
        }
        s.pending.push((ticket, job));
        // Streams waiting for this step to make their batch ready.
        self.changed.notify_all();
        loop {
            if let Some(batch) = s.finished.remove(&ticket) {
                tally(batch.expect("a batched decoder step panicked"));
                return;
            }
            let now = Instant::now();
            if s.ready(now, self.grace) {
                let take = s.pending.len().min(MAX_JOBS);
                let (tickets, mut jobs): (Vec<u64>, Vec<J>) = s.pending.drain(..take).unzip();
                s.oldest = (!s.pending.is_empty()).then_some(now);
                s.running = true;
                s.counts.batches += 1;
                s.counts.jobs += take as u64;
                drop(s);
                let mut running = Running {
                    batcher: self,
                    tickets,
                    ok: false,
                };
                work(&mut jobs);
                running.ok = true;
                drop(running);
                s = self.lock();
                continue;
            }
            // Wake up when the oldest step's grace ends, if nothing else wakes us first.
            let wait = match s.oldest {
                Some(t) if !s.running => self.grace.saturating_sub(now.duration_since(t)),
                _ => self.grace,
            };
            s = self
                .changed
                .wait_timeout(s, wait.max(Duration::from_micros(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    /// A job that records the batch it ran in.
    struct Job {
        stream: usize,
        ran_with: Arc<Mutex<Vec<Vec<usize>>>>,
    }

    fn job(stream: usize, log: &Arc<Mutex<Vec<Vec<usize>>>>) -> Job {
        Job {
            stream,
            ran_with: log.clone(),
        }
    }

    fn work(jobs: &mut [Job]) {
        let streams: Vec<usize> = jobs.iter().map(|j| j.stream).collect();
        std::thread::sleep(Duration::from_millis(5));
        jobs[0].ran_with.lock().unwrap().push(streams);
    }

    /// A grace no step of these tests should ever wait out: a wait shows as seconds, not as
    /// the milliseconds a loaded machine's scheduling may add.
    const LONG: Duration = Duration::from_secs(1);

    #[test]
    fn a_stream_alone_does_not_wait() {
        let b = StepBatcher::with_grace(LONG);
        let log = Arc::new(Mutex::new(Vec::new()));
        let _s = b.enter();
        take_tally();
        let started = Instant::now();
        for _ in 0..20 {
            b.run(job(0, &log), |_| {});
        }
        assert!(
            started.elapsed() < LONG,
            "20 steps alone took {:?}: the stream waited for company",
            started.elapsed()
        );
        assert_eq!(
            b.counts(),
            BatchCounts {
                batches: 20,
                jobs: 20
            }
        );
        assert_eq!(
            take_tally(),
            StepTally {
                steps: 20,
                batched_with: 20
            }
        );
    }

    #[test]
    fn streams_in_a_token_loop_step_together() {
        // A batch runs once all three streams queued their steps: with a grace of a minute, no
        // step of a stream the scheduler holds back runs without it.
        let b = Arc::new(StepBatcher::with_grace(Duration::from_secs(60)));
        let log = Arc::new(Mutex::new(Vec::new()));
        let start = Arc::new(Barrier::new(3));
        let threads: Vec<_> = (0..3)
            .map(|stream| {
                let (b, log, start) = (b.clone(), log.clone(), start.clone());
                std::thread::spawn(move || {
                    let _s = b.enter();
                    start.wait();
                    take_tally();
                    for _ in 0..10 {
                        b.run(job(stream, &log), work);
                    }
                    take_tally()
                })
            })
            .collect();
        let tallies: Vec<StepTally> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let batches = log.lock().unwrap().clone();
        let jobs: usize = batches.iter().map(Vec::len).sum();
        assert_eq!(jobs, 30, "every step ran once: {batches:?}");
        assert!(
            batches.iter().all(|b| b.len() == 3),
            "not every batch held all three streams: {batches:?}"
        );
        for (stream, t) in tallies.iter().enumerate() {
            assert_eq!(t.steps, 10, "stream {stream}'s tally");
            assert_eq!(t.mean_batch(), 3.0, "stream {stream}'s batches");
        }
    }

    #[test]
    fn a_stream_leaving_its_loop_does_not_hold_the_others() {
        let grace = Duration::from_millis(200);
        let b = Arc::new(StepBatcher::with_grace(grace));
        let log = Arc::new(Mutex::new(Vec::new()));
        // Stream 1 enters a token loop and never steps; stream 0's steps wait the grace each.
        let idle = b.enter();
        let _s = b.enter();
        let started = Instant::now();
        for _ in 0..2 {
            b.run(job(0, &log), |_| {});
        }
        let waited = started.elapsed();
        assert!(
            waited >= grace * 2,
            "the steps did not wait for stream 1 ({waited:?})"
        );
        assert!(
            waited < grace * 10,
            "the steps waited {waited:?} for stream 1, more than their grace"
        );
        drop(idle);
        let started = Instant::now();
        b.run(job(0, &log), |_| {});
        assert!(
            started.elapsed() < grace / 2,
            "a step waited {:?} after stream 1 left its loop",
            started.elapsed()
        );
    }

    #[test]
    fn a_panicking_batch_fails_its_streams_instead_of_hanging_them() {
        let b = Arc::new(StepBatcher::<usize>::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|stream| {
                let (b, calls, start) = (b.clone(), calls.clone(), start.clone());
                std::thread::spawn(move || {
                    let _s = b.enter();
                    start.wait();
                    b.run(stream, |_| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        panic!("a kernel failed");
                    })
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_err(), "a stream of a failed batch went on");
        }
        // And the batcher still works for the next stream.
        let _s = b.enter();
        b.run(7, |jobs| assert_eq!(jobs, &[7]));
    }
}
