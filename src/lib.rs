//! whisperencnpu: Whisper in a GStreamer pipeline, giving the encoder's embeddings or the
//! transcribed text.
//!
//! The core (`mel`, `model`, `npu`, `window`, `transcribe`, `cancel`) knows nothing of GStreamer,
//! so it can be tested, benchmarked and reused on its own; `whisperenc` is the element around it.
#![allow(clippy::needless_range_loop)]

pub mod cancel;
pub mod mel;
pub mod model;
pub mod npu;
pub mod shared;
pub mod transcribe;
pub mod whisperenc;
pub mod window;

use gst::glib;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    whisperenc::register(plugin)
}

gst::plugin_define!(
    whisperencnpu,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
