//! Reader for CTranslate2's `model.bin`.
//!
//! Layout (little endian, no alignment padding anywhere, so data may sit at any offset):
//!
//! ```text
//! u32 binary_version                      (1..=6; the Whisper models here are 6)
//! if version >= 2: string spec_name, u32 spec_revision    e.g. "WhisperSpec", 3
//! u32 n_variables
//! n_variables x {
//!     string name
//!     u8 rank, rank x u32 dims
//!     version >= 4: u8 dtype (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16)
//!     version <  4: u8 item size (4 f32, 2 i16, 1 i8)
//!     u32 n_bytes, n_bytes raw bytes
//! }
//! if version >= 3: u32 n_aliases, n_aliases x { string alias, string target }
//! ```
//!
//! where `string` is a u16 length (including a trailing NUL) followed by that many bytes.
//!
//! The file is memory-mapped; variables are indexed by name and their bytes are only read (and
//! converted to `f32`) on request. Every read is bounds-checked: any input, however corrupt, gives
//! a [`ModelError`], never a panic.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array1, Array2, Array3, ArrayD, IxDyn};

use super::blob::Blob;
use super::bytes::ByteReader;
use super::error::ModelError;

/// Newest binary format version this reader knows (CTranslate2 4.x writes 6).
pub const MAX_BINARY_VERSION: u32 = 6;

