//! A bounds-checked little-endian cursor over a model file's bytes, shared by the binary formats
//! (CTranslate2's `model.bin`, whisper.cpp's ggml): every read past the end is an error naming
//! what was being read, never a panic.

use std::path::Path;

use super::error::ModelError;

/// What a read past the end of the file says, in the format's own words.
pub(crate) type Truncation =
    fn(path: &Path, what: String, offset: usize, needed: usize, file_len: usize) -> ModelError;

pub(crate) struct ByteReader<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) pos: usize,
    pub(crate) path: &'a Path,
    truncation: Truncation,
}

impl<'a> ByteReader<'a> {
    pub(crate) fn new(data: &'a [u8], path: &'a Path, truncation: Truncation) -> Self {
        ByteReader {
            data,
            pos: 0,
            path,
            truncation,
        }
    }

    /// The next `n` bytes; `what` names them for the error.
    pub(crate) fn take(
        &mut self,
        n: usize,
        what: &dyn Fn() -> String,
    ) -> Result<&'a [u8], ModelError> {
        match self
            .pos
            .checked_add(n)
            .and_then(|end| self.data.get(self.pos..end))
        {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err((self.truncation)(
                self.path,
                what(),
                self.pos,
                n,
                self.data.len(),
            )),
        }
    }

    pub(crate) fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, ModelError> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16, ModelError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, ModelError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i32(&mut self, what: &dyn Fn() -> String) -> Result<i32, ModelError> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}
