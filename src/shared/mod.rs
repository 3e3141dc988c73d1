//! What the streams of one process share (issue 12): a media server captioning many channels
//! runs one element per channel, and each paying for its own model and thread pool cost about
//! 430 MB and a pool of threads per element fighting over the same cores.
//!
//! - [`pool`]: one rayon pool per thread count for the whole process, which the encoder and the
//!   decoder of every stream run on.
//! - [`registry`]: prepared models by what they were prepared from, reference-counted (the last
//!   user frees it).
//! - [`encoder`]: one encoder for all streams with the same model, which runs the windows that
//!   are ready at the same time as one batch.
//!
//! Free of GStreamer, like the rest of the numerical core: the element keys and holds these.
pub mod encoder;
pub mod pool;
pub mod registry;

pub use encoder::{BatchTiming, SharedEncoder};
pub use registry::Registry;