/// Data type of a stored variable (CTranslate2's `DataType` enum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl DType {
    /// From the CTranslate2 enum value stored by binary versions >= 4.
    pub fn from_code(code: u8) -> Option<DType> {
        Some(match code {
            0 => DType::F32,
            1 => DType::I8,
            2 => DType::I16,
            3 => DType::I32,
            4 => DType::F16,
            5 => DType::BF16,
            _ => return None,
        })
    }

    /// From the item size stored by binary versions < 4.
    fn from_item_size(size: u8) -> Option<DType> {
        Some(match size {
            4 => DType::F32,
            2 => DType::I16,
            1 => DType::I8,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    /// float32, float16 or bfloat16.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One stored variable: where its bytes are and what they hold.
#[derive(Clone, Debug)]
pub struct VarInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// Byte offset of the data in the file.
    pub offset: usize,
    /// Byte length of the data.
    pub len: usize,
}

impl VarInfo {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed CTranslate2 model file.
pub struct Ct2File {
    path: PathBuf,
    blob: Arc<Blob>,
    binary_version: u32,
    spec: Option<String>,
    spec_revision: u32,
    vars: Vec<VarInfo>,
    index: HashMap<String, usize>,
    aliases: HashMap<String, String>,
}

impl std::fmt::Debug for Ct2File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ct2File")
            .field("path", &self.path)
            .field("binary_version", &self.binary_version)
            .field("spec", &self.spec)
            .field("spec_revision", &self.spec_revision)
            .field("variables", &self.vars.len())
            .field("aliases", &self.aliases.len())
            .finish()
    }
}

impl Ct2File {
    /// Memory-maps and parses `path`.
    pub fn open(path: &Path) -> Result<Ct2File, ModelError> {
        Self::parse(Arc::new(Blob::open(path)?))
    }

    /// Parses a model held in memory; `path` is only used in error messages.
    pub fn from_bytes(bytes: Vec<u8>, path: impl Into<PathBuf>) -> Result<Ct2File, ModelError> {
        Self::parse(Arc::new(Blob::from_bytes(bytes, path)))
    }

    /// Parses the file held by `blob` (shared: the weight set points into it).
    pub(crate) fn parse(blob: Arc<Blob>) -> Result<Ct2File, ModelError> {
        let header = {
            let mut r = ByteReader::new(blob.bytes(), blob.path(), truncated);
            parse_layout(&mut r)?
        };
        Ok(Ct2File {
            path: blob.path().to_path_buf(),
            blob,
            binary_version: header.binary_version,
            spec: header.spec,
            spec_revision: header.spec_revision,
            vars: header.vars,
            index: header.index,
            aliases: header.aliases,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's bytes.
    pub(crate) fn blob(&self) -> &Arc<Blob> {
        &self.blob
    }

    pub fn binary_version(&self) -> u32 {
        self.binary_version
    }

    /// Spec name, e.g. `"WhisperSpec"` (`None` for binary version 1, which has none).
    pub fn spec(&self) -> Option<&str> {
        self.spec.as_deref()
    }

    pub fn spec_revision(&self) -> u32 {
        self.spec_revision
    }

    /// All stored variables, in file order (aliases not included).
    pub fn variables(&self) -> &[VarInfo] {
        &self.vars
    }

    /// Alias name -> target variable name.
    pub fn aliases(&self) -> &HashMap<String, String> {
        &self.aliases
    }

    /// Whether `name` (or an alias of that name) exists.
    pub fn contains(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    fn lookup(&self, name: &str) -> Option<&VarInfo> {
        if let Some(&i) = self.index.get(name) {
            return self.vars.get(i);
        }
        let target = self.aliases.get(name)?;
        self.index.get(target).and_then(|&i| self.vars.get(i))
    }

    /// Metadata of a variable (aliases resolved).
    pub fn info(&self, name: &str) -> Result<&VarInfo, ModelError> {
        self.lookup(name)
            .ok_or_else(|| ModelError::MissingVariable {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// Metadata of a variable, checking its shape.
    pub fn info_shaped(&self, name: &str, expected: &[usize]) -> Result<&VarInfo, ModelError> {
        let info = self.info(name)?;
        if info.shape != expected {
            return Err(self.shape_error(name, format!("{expected:?}"), &info.shape));
        }
        Ok(info)
    }

    /// The stored bytes of a variable, without copying.
    pub fn raw_bytes(&self, name: &str) -> Result<&[u8], ModelError> {
        let info = self.info(name)?;
        // Checked at parse time; `get` keeps this panic-free regardless.
        self.blob
            .get(info.offset, info.len)
            .ok_or_else(|| ModelError::Malformed {
                path: self.path.clone(),
                reason: format!("data of {name:?} lies outside the file"),
            })
    }

    /// A float variable (float32, float16 or bfloat16) converted to `f32`, in its stored shape.
    pub fn to_f32_array(&self, name: &str) -> Result<ArrayD<f32>, ModelError> {
        let info = self.info(name)?;
        let data = self.to_f32_vec(name)?;
        ArrayD::from_shape_vec(IxDyn(&info.shape), data).map_err(|e| ModelError::Malformed {
            path: self.path.clone(),
            reason: format!("variable {name:?}: {e}"),
        })
    }

    /// A float variable converted to `f32`, flattened in row-major order.
    pub fn to_f32_vec(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let info = self.info(name)?;
        let bytes = self.raw_bytes(name)?;
        match info.dtype {
            DType::F32 => Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            DType::F16 => Ok(bytes
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect()),
            DType::BF16 => Ok(bytes
                .chunks_exact(2)
                .map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect()),
            other => Err(ModelError::UnsupportedDtype {
                path: self.path.clone(),
                name: name.to_string(),
                dtype: other.name().to_string(),
                reason: "expected a float type (float32, float16 or bfloat16)".to_string(),
            }),
        }
    }

    /// A 1-D float variable of length `n`, as `f32`.
    pub fn f32_1d(&self, name: &str, n: usize) -> Result<Array1<f32>, ModelError> {
        self.info_shaped(name, &[n])?;
        Ok(Array1::from_vec(self.to_f32_vec(name)?))
    }

    /// A 2-D float variable of shape `rows x cols`, as `f32`.
    pub fn f32_2d(&self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>, ModelError> {
        self.info_shaped(name, &[rows, cols])?;
        let v = self.to_f32_vec(name)?;
        Array2::from_shape_vec((rows, cols), v).map_err(|e| ModelError::Malformed {
            path: self.path.clone(),
            reason: format!("variable {name:?}: {e}"),
        })
    }

    /// A 3-D float variable of shape `a x b x c`, as `f32`.
    pub fn f32_3d(
        &self,
        name: &str,
        a: usize,
        b: usize,
        c: usize,
    ) -> Result<Array3<f32>, ModelError> {
        self.info_shaped(name, &[a, b, c])?;
        let v = self.to_f32_vec(name)?;
        Array3::from_shape_vec((a, b, c), v).map_err(|e| ModelError::Malformed {
            path: self.path.clone(),
            reason: format!("variable {name:?}: {e}"),
        })
    }

    /// A scalar integer variable (int8, int16 or int32; a 1-element array is accepted too).
    pub fn scalar_int(&self, name: &str) -> Result<i64, ModelError> {
        let info = self.info(name)?;
        if info.numel() != 1 {
            return Err(self.shape_error(name, "a scalar".to_string(), &info.shape));
        }
        let b = self.raw_bytes(name)?;
        let v = match (info.dtype, b) {
            (DType::I8, [a]) => *a as i8 as i64,
            (DType::I16, [a, c]) => i16::from_le_bytes([*a, *c]) as i64,
            (DType::I32, [a, c, d, e]) => i32::from_le_bytes([*a, *c, *d, *e]) as i64,
            (dtype, _) => {
                return Err(ModelError::UnsupportedDtype {
                    path: self.path.clone(),
                    name: name.to_string(),
                    dtype: dtype.name().to_string(),
                    reason: "expected an integer scalar".to_string(),
                })
            }
        };
        Ok(v)
    }

    pub(crate) fn shape_error(&self, name: &str, expected: String, found: &[usize]) -> ModelError {
        ModelError::UnexpectedShape {
            path: self.path.clone(),
            name: name.to_string(),
            expected,
            found: found.to_vec(),
        }
    }
}

/// IEEE 754 binary16 -> binary32, exact (subnormals, infinities and NaN included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x03ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m * 2^-24; normalise it.
            let shift = m.leading_zeros() - 21; // bring the top set bit to bit 10
            let m = (m << shift) & 0x03ff;
            let e = 127 - 15 + 1 - shift;
            sign | (e << 23) | (m << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 -> binary32 (exact: bfloat16 is the top half of a binary32).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

struct Layout {
    binary_version: u32,
    spec: Option<String>,
    spec_revision: u32,
    vars: Vec<VarInfo>,
    index: HashMap<String, usize>,
    aliases: HashMap<String, String>,
}

/// CTranslate2's words for a read past the end of `model.bin`.
fn truncated(
    path: &Path,
    what: String,
    offset: usize,
    needed: usize,
    file_len: usize,
) -> ModelError {
    ModelError::Truncated {
        path: path.to_path_buf(),
        what,
        offset: offset as u64,
        needed: needed as u64,
        file_len: file_len as u64,
    }
}

impl ByteReader<'_> {
    /// u16 length (including the trailing NUL) + bytes; the string ends at the first NUL.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, ModelError> {
        let start = self.pos;
        let len = self.u16(&|| format!("the length of {}", what()))? as usize;
        let bytes = self.take(len, what)?;
        let text = match bytes.iter().position(|&b| b == 0) {
            Some(n) => &bytes[..n],
            None => bytes,
        };
        std::str::from_utf8(text)
            .map(str::to_string)
            .map_err(|_| ModelError::Malformed {
                path: self.path.to_path_buf(),
                reason: format!("{} at byte offset {start} is not valid UTF-8", what()),
            })
    }

    fn malformed(&self, reason: String) -> ModelError {
        ModelError::Malformed {
            path: self.path.to_path_buf(),
            reason,
        }
    }
}

fn parse_layout(r: &mut ByteReader<'_>) -> Result<Layout, ModelError> {
    let file_len = r.data.len();
    if file_len < 4 {
        return Err(ModelError::NotCt2 {
            path: r.path.to_path_buf(),
            reason: format!("file is only {file_len} bytes long"),
        });
    }
    let binary_version = r.u32(&|| "the binary version".to_string())?;
    if binary_version == 0 || binary_version > 1000 {
        return Err(ModelError::NotCt2 {
            path: r.path.to_path_buf(),
            reason: format!(
                "implausible binary version {binary_version} (first bytes {:02x?})",
                &r.data[..file_len.min(8)]
            ),
        });
    }
    if binary_version > MAX_BINARY_VERSION {
        return Err(ModelError::UnsupportedVersion {
            path: r.path.to_path_buf(),
            version: binary_version,
            max: MAX_BINARY_VERSION,
        });
    }

    let (spec, spec_revision) = if binary_version >= 2 {
        let spec = r.string(&|| "the spec name".to_string())?;
        if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ModelError::NotCt2 {
                path: r.path.to_path_buf(),
                reason: format!("implausible spec name {spec:?}"),
            });
        }
        let rev = r.u32(&|| "the spec revision".to_string())?;
        (Some(spec), rev)
    } else {
        (None, 1)
    };

    let n_vars = r.u32(&|| "the number of variables".to_string())? as usize;
    // Each variable needs at least 2 (name length) + 1 (rank) + 1 (dtype) + 4 (byte count) bytes:
    // never reserve more than the file could hold.
    let remaining = file_len - r.pos;
    let mut vars = Vec::with_capacity(n_vars.min(remaining / 8));
    let mut index = HashMap::with_capacity(n_vars.min(remaining / 8));
    for i in 0..n_vars {
        let name = r.string(&|| format!("the name of variable {i} of {n_vars}"))?;
        if name.is_empty() {
            return Err(r.malformed(format!("variable {i} has an empty name")));
        }
        let rank = r.u8(&|| format!("the rank of variable {name:?}"))? as usize;
        let mut shape = Vec::with_capacity(rank);
        for d in 0..rank {
            shape.push(r.u32(&|| format!("dimension {d} of variable {name:?}"))? as usize);
        }
        let dtype = if binary_version >= 4 {
            let code = r.u8(&|| format!("the data type of variable {name:?}"))?;
            DType::from_code(code).ok_or_else(|| ModelError::UnsupportedDtype {
                path: r.path.to_path_buf(),
                name: name.clone(),
                dtype: format!("code {code}"),
                reason: "which is not a CTranslate2 data type this reader knows".to_string(),
            })?
        } else {
            let size = r.u8(&|| format!("the item size of variable {name:?}"))?;
            DType::from_item_size(size).ok_or_else(|| ModelError::UnsupportedDtype {
                path: r.path.to_path_buf(),
                name: name.clone(),
                dtype: format!("of item size {size}"),
                reason: "which binary versions < 4 do not define".to_string(),
            })?
        };
        let n_bytes = r.u32(&|| format!("the byte count of variable {name:?}"))? as usize;
        let expected_bytes = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
        if expected_bytes != Some(n_bytes) {
            return Err(r.malformed(format!(
                "variable {name:?} of shape {shape:?} and type {dtype} has {n_bytes} bytes of data, \
                 expected {}",
                match expected_bytes {
                    Some(n) => n.to_string(),
                    None => "an overflowing count".to_string(),
                }
            )));
        }
        let offset = r.pos;
        r.take(n_bytes, &|| {
            format!("the {n_bytes} data bytes of variable {name:?}")
        })?;
        if index.insert(name.clone(), vars.len()).is_some() {
            return Err(r.malformed(format!("variable {name:?} is stored twice")));
        }
        vars.push(VarInfo {
            name,
            shape,
            dtype,
            offset,
            len: n_bytes,
        });
    }

    let mut aliases = HashMap::new();
    if binary_version >= 3 {
        let n_aliases = r.u32(&|| "the number of aliases".to_string())?;
        for i in 0..n_aliases {
            let alias = r.string(&|| format!("the name of alias {i} of {n_aliases}"))?;
            let target = r.string(&|| format!("the target of alias {alias:?}"))?;
            if !index.contains_key(&target) {
                return Err(r.malformed(format!(
                    "alias {alias:?} points to {target:?}, which is not a variable"
                )));
            }
            aliases.insert(alias, target);
        }
    }

    Ok(Layout {
        binary_version,
        spec,
        spec_revision,
        vars,
        index,
        aliases,
    })
}

/// Builds CTranslate2 files in memory (tests of this reader and of the model loader).
#[doc(hidden)]
pub mod writer {
    /// A variable to write: name, shape, dtype code, raw bytes.
    pub struct Var {
        pub name: String,
        pub shape: Vec<u32>,
        pub dtype: u8,
        pub data: Vec<u8>,
    }

    impl Var {
        pub fn f32(name: &str, shape: &[u32], values: &[f32]) -> Var {
            Var {
                name: name.to_string(),
                shape: shape.to_vec(),
                dtype: 0,
                data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            }
        }

        /// Stored as float16 bits given by the caller.
        pub fn f16_bits(name: &str, shape: &[u32], bits: &[u16]) -> Var {
            Var {
                name: name.to_string(),
                shape: shape.to_vec(),
                dtype: 4,
                data: bits.iter().flat_map(|v| v.to_le_bytes()).collect(),
            }
        }

        pub fn i16_scalar(name: &str, v: i16) -> Var {
            Var {
                name: name.to_string(),
                shape: vec![],
                dtype: 2,
                data: v.to_le_bytes().to_vec(),
            }
        }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    /// Serialises a binary version 6 file.
    pub fn write(spec: &str, revision: u32, vars: &[Var], aliases: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        string(&mut out, spec);
        out.extend_from_slice(&revision.to_le_bytes());
        out.extend_from_slice(&(vars.len() as u32).to_le_bytes());
        for v in vars {
            string(&mut out, &v.name);
            out.push(v.shape.len() as u8);
            for d in &v.shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.push(v.dtype);
            out.extend_from_slice(&(v.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&v.data);
        }
        out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
        for (a, t) in aliases {
            string(&mut out, a);
            string(&mut out, t);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::writer::{write, Var};
    use super::*;

    fn tiny() -> Vec<u8> {
        write(
            "WhisperSpec",
            3,
            &[
                Var::f32("a/weight", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]),
                // 1.0, -2.0, 0.5, 65504, smallest subnormal, inf
                Var::f16_bits(
                    "a/half",
                    &[2, 3],
                    &[0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0x7c00],
                ),
                Var {
                    name: "a/bf".to_string(),
                    shape: vec![2],
                    dtype: 5,
                    data: vec![0x80, 0x3f, 0x40, 0xc0], // 1.0, -3.0
                },
                Var::i16_scalar("a/num_heads", 6),
            ],
            &[("a/alias", "a/weight")],
        )
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert!(f16_to_f32(0x8000).is_sign_negative());
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        // Every finite half round-trips through f64 arithmetic.
        for h in 0u16..=0xffff {
            let e = (h >> 10) & 0x1f;
            if e == 0x1f {
                continue;
            }
            let m = (h & 0x3ff) as f64;
            let mag = if e == 0 {
                m * 2f64.powi(-24)
            } else {
                (1.0 + m / 1024.0) * 2f64.powi(e as i32 - 15)
            };
            let v = if h & 0x8000 != 0 { -mag } else { mag };
            assert_eq!(f16_to_f32(h) as f64, v, "half {h:#06x}");
        }
    }

    #[test]
    fn parses_a_valid_file() {
        let f = Ct2File::from_bytes(tiny(), "tiny.bin").unwrap();
        assert_eq!(f.binary_version(), 6);
        assert_eq!(f.spec(), Some("WhisperSpec"));
        assert_eq!(f.spec_revision(), 3);
        assert_eq!(f.variables().len(), 4);
        let w = f.to_f32_array("a/weight").unwrap();
        assert_eq!(w.shape(), &[2, 3]);
        assert_eq!(w[[1, 2]], -6.5);
        let aliased = f.f32_2d("a/alias", 2, 3).unwrap();
        assert_eq!(aliased[[0, 1]], 2.0);
        let h = f.to_f32_vec("a/half").unwrap();
        assert_eq!(
            h,
            vec![1.0, -2.0, 0.5, 65504.0, 2f32.powi(-24), f32::INFINITY]
        );
        assert_eq!(f.f32_1d("a/bf", 2).unwrap().to_vec(), vec![1.0, -3.0]);
        assert_eq!(f.scalar_int("a/num_heads").unwrap(), 6);
        assert_eq!(f.info("a/half").unwrap().dtype, DType::F16);
    }

    #[test]
    fn variable_errors() {
        let f = Ct2File::from_bytes(tiny(), "tiny.bin").unwrap();
        let e = f.to_f32_array("nope").unwrap_err();
        assert!(matches!(e, ModelError::MissingVariable { ref name, .. } if name == "nope"));
        assert!(e.to_string().contains("\"nope\""), "{e}");
        let e = f.f32_2d("a/weight", 3, 2).unwrap_err();
        assert!(matches!(e, ModelError::UnexpectedShape { .. }), "{e}");
        assert!(e.to_string().contains("[2, 3]"), "{e}");
        let e = f.to_f32_vec("a/num_heads").unwrap_err();
        assert!(matches!(e, ModelError::UnsupportedDtype { .. }), "{e}");
        let e = f.scalar_int("a/weight").unwrap_err();
        assert!(matches!(e, ModelError::UnexpectedShape { .. }), "{e}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = tiny();
        for len in 0..full.len() {
            match Ct2File::from_bytes(full[..len].to_vec(), "cut.bin") {
                Err(ModelError::Truncated {
                    offset,
                    needed,
                    file_len,
                    ref what,
                    ..
                }) => {
                    assert_eq!(file_len, len as u64);
                    assert!(offset + needed > file_len, "{what} at {offset}+{needed}");
                }
                Err(ModelError::NotCt2 { .. }) if len < 4 => {}
                other => panic!("length {len}: {other:?}"),
            }
        }
        // The message says what and where.
        let e = Ct2File::from_bytes(full[..60].to_vec(), "cut.bin").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("truncated") && msg.contains("offset"), "{msg}");
    }

    #[test]
    fn garbage_is_not_ct2() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let e = Ct2File::from_bytes(garbage, "garbage.bin").unwrap_err();
        assert!(matches!(e, ModelError::NotCt2 { .. }), "{e:?}");
        let e = Ct2File::from_bytes(b"<html>not a model</html>".to_vec(), "x").unwrap_err();
        assert!(matches!(e, ModelError::NotCt2 { .. }), "{e:?}");
        let e = Ct2File::from_bytes(vec![], "empty").unwrap_err();
        assert!(matches!(e, ModelError::NotCt2 { .. }), "{e:?}");
    }

    #[test]
    fn unsupported_version() {
        let mut bytes = tiny();
        bytes[..4].copy_from_slice(&7u32.to_le_bytes());
        let e = Ct2File::from_bytes(bytes, "v7.bin").unwrap_err();
        assert!(
            matches!(e, ModelError::UnsupportedVersion { version: 7, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn fuzzed_files_never_panic() {
        // Flip bytes / overwrite with extreme values all over a valid file.
        let full = tiny();
        for pos in 0..full.len() {
            for v in [0x00u8, 0xff, 0x7f, 0x80, 0x01] {
                let mut b = full.clone();
                b[pos] = v;
                if let Ok(f) = Ct2File::from_bytes(b, "fuzz.bin") {
                    for var in f.variables().to_vec() {
                        let _ = f.to_f32_array(&var.name);
                        let _ = f.scalar_int(&var.name);
                    }
                }
            }
        }
    }

    #[test]
    fn structural_errors() {
        // Byte count inconsistent with the shape.
        let mut v = Var::f32("x", &[2], &[1.0, 2.0]);
        v.data.push(0);
        let e = Ct2File::from_bytes(write("WhisperSpec", 3, &[v], &[]), "x").unwrap_err();
        assert!(matches!(e, ModelError::Malformed { .. }), "{e:?}");
        // Unknown dtype code.
        let mut v = Var::f32("x", &[1], &[1.0]);
        v.dtype = 9;
        let e = Ct2File::from_bytes(write("WhisperSpec", 3, &[v], &[]), "x").unwrap_err();
        assert!(matches!(e, ModelError::UnsupportedDtype { .. }), "{e:?}");
        // Alias to nothing.
        let v = Var::f32("x", &[1], &[1.0]);
        let e = Ct2File::from_bytes(write("WhisperSpec", 3, &[v], &[("y", "z")]), "x").unwrap_err();
        assert!(matches!(e, ModelError::Malformed { .. }), "{e:?}");
        // Huge dimensions overflow.
        let v = Var {
            name: "x".into(),
            shape: vec![u32::MAX, u32::MAX, u32::MAX],
            dtype: 0,
            data: vec![],
        };
        let e = Ct2File::from_bytes(write("WhisperSpec", 3, &[v], &[]), "x").unwrap_err();
        assert!(matches!(e, ModelError::Malformed { .. }), "{e:?}");
    }

    #[test]
    fn open_reports_missing_file_and_reads_a_written_one() {
        let dir = std::env::temp_dir().join(format!("ct2-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.bin");
        let e = Ct2File::open(&missing).unwrap_err();
        assert!(matches!(e, ModelError::FileNotFound { .. }), "{e:?}");
        assert!(e.to_string().contains("missing.bin"));

        let path = dir.join("model.bin");
        std::fs::write(&path, tiny()).unwrap();
        let f = Ct2File::open(&path).unwrap();
        assert_eq!(f.to_f32_vec("a/weight").unwrap()[4], 5.0);

        let empty = dir.join("empty.bin");
        std::fs::write(&empty, b"").unwrap();
        let e = Ct2File::open(&empty).unwrap_err();
        assert!(matches!(e, ModelError::NotCt2 { .. }), "{e:?}");
        drop(f);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
