//! The bytes of one model file: memory-mapped, or held in memory (tests, empty files).
//!
//! Every format reader keeps its file as an `Arc<Blob>` and the weight set points into it, so a
//! tensor's bytes are read (and converted) only when a consumer asks for them.
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::ModelError;

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

/// A model file's bytes and the path error messages name.
pub struct Blob {
    path: PathBuf,
    storage: Storage,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("path", &self.path)
            .field("len", &self.bytes().len())
            .finish()
    }
}

impl Blob {
    /// Memory-maps `path` (read-only).
    pub fn open(path: &Path) -> Result<Blob, ModelError> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let meta = file.metadata().map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        if meta.is_dir() {
            return Err(ModelError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("is a directory"),
            });
        }
        let storage = if meta.len() == 0 {
            // Mapping an empty file is not portable; nothing to map anyway.
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only. Like every mmap-based model loader, this relies on
            // nobody truncating or rewriting the file while it is mapped; the parsers never trust
            // the contents, so a file *changed* under us can give wrong numbers but no UB beyond
            // what any mmap of a file shared with other processes implies.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
            Storage::Mapped(map)
        };
        Ok(Blob {
            path: path.to_path_buf(),
            storage,
        })
    }

    /// Bytes held in memory; `path` is only used in error messages.
    pub fn from_bytes(bytes: Vec<u8>, path: impl Into<PathBuf>) -> Blob {
        Blob {
            path: path.into(),
            storage: Storage::Owned(bytes),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }

    /// `len` bytes at `offset`, or `None` if that range is not inside the file.
    pub fn get(&self, offset: usize, len: usize) -> Option<&[u8]> {
        self.bytes().get(offset..offset.checked_add(len)?)
    }
}
