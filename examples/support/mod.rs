//! What the benchmark examples share: finding clips and their reference text, decoding audio into
//! memory, writing WAVs, and `prop=value` arguments set on the element.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use gst::glib;
use gst::prelude::*;
use gst_app::AppSink;

/// The element's input rate (Whisper's).
pub const RATE: u32 = gstwhisperencnpu::mel::SAMPLE_RATE;

/// `../shared` beside the project (WHISPERENCNPU_SHARED overrides), as the tests find it.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("WHISPERENCNPU_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

/// `target/` of this checkout (CARGO_TARGET_DIR overrides), where generated inputs go.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// GStreamer initialised and this crate's element registered (no GST_PLUGIN_PATH needed).
pub fn init_gst() {
    gst::init().expect("GStreamer init");
    gstwhisperencnpu::plugin_register_static().expect("register whisperencnpu");
}

/// One input clip and, when a `manifest.tsv` beside it lists it, its reference text.
#[derive(Clone, Debug)]
pub struct Clip {
    pub path: PathBuf,
    pub reference: Option<String>,
}

/// The rows of a `manifest.tsv` (`file<TAB>reference`, a header line first), paths resolved
/// against the manifest's folder.
pub fn manifest(dir: &Path) -> Result<Vec<Clip>, String> {
    let path = dir.join("manifest.tsv");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('\t'))
        .map(|(file, reference)| Clip {
            path: dir.join(file),
            reference: Some(reference.trim().to_string()),
        })
        .collect())
}

/// A command-line input: a folder is its manifest's clips in manifest order (or its WAVs sorted by
/// name when it has no manifest), a file is itself with its manifest row if there is one.
pub fn clips_of(arg: &Path) -> Result<Vec<Clip>, String> {
    if arg.is_dir() {
        if arg.join("manifest.tsv").is_file() {
            return manifest(arg);
        }
        let mut wavs: Vec<PathBuf> = std::fs::read_dir(arg)
            .map_err(|e| format!("{}: {e}", arg.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wav"))
            .collect();
        wavs.sort();
        return Ok(wavs
            .into_iter()
            .map(|path| Clip {
                path,
                reference: None,
            })
            .collect());
    }
    if !arg.is_file() {
        return Err(format!("{}: no such file or folder", arg.display()));
    }
    let reference = arg
        .parent()
        .and_then(|dir| manifest(dir).ok())
        .and_then(|rows| {
            rows.into_iter()
                .find(|c| same_file(&c.path, arg))
                .and_then(|c| c.reference)
        });
    Ok(vec![Clip {
        path: arg.to_path_buf(),
        reference,
    }])
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Any file GStreamer decodes, as 16 kHz mono S16 samples (`filesrc ! decodebin ! audioconvert !
/// audioresample ! appsink`), decoded as fast as it goes.
pub fn decode_audio(path: &Path) -> Result<Vec<i16>, String> {
    let pipeline = gst::Pipeline::new();
    let make = |name: &str| {
        gst::ElementFactory::make(name)
            .build()
            .map_err(|_| format!("GStreamer element {name} is missing (scripts/install-deps)"))
    };
    let src = gst::ElementFactory::make("filesrc")
        .property("location", path.to_str().ok_or("path is not UTF-8")?)
        .build()
        .map_err(|e| e.to_string())?;
    let decode = make("decodebin")?;
    let convert = make("audioconvert")?;
    let resample = make("audioresample")?;
    let sink = AppSink::builder()
        .caps(
            &gst_audio::AudioCapsBuilder::new_interleaved()
                .format(gst_audio::AudioFormat::S16le)
                .rate(RATE as i32)
                .channels(1)
                .build(),
        )
        .sync(false)
        .build();
    pipeline
        .add_many([&src, &decode, &convert, &resample, sink.upcast_ref()])
        .map_err(|e| e.to_string())?;
    src.link(&decode).map_err(|e| e.to_string())?;
    gst::Element::link_many([&convert, &resample, sink.upcast_ref()]).map_err(|e| e.to_string())?;
    let convert_sink = convert
        .static_pad("sink")
        .expect("audioconvert has a sink pad");
    decode.connect_pad_added(move |_, pad| {
        if !convert_sink.is_linked() {
            let _ = pad.link(&convert_sink);
        }
    });

    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut samples = Vec::new();
    let result = loop {
        match sink.try_pull_sample(gst::ClockTime::from_seconds(1)) {
            Some(sample) => {
                let Some(buffer) = sample.buffer() else {
                    continue;
                };
                let map = buffer.map_readable().map_err(|e| e.to_string())?;
                samples.extend(
                    map.chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]])),
                );
            }
            None if sink.is_eos() => break Ok(samples),
            None => {
                // No sample for a second: an error, or still starting.
                let bus = pipeline.bus().expect("a pipeline has a bus");
                if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
                    if let gst::MessageView::Error(e) = msg.view() {
                        break Err(format!("{}: {}", path.display(), e.error()));
                    }
                }
            }
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    result
}

/// Writes 16 kHz mono 16-bit PCM.
pub fn write_wav(path: &Path, samples: &[i16]) -> std::io::Result<()> {
    let data_len = (samples.len() * 2) as u32;
    let mut bytes = Vec::with_capacity(44 + data_len as usize);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
    bytes.extend_from_slice(&RATE.to_le_bytes());
    bytes.extend_from_slice(&(RATE * 2).to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    bytes.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, bytes)
}

pub fn seconds(samples: usize) -> f64 {
    samples as f64 / RATE as f64
}

/// `name=value` arguments for the element, set in order with GStreamer's string parsing, so any
/// property (today's or one merged later, such as `latency-mode`) passes through unchanged.
/// `model=base` is short for the installed model of that name.
#[derive(Clone, Debug, Default)]
pub struct ElementProps(pub Vec<(String, String)>);

impl ElementProps {
    /// Takes `name=value` out of `arg`; false when `arg` is not of that form.
    pub fn take(&mut self, arg: &str) -> bool {
        match arg.split_once('=') {
            Some((name, value)) if !name.is_empty() && !name.starts_with('-') => {
                self.0.retain(|(n, _)| n != name);
                self.0.push((name.to_string(), value.to_string()));
                true
            }
            _ => false,
        }
    }

    /// Adds `name=value` unless the command line set `name`.
    pub fn set_default(&mut self, name: &str, value: &str) {
        if !self.0.iter().any(|(n, _)| n == name) {
            self.0.insert(0, (name.to_string(), value.to_string()));
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets every property on `element`; an unknown name or a bad value is an error naming it.
    pub fn apply(&self, element: &gst::Element) -> Result<(), String> {
        for (name, value) in &self.0 {
            let Some(spec) = element.find_property(name) else {
                return Err(format!(
                    "{} has no property {name:?} (not merged into this build?)",
                    element
                        .factory()
                        .map_or("the element".into(), |f| f.name().to_string())
                ));
            };
            let value = if name == "model" && !Path::new(value).is_dir() {
                gstwhisperencnpu::model::default_models_root()
                    .join(value)
                    .to_string_lossy()
                    .into_owned()
            } else {
                value.clone()
            };
            let parsed = glib::Value::deserialize(&value, spec.value_type())
                .map_err(|_| format!("{name}={value}: not a valid {}", spec.value_type()))?;
            element.set_property_from_value(name, &parsed);
        }
        Ok(())
    }

    /// `name=value` pairs as a JSON object, for the machine-readable line.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        )
    }
}

/// Nearest-rank percentile of `sorted` (ascending), `p` in [0, 100].
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// A finite number as JSON, NaN as null.
pub fn json_number(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64((v * 1000.0).round() / 1000.0)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}
