//! A flag the element raises to stop work in progress (NULL, READY, a flush or a seek) and the
//! decoder checks between its steps, so that a state change never waits for a window to finish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared between the element (which raises and lowers it) and the transcriber (which checks it).
/// The default flag is never raised.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Raised: work in progress is abandoned, its results are not used.
    pub fn set(&self, cancelled: bool) {
        self.0.store(cancelled, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
