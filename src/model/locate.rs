//! Model names (`base`, `tiny.en`, `openai/whisper-base`, `Systran/faster-whisper-base`,
//! `ggml-base.en.bin`) to model paths, looked up offline in the places each tool installs its
//! models; nothing is downloaded.
//!
//! | name | looked for in |
//! | --- | --- |
//! | an existing path | itself |
//! | `NAME` (`base`, `tiny.en`, `large-v3-turbo`) | our folder `NAME/`; the Hugging Face cache as `openai/whisper-NAME` and `Systran/faster-whisper-NAME`; whisper.cpp folders as `ggml-NAME.bin` |
//! | `ORG/NAME` | the Hugging Face cache; for `Systran/faster-whisper-NAME`, our folder `NAME/` too (the same CTranslate2 files) |
//! | `ggml-NAME.bin` (any `*.bin`) | whisper.cpp folders, our folder |
//!
//! Our folder is [`default_models_root`](super::default_models_root); the Hugging Face cache is
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, holding
//! `models--ORG--NAME/snapshots/REV/` (REV from `refs/main`, else the newest snapshot);
//! whisper.cpp's folders are `$WHISPER_CPP_MODELS` (ours), `./models` (where its
//! `download-ggml-model.sh` puts them), `~/whisper.cpp/models`, `~/.cache/whisper.cpp`,
//! `/usr/local/share/whisper.cpp/models` and `/usr/share/whisper.cpp/models`.
use std::path::{Path, PathBuf};

use super::ModelError;

/// Where models are looked for.
#[derive(Clone, Debug)]
pub struct SearchPaths {
    /// Our folder (one directory per model name).
    pub ours: PathBuf,
    /// The Hugging Face hub cache (`.../hub`).
    pub hf_hub: PathBuf,
    /// whisper.cpp model folders, in order.
    pub ggml_dirs: Vec<PathBuf>,
}

fn var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home() -> Option<PathBuf> {
    var("HOME")
}

impl SearchPaths {
    /// The places the environment gives (see the module documentation).
    pub fn from_env() -> SearchPaths {
        let home = home();
        let hf_hub = var("HF_HUB_CACHE")
            .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
            .or_else(|| {
                var("XDG_CACHE_HOME")
                    .or_else(|| home.as_ref().map(|h| h.join(".cache")))
                    .map(|c| c.join("huggingface").join("hub"))
            })
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        let mut ggml_dirs: Vec<PathBuf> = var("WHISPER_CPP_MODELS").into_iter().collect();
        ggml_dirs.push(PathBuf::from("models"));
        if let Some(h) = &home {
            ggml_dirs.push(h.join("whisper.cpp").join("models"));
            ggml_dirs.push(h.join(".cache").join("whisper.cpp"));
        }
        ggml_dirs.push(PathBuf::from("/usr/local/share/whisper.cpp/models"));
        ggml_dirs.push(PathBuf::from("/usr/share/whisper.cpp/models"));
        // Relative folders as absolute ones, so that a "not found" message says where.
        let cwd = std::env::current_dir().unwrap_or_default();
        SearchPaths {
            ours: cwd.join(super::default_models_root()),
            hf_hub: cwd.join(hf_hub),
            ggml_dirs: ggml_dirs.into_iter().map(|d| cwd.join(d)).collect(),
        }
    }
}

/// `path` itself if it exists or is written as a path; otherwise the model it names, looked up
/// with [`SearchPaths::from_env`].
pub fn resolve(path: &Path) -> Result<PathBuf, ModelError> {
    resolve_in(path, &SearchPaths::from_env())
}

/// Whether `s` is written as a path rather than a name: absolute, `./`, `../`, `~/`.
fn is_written_as_path(s: &str) -> bool {
    s.starts_with('/')
        || s.starts_with("./")
        || s.starts_with("../")
        || s.starts_with('~')
        || s == "."
        || s == ".."
}

/// [`resolve`] with explicit search places.
pub fn resolve_in(path: &Path, places: &SearchPaths) -> Result<PathBuf, ModelError> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let Some(s) = path.to_str() else {
        return Ok(path.to_path_buf());
    };
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(h) = home() {
            return Ok(h.join(rest));
        }
    }
    if is_written_as_path(s) || s.is_empty() {
        return Ok(path.to_path_buf());
    }
    let s = s.trim_end_matches('/');
    let mut searched = Vec::new();
    for candidate in candidates(s, places) {
        if let Some(found) = candidate.existing() {
            log::info!(target: "whisperencnpu", "model {s:?} is {}", found.display());
            return Ok(found);
        }
        searched.push(candidate.shown());
    }
    Err(ModelError::NotFound {
        name: s.to_string(),
        searched,
    })
}

/// What a prepared model depends on on disk: the path `path` resolves to and the size and time of
/// each file of the model (a model replaced on disk, or a name that now resolves elsewhere, gives
/// another fingerprint). Empty if nothing is found.
pub fn fingerprint(path: &Path) -> String {
    let Ok(resolved) = resolve(path) else {
        return String::new();
    };
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| format!("{} {} {:?}", p.display(), m.len(), m.modified().ok()))
            .unwrap_or_default()
    };
    if !resolved.is_dir() {
        return stamp(&resolved);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&resolved)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|f| f.is_file());
    files.sort();
    files
        .iter()
        .map(|f| stamp(f))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One place a name may be.
