//! The decoder's token embeddings, read one row per token. The same matrix, prepared on the
//! engine, is the vocabulary projection; this copy only serves lookups, so it is kept as the
//! model's half floats when every value is one exactly (fp16 models: 53 MB instead of 106 MB on
//! base), else as f32. A half float widens to f32 exactly: the rows are the same either way.
use ndarray::{Array2, ArrayView1, ArrayViewMut1, Zip};

pub(super) enum TokenEmbeddings {
    /// `n_vocab x d` half floats (bits), row-major.
    Half {
        bits: Vec<u16>,
        d: usize,
    },
    Full(Array2<f32>),
}

impl TokenEmbeddings {
    pub fn new(table: Array2<f32>) -> TokenEmbeddings {
        // One pass: convert, and keep f32 if any value does not come back the same.
        let mut bits = Vec::with_capacity(table.len());
        for &v in table.iter() {
            let h = half::f16::from_f32(v);
            if h.to_f32().to_bits() != v.to_bits() {
                return TokenEmbeddings::Full(table);
            }
            bits.push(h.to_bits());
        }
        TokenEmbeddings::Half {
            bits,
            d: table.ncols(),
        }
    }

    /// `out = embedding[token] + pos`.
    pub fn add_row(&self, token: usize, pos: ArrayView1<f32>, mut out: ArrayViewMut1<f32>) {
        match self {
            TokenEmbeddings::Half { bits, d } => {
                let row = &bits[token * d..(token + 1) * d];
                Zip::from(&mut out)
                    .and(row)
                    .and(pos)
                    .for_each(|x, &e, &q| *x = half::f16::from_bits(e).to_f32() + q);
            }
            TokenEmbeddings::Full(table) => {
                Zip::from(&mut out)
                    .and(table.row(token))
                    .and(pos)
                    .for_each(|x, &e, &q| *x = e + q);
            }
        }
    }

    /// Whether the rows are kept as half floats.
    #[cfg(test)]
    pub fn is_half(&self) -> bool {
        matches!(self, TokenEmbeddings::Half { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array1};

    #[test]
    fn half_float_rows_are_the_f32_rows() {
        let table = array![
            [0.5f32, -1.25, 1.0 / 32768.0],
            [65504.0, -0.0, 1.0 / 1024.0]
        ];
        let pos = array![0.1f32, 0.2, 0.3];
        let half = TokenEmbeddings::new(table.clone());
        assert!(half.is_half(), "every value is a half float");
        let full = TokenEmbeddings::Full(table);
        for token in 0..2 {
            let (mut a, mut b) = (Array1::zeros(3), Array1::zeros(3));
            half.add_row(token, pos.view(), a.view_mut());
            full.add_row(token, pos.view(), b.view_mut());
            let bits = |v: &Array1<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "token {token}");
        }
        let not_half = TokenEmbeddings::new(array![[0.1f32]]);
        assert!(!not_half.is_half(), "0.1 is no half float");
    }
}
