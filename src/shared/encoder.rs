//! One encoder for every stream with the same model: windows that are ready at the same time go
//! through it as one batch ([`Encoder::forward_batch`]: a weight panel read once for all of them,
//! each window's output bit for bit what it is alone).
//!
//! No thread of its own and no waiting for company: a stream with a window queues it; if no batch
//! is running, it runs one itself with every window queued so far (up to [`MAX_BATCH`], oldest
//! first), else it waits, and the windows that queued while a batch ran go together in the next
//! one. A stream alone therefore pays a lock and nothing more. Windows of live streams (a
//! listener waits on each: their deadline is the latency the element reported) go first, the
//! oldest first; then the others in the order they came, so a file stream takes what live
//! streams leave and none waits behind a stream of its own kind. One set of scratch buffers
//! serves all streams, as only one batch runs at a time.
use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::model::{Encoder, ModelError};
use crate::npu::{BackendKind, DeviceCounters, Precision};

/// Most windows in one batch. A window alone already reuses every weight panel over its 512
/// positions, so batching gains little per window (`encoder_bench --batch`, base, 2 threads, per
/// window: f32 144.7 / 147.5 / 149.2 ms for 1 / 2 / 4 windows, int8 59.9 / 59.2 / 55.2 ms), while
/// the scratch grows by about 11 MB a window: with 4, eight embeddings elements cost 10 MiB each
/// beyond the first, with 2 about 7 (issue 12 asks at most 10). A third stream waits for the next
/// batch.
pub const MAX_BATCH: usize = 2;

/// How one window went through the shared encoder.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchTiming {
    /// From queueing the window to the start of its batch (another stream's batch running).
    pub waited: Duration,
    /// The batch's encoding time.
    pub encoder: Duration,
    /// Windows in the batch (1: alone).
    pub batch: usize,
    /// The accelerator's launches during the batch (`None` on the CPU).
    pub device: Option<DeviceCounters>,
}

struct Request {
    ticket: u64,
    mel: Array2<f32>,
    out: Array2<f32>,
    queued: Instant,
    live: bool,
}

type Outcome = Result<BatchTiming, ModelError>;

/// A finished window: its outcome and the stream's lent buffers.
struct Done {
    outcome: Outcome,
    mel: Array2<f32>,
    out: Array2<f32>,
}

#[derive(Default)]
struct Queue {
    next_ticket: u64,
    pending: VecDeque<Request>,
    /// Finished windows, by ticket.
    done: HashMap<u64, Done>,
    running: bool,
}

/// An encoder shared by streams (see the module doc).
pub struct SharedEncoder {
    queue: Mutex<Queue>,
    finished: Condvar,
    encoder: Mutex<Encoder>,
    n_mels: usize,
    d_model: usize,
    max_frames: usize,
    backend: BackendKind,
    precision: Precision,
}

impl std::fmt::Debug for SharedEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEncoder")
            .field("backend", &self.backend)
            .field("precision", &self.precision)
            .field("d_model", &self.d_model)
            .finish()
    }
}

impl SharedEncoder {
    pub fn new(encoder: Encoder) -> SharedEncoder {
        SharedEncoder {
            n_mels: encoder.n_mels(),
            d_model: encoder.d_model(),
            max_frames: encoder.max_frames(),
            backend: encoder.engine().backend(),
            precision: encoder.engine().precision(),
            encoder: Mutex::new(encoder),
            queue: Mutex::default(),
            finished: Condvar::new(),
        }
    }

