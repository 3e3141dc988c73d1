//! ggml's block quantizations, dequantized to `f32` at load.
//!
//! Each block holds [`QK`] consecutive values of a row: a float16 scale `d` (and for the `_1`
//! types a float16 offset `m`), then the quantized values. Layouts as ggml defines them in
//! `ggml-common.h` (`block_q4_0` ... `block_q8_0`) and decodes them in `ggml-quants.c`
//! (`dequantize_row_q*`):
//!
//! ```text
//! q4_0  d, qs[16]          x = (nibble - 8) d            low nibbles: values 0..16, high: 16..32
//! q4_1  d, m, qs[16]       x = nibble d + m
//! q5_0  d, qh[4], qs[16]   x = (nibble | fifth bit << 4 - 16) d   fifth bit j of the u32 qh
//! q5_1  d, m, qh[4], qs[16] x = (nibble | fifth bit << 4) d + m
//! q8_0  d, qs[32] (i8)     x = q d
//! ```
//! These are the layouts of ggml's quantization version 2 (`GGML_QNT_VERSION`), which every
//! whisper.cpp quantized model since May 2023 carries.
use crate::model::ct2::f16_to_f32;
use crate::model::weights::StoredType;

/// Values per block of every type here (`QK4_0` = `QK4_1` = `QK5_0` = `QK5_1` = `QK8_0` = 32).
pub const QK: usize = 32;

/// `(values per block, bytes per block)` of a quantized type; `None` for the others.
pub fn block_layout(ty: StoredType) -> Option<(usize, usize)> {
    let bytes = match ty {
        StoredType::Q4_0 => 2 + QK / 2,
        StoredType::Q4_1 => 2 + 2 + QK / 2,
        StoredType::Q5_0 => 2 + 4 + QK / 2,
        StoredType::Q5_1 => 2 + 2 + 4 + QK / 2,
        StoredType::Q8_0 => 2 + QK,
        _ => return None,
    };
    Some((QK, bytes))
}

fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Appends the values of the whole blocks in `bytes` to `out`.
pub fn dequantize_into(ty: StoredType, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), String> {
    let (_, size) = block_layout(ty).ok_or_else(|| format!("{ty} is not a ggml quantization"))?;
    if !bytes.len().is_multiple_of(size) {
        return Err(format!(
            "{} bytes are not a whole number of {size}-byte {ty} blocks",
            bytes.len()
        ));
    }
    out.reserve(bytes.len() / size * QK);
    let mut vals = [0f32; QK];
    for b in bytes.chunks_exact(size) {
        match ty {
            StoredType::Q8_0 => {
                let d = half(b, 0);
                for (v, &q) in vals.iter_mut().zip(&b[2..]) {
                    *v = f32::from(q as i8) * d;
                }
            }
            StoredType::Q4_0 | StoredType::Q4_1 => {
                let d = half(b, 0);
                let (m, qs, bias) = if ty == StoredType::Q4_1 {
                    (half(b, 2), &b[4..], 0)
                } else {
                    (0.0, &b[2..], 8)
                };
                for (j, &q) in qs.iter().enumerate() {
                    vals[j] = f32::from(i16::from(q & 0x0f) - bias) * d + m;
                    vals[j + QK / 2] = f32::from(i16::from(q >> 4) - bias) * d + m;
                }
            }
            StoredType::Q5_0 | StoredType::Q5_1 => {
                let d = half(b, 0);
                let (m, rest, bias) = if ty == StoredType::Q5_1 {
                    (half(b, 2), &b[4..], 0)
                } else {
                    (0.0, &b[2..], 16)
                };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                for (j, &q) in rest[4..].iter().enumerate() {
                    let hi0 = (((qh >> j) & 1) << 4) as u8;
                    let hi1 = (((qh >> (j + QK / 2)) & 1) << 4) as u8;
                    vals[j] = f32::from(i16::from((q & 0x0f) | hi0) - bias) * d + m;
                    vals[j + QK / 2] = f32::from(i16::from((q >> 4) | hi1) - bias) * d + m;
                }
            }
            other => return Err(format!("{other} is not a ggml quantization")),
        }
        out.extend_from_slice(&vals);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deq(ty: StoredType, block: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        dequantize_into(ty, block, &mut out).unwrap();
        out
    }

    #[test]
    fn q8_0_block() {
        // d = 0.5 (0x3800), values -128, -1, 0, 1, ..., 127
        let mut b = vec![0x00, 0x38];
        let qs: Vec<i8> = (0..32).map(|i| (i * 8 - 128) as i8).collect();
        b.extend(qs.iter().map(|&q| q as u8));
        let v = deq(StoredType::Q8_0, &b);
        for (x, q) in v.iter().zip(&qs) {
            assert_eq!(*x, f32::from(*q) * 0.5);
        }
    }

    #[test]
    fn q4_and_q5_blocks() {
        // q4_0: d = 2, nibbles j (low) and 15 - j (high).
        let mut b = vec![0x00, 0x40];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = deq(StoredType::Q4_0, &b);
        for j in 0..16 {
            assert_eq!(v[j], (j as f32 - 8.0) * 2.0);
            assert_eq!(v[j + 16], (15.0 - j as f32 - 8.0) * 2.0);
        }
        // q4_1: d = 1, m = -0.5.
        let mut b = vec![0x00, 0x3c, 0x00, 0xb8];
        b.extend((0..16u8).map(|j| j | (j << 4)));
        let v = deq(StoredType::Q4_1, &b);
        assert_eq!(v[3], 2.5);
        assert_eq!(v[19], 2.5);
        // q5_0: d = 1, fifth bits set for value 0 and value 16 + 1, nibbles 0.
        let qh: u32 = 1 | (1 << 17);
        let mut b = vec![0x00, 0x3c];
        b.extend(qh.to_le_bytes());
        b.extend([0u8; 16]);
        let v = deq(StoredType::Q5_0, &b);
        assert_eq!(v[0], 0.0); // 16 - 16
        assert_eq!(v[1], -16.0);
        assert_eq!(v[17], 0.0);
        assert_eq!(v[16], -16.0);
        // q5_1: d = 1, m = 1, value 5 = nibble 5 + fifth bit -> 21 + 1.
        let mut b = vec![0x00, 0x3c, 0x00, 0x3c];
        b.extend((1u32 << 5).to_le_bytes());
        b.extend([0x05u8; 16]);
        let v = deq(StoredType::Q5_1, &b);
        assert_eq!(v[5], 22.0);
        assert_eq!(v[4], 6.0);
        assert_eq!(v[21], 1.0 + 0.0 * 1.0 + 0.0);
    }

    #[test]
    fn partial_blocks_are_an_error() {
        let mut out = Vec::new();
        assert!(dequantize_into(StoredType::Q8_0, &[0; 35], &mut out).is_err());
        assert!(dequantize_into(StoredType::F16, &[0; 4], &mut out).is_err());
    }
}
