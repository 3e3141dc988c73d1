//! Embeddings output on the src task: a window's audio through the (shared) encoder into a tensor
//! buffer.
//!
//! Every buffer a window needs is reused: the window's samples (decoded straight into the window
//! encoder's), the mel and the encoder's output inside the window encoder, and the output buffers from a pool, which get back to it when downstream lets
//! go. A megabyte allocated per window and freed on another thread is what glibc's allocator keeps
//! per thread (its arenas and its raised mmap threshold): with eight elements in one process that
//! was about 6 MB per element (issue 12).

use gst::prelude::*;

use crate::window::{WindowEncoder, WindowTiming};

pub(super) struct EmbeddingsOutput {
    window: WindowEncoder,
    /// Buffers of one window's embeddings (`positions x d_model` float32).
    pool: gst::BufferPool,
}

impl EmbeddingsOutput {
    pub(super) fn new(window: WindowEncoder) -> Result<Self, gst::glib::BoolError> {
        let size = window.positions() * window.d_model() * std::mem::size_of::<f32>();
        let pool = gst::BufferPool::new();
        let mut config = pool.config();
        // No upper bound: downstream may hold as many windows as it likes (a queue), each then
        // costs its buffer, as without a pool.
        config.set_params(None, size as u32, 0, 0);
        pool.set_config(config)?;
        pool.set_active(true)?;
        Ok(EmbeddingsOutput { window, pool })
    }

    pub(super) fn window(&self) -> &WindowEncoder {
        &self.window
    }

    /// Encodes the window of F32LE `audio` (shorter than a window only at the end of a stream)
    /// into a buffer of the pool, with no timestamps yet.
    pub(super) fn encode(
        &mut self,
        audio: &[u8],
    ) -> Result<(gst::Buffer, WindowTiming), gst::FlowError> {
        let (embeddings, timing) = self.window.encode_filled(|window| {
            let samples = audio.chunks_exact(4).take(window.len());
            let n = samples.len();
            for (w, b) in window.iter_mut().zip(samples) {
                *w = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            n
        });
        let mut buffer = self.pool.acquire_buffer(None)?;
        {
            let buffer = buffer.get_mut().ok_or(gst::FlowError::Error)?;
            let mut map = buffer.map_writable().map_err(|_| gst::FlowError::Error)?;
            // Row-major, whatever the array's own layout.
            for (out, v) in map.chunks_exact_mut(4).zip(embeddings.iter()) {
                out.copy_from_slice(&v.to_le_bytes());
            }
        }
        Ok((buffer, timing))
    }
}

impl Drop for EmbeddingsOutput {
    fn drop(&mut self) {
        // Buffers still downstream are freed when they come back to an inactive pool.
        let _ = self.pool.set_active(false);
    }
}