    pub fn d_model(&self) -> usize {
        self.d_model
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Encodes `mel` (n_mels x frames) into `out`, in a batch with other streams' windows if
    /// some are ready at the same time; returns when `out` holds the window's output
    /// (`positions x d_model`, reshaped if it was not). Both are lent to the batch and given back,
    /// so a stream reuses its buffers from window to window: an allocator that keeps what a
    /// thread freed would otherwise hold a megabyte or two per stream and thread. A `live`
    /// stream's window goes before the others waiting.
    pub fn encode(&self, mel: &mut Array2<f32>, out: &mut Array2<f32>, live: bool) -> Outcome {
        let (m, t) = mel.dim();
        if m != self.n_mels || t == 0 || t > self.max_frames {
            return Err(ModelError::InvalidInput(format!(
                "mel is {m} x {t}, the model takes {} x 1 to {}",
                self.n_mels, self.max_frames
            )));
        }
        let shape = (Encoder::positions_for(t), self.d_model);
        if out.dim() != shape {
            *out = Array2::zeros(shape);
        }
        let mut queue = self.lock_queue();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.pending.push_back(Request {
            ticket,
            mel: std::mem::take(mel),
            out: std::mem::take(out),
            queued: Instant::now(),
            live,
        });
        loop {
            if let Some(done) = queue.done.remove(&ticket) {
                *mel = done.mel;
                *out = done.out;
                return done.outcome;
            }
            if queue.running {
                queue = self.finished.wait(queue).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            queue.running = true;
            let batch = take_batch(&mut queue.pending);
            drop(queue);
            let mut running = Running {
                owner: self,
                batch,
                outcomes: Vec::new(),
            };
            running.outcomes = self.run(&mut running.batch);
            drop(running);
            queue = self.lock_queue();
        }
    }

    /// Encodes `batch` (same frame count) in one pass, into each request's `out`.
    fn run(&self, batch: &mut [Request]) -> Vec<Outcome> {
        let mut encoder = self.encoder.lock().unwrap_or_else(|e| e.into_inner());
        let before = encoder.engine().device_counters();
        let started = Instant::now();
        let (mels, mut outs): (Vec<ArrayView2<f32>>, Vec<ArrayViewMut2<f32>>) = batch
            .iter_mut()
            .map(|r| (r.mel.view(), r.out.view_mut()))
            .unzip();
        match encoder.forward_batch_into(&mels, &mut outs) {
            Ok(()) => {
                let timing = BatchTiming {
                    waited: Duration::ZERO,
                    encoder: started.elapsed(),
                    batch: batch.len(),
                    device: before
                        .zip(encoder.engine().device_counters())
                        .map(|(b, a)| a.since(&b)),
                };
                batch
                    .iter()
                    .map(|r| {
                        let waited = started.saturating_duration_since(r.queued);
                        Ok(BatchTiming { waited, ..timing })
                    })
                    .collect()
            }
            // Inputs are checked when queued; should a batch still fail, the error is each one's.
            Err(e) => batch
                .iter()
                .map(|_| Err(ModelError::InvalidInput(e.to_string())))
                .collect(),
        }
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Up to [`MAX_BATCH`] windows: live streams' first, each kind oldest first, all of the first
/// one's length (a shorter window at a stream's end goes in a later batch). `pending` is in the
/// order the windows came.
fn take_batch(pending: &mut VecDeque<Request>) -> Vec<Request> {
    let first = pending.iter().find(|r| r.live).or(pending.front());
    let frames = first.map(|r| r.mel.ncols());
    let mut batch = Vec::new();
    for live in [true, false] {
        let mut rest = VecDeque::with_capacity(pending.len());
        while let Some(r) = pending.pop_front() {
            if r.live == live && batch.len() < MAX_BATCH && Some(r.mel.ncols()) == frames {
                batch.push(r);
            } else {
                rest.push_back(r);
            }
        }
        *pending = rest;
    }
    batch
}

/// A batch being run: when it ends, however it ends (a panic in a kernel included), its outcomes
/// and lent windows are handed back, the next batch may start and the waiting streams are woken,
/// so none waits forever.
struct Running<'a> {
    owner: &'a SharedEncoder,
    batch: Vec<Request>,
    outcomes: Vec<Outcome>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut queue = self.owner.lock_queue();
        let mut outcomes = std::mem::take(&mut self.outcomes).into_iter();
        for request in std::mem::take(&mut self.batch) {
            let outcome = outcomes.next().unwrap_or_else(|| {
                Err(ModelError::InvalidInput(
                    "the encoder stopped during this window's batch".to_string(),
                ))
            });
            queue.done.insert(
                request.ticket,
                Done {
                    outcome,
                    mel: request.mel,
                    out: request.out,
                },
            );
        }
        queue.running = false;
        drop(queue);
        self.owner.finished.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiting window: its ticket, whether its stream is live, its frames.
    fn request(ticket: u64, live: bool, frames: usize) -> Request {
        Request {
            ticket,
            mel: Array2::zeros((1, frames)),
            out: Array2::zeros((0, 0)),
            queued: Instant::now(),
            live,
        }
    }

    #[test]
    fn live_windows_go_first_then_the_oldest() {
        // (waiting: ticket, live, frames), then the tickets of each batch taken in turn.
        type Case = (
            &'static str,
            &'static [(u64, bool, usize)],
            &'static [&'static [u64]],
        );
        let cases: &[Case] = &[
            (
                "in the order they came",
                &[(0, false, 1024), (1, false, 1024), (2, false, 1024)],
                &[&[0, 1], &[2]],
            ),
            (
                "a live window passes the files' windows",
                &[(0, false, 1024), (1, false, 1024), (2, true, 1024)],
                &[&[2, 0], &[1]],
            ),
            (
                "live windows oldest first",
                &[
                    (0, false, 1024),
                    (1, true, 1024),
                    (2, true, 1024),
                    (3, true, 1024),
                ],
                &[&[1, 2], &[3, 0]],
            ),
            (
                "one length a batch, the first window's",
                &[
                    (0, false, 1024),
                    (1, true, 600),
                    (2, false, 600),
                    (3, true, 1024),
                ],
                &[&[1, 2], &[3, 0]],
            ),
        ];
        for &(name, waiting, batches) in cases {
            let mut pending: VecDeque<Request> = waiting
                .iter()
                .map(|&(t, live, frames)| request(t, live, frames))
                .collect();
            for (k, want) in batches.iter().enumerate() {
                let got: Vec<u64> = take_batch(&mut pending).iter().map(|r| r.ticket).collect();
                assert_eq!(got, *want, "{name}: batch {k}");
            }
            assert!(pending.is_empty(), "{name}: windows left over");
        }
    }
}