enum Candidate {
    /// A file or directory.
    Path(PathBuf),
    /// A Hugging Face cache entry `models--ORG--NAME`.
    HfRepo(PathBuf),
}

impl Candidate {
    fn existing(&self) -> Option<PathBuf> {
        match self {
            Candidate::Path(p) => p.exists().then(|| p.clone()),
            Candidate::HfRepo(repo) => hf_snapshot(repo),
        }
    }

    fn shown(&self) -> PathBuf {
        match self {
            Candidate::Path(p) => p.clone(),
            Candidate::HfRepo(repo) => repo.join("snapshots").join("*"),
        }
    }
}

/// The cache folder of Hugging Face repository `org/name`.
fn hf_repo(hub: &Path, org: &str, name: &str) -> Candidate {
    Candidate::HfRepo(hub.join(format!("models--{org}--{name}")))
}

/// The places a name may be, in the order they are tried.
fn candidates(s: &str, p: &SearchPaths) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some((org, name)) = s.split_once('/') {
        if !name.contains('/') && !org.is_empty() && !name.is_empty() {
            out.push(hf_repo(&p.hf_hub, org, name));
            // faster-whisper's repositories are the CTranslate2 models our folder holds.
            if org.eq_ignore_ascii_case("Systran") {
                if let Some(short) = name.strip_prefix("faster-whisper-") {
                    out.push(Candidate::Path(p.ours.join(short)));
                }
            }
        }
        out.push(Candidate::Path(p.ours.join(s)));
        return out;
    }
    if s.ends_with(".bin") {
        out.extend(p.ggml_dirs.iter().map(|d| Candidate::Path(d.join(s))));
        out.push(Candidate::Path(p.ours.join(s)));
        return out;
    }
    out.push(Candidate::Path(p.ours.join(s)));
    out.push(hf_repo(&p.hf_hub, "openai", &format!("whisper-{s}")));
    out.push(hf_repo(
        &p.hf_hub,
        "Systran",
        &format!("faster-whisper-{s}"),
    ));
    let file = format!("ggml-{s}.bin");
    out.extend(p.ggml_dirs.iter().map(|d| Candidate::Path(d.join(&file))));
    out
}

/// The snapshot of a cached repository: the one `refs/main` names, else the newest.
fn hf_snapshot(repo: &Path) -> Option<PathBuf> {
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let dir = snapshots.join(rev.trim());
        if !rev.trim().is_empty() && dir.is_dir() {
            return Some(dir);
        }
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(root: &Path) -> SearchPaths {
        SearchPaths {
            ours: root.join("ours"),
            hf_hub: root.join("hub"),
            ggml_dirs: vec![root.join("ggml")],
        }
    }

    #[test]
    fn names_are_looked_up_and_missing_ones_listed() {
        let root = std::env::temp_dir().join(format!("locate-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let p = places(&root);
        let snap = p
            .hf_hub
            .join("models--openai--whisper-base/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(p.hf_hub.join("models--openai--whisper-base/refs")).unwrap();
        std::fs::write(
            p.hf_hub.join("models--openai--whisper-base/refs/main"),
            "abc123\n",
        )
        .unwrap();
        std::fs::create_dir_all(p.ours.join("tiny.en")).unwrap();
        std::fs::create_dir_all(&p.ggml_dirs[0]).unwrap();
        std::fs::write(p.ggml_dirs[0].join("ggml-small.bin"), b"x").unwrap();

        let r = |s: &str| resolve_in(Path::new(s), &p);
        assert_eq!(r("openai/whisper-base").unwrap(), snap);
        assert_eq!(r("openai/whisper-base/").unwrap(), snap);
        assert_eq!(r("base").unwrap(), snap);
        assert_eq!(r("tiny.en").unwrap(), p.ours.join("tiny.en"));
        assert_eq!(
            r("Systran/faster-whisper-tiny.en").unwrap(),
            p.ours.join("tiny.en")
        );
        assert_eq!(
            r("ggml-small.bin").unwrap(),
            p.ggml_dirs[0].join("ggml-small.bin")
        );
        assert_eq!(r("small").unwrap(), p.ggml_dirs[0].join("ggml-small.bin"));
        // Written as paths: returned as they are, for the loader to report.
        assert_eq!(r("/no/such/dir").unwrap(), PathBuf::from("/no/such/dir"));
        assert_eq!(r("./nope").unwrap(), PathBuf::from("./nope"));

        let e = r("large-v3-turbo").unwrap_err();
        let msg = e.to_string();
        for place in [
            p.ours.join("large-v3-turbo"),
            p.hf_hub.join("models--openai--whisper-large-v3-turbo"),
            p.hf_hub
                .join("models--Systran--faster-whisper-large-v3-turbo"),
            p.ggml_dirs[0].join("ggml-large-v3-turbo.bin"),
        ] {
            assert!(msg.contains(&*place.to_string_lossy()), "{msg}");
        }
        assert!(msg.contains("fetch-models"), "{msg}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
