//! The hand-off between the streaming thread and the src task: audio chunks and the serialized
//! events between them, in stream order, bounded in audio so that upstream waits only when the
//! src task falls behind; and what the src task's last push returned, for upstream.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::mel::WINDOW_SAMPLES;

/// Audio waiting for the src task before the streaming thread waits: two windows, enough to ride
/// out a slow window, small enough to bound memory (each is 640 KiB).
const QUEUE_SAMPLES: usize = 2 * WINDOW_SAMPLES;

/// Audio on its way to the src task: a 10.24 s window in embeddings mode, a 0.1 s chunk in
/// transcription mode.
pub(super) struct Chunk {
    /// Chunks since the start or the last flush.
    pub index: u64,
    pub pts: gst::ClockTime,
    /// float32 samples; a window is shorter only at the end of the stream (or before a hole too
    /// long to fill).
    pub audio: gst::Buffer,
    /// The first chunk since the start, a flush or a hole: not contiguous with the one before.
    pub discont: bool,
}

pub(super) enum Item {
    Chunk(Chunk),
    Event(gst::Event),
    /// After a hole too long to fill, the stream goes on at this time: the audio before it is
    /// finished as at the end of a stream.
    Resume(gst::ClockTime),
}

impl Item {
    fn samples(&self) -> usize {
        match self {
            Item::Chunk(c) => c.audio.size() / std::mem::size_of::<f32>(),
            Item::Event(_) | Item::Resume(_) => 0,
        }
    }
}

struct State {
    items: VecDeque<Item>,
    /// Samples in the queued chunks.
    samples: usize,
    flushing: bool,
    /// What the last push downstream returned, handed back to upstream by the chain function.
    last_flow: Result<gst::FlowSuccess, gst::FlowError>,
}

pub(super) struct HandOff {
    state: Mutex<State>,
    cond: Condvar,
}

impl Default for HandOff {
    /// Flushing until the element starts.
    fn default() -> Self {
        HandOff {
            state: Mutex::new(State {
                items: VecDeque::new(),
                samples: 0,
                flushing: true,
                last_flow: Ok(gst::FlowSuccess::Ok),
            }),
            cond: Condvar::new(),
        }
    }
}

impl HandOff {
    /// The lock, also after a panic elsewhere (the src task's panic guard still reports through it).
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item for the src task, waiting while the queue holds too much audio (an item
    /// comes in even so when the queue is empty, whatever its size).
    pub fn push(&self, item: Item) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut q = self.state();
        let samples = item.samples();
        while samples > 0 && q.samples + samples > QUEUE_SAMPLES && q.samples > 0 && !q.flushing {
            q = self.cond.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        if q.flushing {
            return Err(gst::FlowError::Flushing);
        }
        q.last_flow?;
        q.samples += samples;
        q.items.push_back(item);
        self.cond.notify_all();
        Ok(gst::FlowSuccess::Ok)
    }

    /// The next item for the src task, waiting for one; `None` once flushing.
    pub fn pop(&self) -> Option<Item> {
        let mut q = self.state();
        while q.items.is_empty() && !q.flushing {
            q = self.cond.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        if q.flushing {
            return None;
        }
        let item = q.items.pop_front()?;
        q.samples -= item.samples();
        self.cond.notify_all();
        Some(item)
    }

    /// Flushing: both sides stop waiting and the items not yet taken are returned (their sticky
    /// events still describe the stream). Not flushing: a new stream, nothing failed yet.
    pub fn set_flushing(&self, flushing: bool) -> Vec<Item> {
        let mut q = self.state();
        q.flushing = flushing;
        let dropped = if flushing {
            q.samples = 0;
            q.items.drain(..).collect()
        } else {
            q.last_flow = Ok(gst::FlowSuccess::Ok);
            Vec::new()
        };
        self.cond.notify_all();
        dropped
    }

    /// What the src task's last push returned.
    pub fn last_flow(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.state().last_flow
    }

    /// The src task stopped on `err`: upstream gets it with its next buffer.
    pub fn stop(&self, err: gst::FlowError) {
        self.state().last_flow = Err(err);
        self.cond.notify_all();
    }

    /// Whether audio waits for the src task.
    pub fn has_audio(&self) -> bool {
        self.state().samples > 0
    }
}
