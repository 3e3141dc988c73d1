//! The `whisperencnpu` element: registers the type and its property enums (with their conversions
//! to the core's types); `imp` implements it.

use gst::glib;
use gst::prelude::*;

mod imp;
mod messages;

/// What the element pushes downstream.
#[derive(Debug, Eq, PartialEq, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstWhisperEncNpuMode")]
pub enum Mode {
    /// One `other/tensors` buffer of encoder output per 10.24 s window.
    #[default]
    #[enum_value(name = "Embeddings: encoder output tensors", nick = "embeddings")]
    Embeddings = 0,
    /// Timestamped text segments.
    #[enum_value(name = "Transcription: timestamped text", nick = "transcription")]
    Transcription = 1,
}

/// Where the encoder's matrix products run.
#[derive(Debug, Eq, PartialEq, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstWhisperEncNpuBackend")]
pub enum Backend {
    #[default]
    #[enum_value(name = "Auto: the XDNA2 NPU when present, else the CPU", nick = "auto")]
    Auto = 0,
    #[enum_value(name = "CPU", nick = "cpu")]
    Cpu = 1,
    #[enum_value(name = "AMD XDNA2 NPU through XRT", nick = "xdna")]
    Xdna = 2,
}

/// Numeric precision of the encoder's matrix products.
#[derive(Debug, Eq, PartialEq, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstWhisperEncNpuPrecision")]
pub enum Precision {
    #[default]
    #[enum_value(name = "float32", nick = "f32")]
    F32 = 0,
    #[enum_value(
        name = "int8 weights and activations, int32 accumulation",
        nick = "int8"
    )]
    Int8 = 1,
}

/// Transcription task (multilingual models).
#[derive(Debug, Eq, PartialEq, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstWhisperEncNpuTask")]
pub enum Task {
    #[default]
    #[enum_value(name = "Transcribe in the spoken language", nick = "transcribe")]
    Transcribe = 0,
    #[enum_value(name = "Translate to English", nick = "translate")]
    Translate = 1,
}

/// How transcription walks a stream (issue 9): whole windows, or a window sliding with the live edge.
#[derive(Debug, Eq, PartialEq, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstWhisperEncNpuLatencyMode")]
pub enum LatencyMode {
    /// `low` when upstream is live (as its latency query says), `full` otherwise.
    #[default]
    #[enum_value(name = "Auto: low for a live source, full otherwise", nick = "auto")]
    Auto = 0,
    /// Every step, the window ending at the live edge is decoded again and words are committed
    /// once they are stable: captions within seconds.
    #[enum_value(name = "Low: a window sliding with the live edge", nick = "low")]
    Low = 1,
    /// Whole 10.24 s windows, each decoded once: least compute, for files.
    #[enum_value(name = "Full: whole windows", nick = "full")]
    Full = 2,
}

// The element's enums are what users set (GLib enums with nicks); the engine has its own, free
// of GStreamer. One conversion each, here.

impl From<Backend> for crate::npu::BackendChoice {
    fn from(backend: Backend) -> Self {
        match backend {
            Backend::Auto => Self::Auto,
            Backend::Cpu => Self::Cpu,
            Backend::Xdna => Self::Xdna,
        }
    }
}

impl From<Precision> for crate::npu::Precision {
    fn from(precision: Precision) -> Self {
        match precision {
            Precision::F32 => Self::F32,
            Precision::Int8 => Self::Int8,
        }
    }
}

impl From<Task> for crate::transcribe::Task {
    fn from(task: Task) -> Self {
        match task {
            Task::Transcribe => Self::Transcribe,
            Task::Translate => Self::Translate,
        }
    }
}

glib::wrapper! {
    pub struct WhisperEncNpu(ObjectSubclass<imp::WhisperEncNpu>) @extends gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    Mode::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Backend::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Precision::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Task::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    LatencyMode::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    imp::install_logger();
    gst::Element::register(
        Some(plugin),
        "whisperencnpu",
        gst::Rank::NONE,
        WhisperEncNpu::static_type(),
    )
}
