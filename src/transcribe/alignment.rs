//! Where each decoded token is in the audio, from the decoder's cross-attention (OpenAI's
//! `find_alignment` in `timing.py`).
//!
//! The sequence `<|startoftranscript|> [language task] <|notimestamps|> text <|endoftext|>` is run
//! through the decoder once, and the cross-attention of a few heads known to follow the speech
//! (the model's `alignment_heads`) is turned into a token x position cost matrix: softmax over the
//! window's audio positions, standardised per position over the tokens, median-filtered along
//! time, averaged over the heads. Dynamic time warping finds the monotonic path through it; a
//! token starts where the path first reaches it.
//!
//! Whisper's timestamp tokens are coarse and often late after a pause; these token times give
//! segment starts and ends that follow the words.
use ndarray::{s, Array2, ArrayView2, Axis};

/// Width (positions) of the median filter along time.
const MEDIAN_WIDTH: usize = 7;

/// Start position (20 ms steps from the window start) of each text token, and of `<|endoftext|>`
/// last (where the text ends): `n_text + 1` values, non-decreasing.
///
/// `scores` are the alignment heads' scores before the softmax (`rows x positions`, see
/// `Decoder::cross_attention_scores`) for a sequence of `prefix` start tokens, `<|notimestamps|>`,
/// `n_text` text tokens and `<|endoftext|>` (`rows = prefix + n_text + 2`). `positions` is how many
/// positions hold audio. `None` without usable heads or audio.
pub fn token_positions(
    scores: &[Array2<f32>],
    prefix: usize,
    n_text: usize,
    positions: usize,
) -> Option<Vec<usize>> {
    let rows = prefix + n_text + 2;
    let heads: Vec<&Array2<f32>> = scores
        .iter()
        .filter(|a| a.nrows() == rows && a.ncols() > 0)
        .collect();
    let positions = positions.min(heads.first()?.ncols());
    if positions == 0 {
        return None;
    }
    let mut matrix = Array2::<f32>::zeros((rows, positions));
    for head in &heads {
        let mut w = head.slice(s![.., ..positions]).to_owned();
        softmax_rows(&mut w);
        standardize_columns(&mut w);
        let w = median_filter_rows(w.view(), MEDIAN_WIDTH);
        matrix += &w;
    }
    matrix /= heads.len() as f32;
    // Rows of `<|notimestamps|>` (which predicts the first text token) to the last text token.
    let cost = matrix.slice(s![prefix..rows - 1, ..]).mapv(|v| -v);
    let path = dtw(cost.view());
    let mut starts = Vec::with_capacity(n_text + 1);
    let mut last_row = None;
    for (row, col) in path {
        if last_row != Some(row) {
            starts.push(col);
            last_row = Some(row);
        }
    }
    debug_assert_eq!(starts.len(), n_text + 1);
    Some(starts)
}

fn softmax_rows(w: &mut Array2<f32>) {
    for mut row in w.rows_mut() {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
}

/// Zero mean and unit variance down each column (over the tokens).
fn standardize_columns(w: &mut Array2<f32>) {
    let n = w.nrows() as f32;
    for mut col in w.columns_mut() {
        let mean = col.sum() / n;
        let var = col.fold(0.0, |acc, &v| acc + (v - mean) * (v - mean)) / n;
        let std = var.sqrt();
        let inv = if std > 0.0 { 1.0 / std } else { 1.0 };
        col.mapv_inplace(|v| (v - mean) * inv);
    }
}

/// Running median of odd `width` along each row, the edges mirrored (reflect, not repeating the
/// edge value), as `scipy`/`torch` reflect padding does.
fn median_filter_rows(w: ArrayView2<f32>, width: usize) -> Array2<f32> {
    let n = w.ncols();
    let half = (width / 2).min(n.saturating_sub(1));
    let mut out = Array2::<f32>::zeros(w.raw_dim());
    let mut buf = Vec::with_capacity(2 * half + 1);
    for (row, mut orow) in w.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
        for (j, o) in orow.iter_mut().enumerate() {
            buf.clear();
            for k in -(half as isize)..=(half as isize) {
                let mut idx = j as isize + k;
                if idx < 0 {
                    idx = -idx;
                }
                if idx >= n as isize {
                    idx = 2 * (n as isize - 1) - idx;
                }
                buf.push(row[idx as usize]);
            }
            buf.sort_by(f32::total_cmp);
            *o = buf[buf.len() / 2];
        }
    }
    out
}

/// Dynamic time warping: the cheapest monotonic path from `(0, 0)` to the last cell, moving one
/// row, one column or both at each step. Returns the path's cells in order. Ties go as OpenAI's
/// `dtw_cpu` breaks them (diagonal, then down a row, then along the row).
fn dtw(cost: ArrayView2<f32>) -> Vec<(usize, usize)> {
    let (n, m) = cost.dim();
    let mut acc = Array2::<f32>::from_elem((n + 1, m + 1), f32::INFINITY);
    let mut trace = Array2::<u8>::from_elem((n + 1, m + 1), 2);
    acc[[0, 0]] = 0.0;
    for j in 1..=m {
        for i in 1..=n {
            let c0 = acc[[i - 1, j - 1]];
            let c1 = acc[[i - 1, j]];
            let c2 = acc[[i, j - 1]];
            let (c, t) = if c0 < c1 && c0 < c2 {
                (c0, 0)
            } else if c1 < c0 && c1 < c2 {
                (c1, 1)
            } else {
                (c2, 2)
            };
            acc[[i, j]] = cost[[i - 1, j - 1]] + c;
            trace[[i, j]] = t;
        }
    }
    for j in 0..=m {
        trace[[0, j]] = 2;
    }
    for i in 0..=n {
        trace[[i, 0]] = 1;
    }
    let (mut i, mut j) = (n, m);
    let mut path = Vec::with_capacity(n + m);
    while i > 0 || j > 0 {
        path.push((i.wrapping_sub(1), j.wrapping_sub(1)));
        match trace[[i, j]] {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    // The walk ends at (0, 0) after stepping out through row or column 0: drop those cells.
    path.retain(|&(r, c)| r < n && c < m);
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn dtw_follows_the_cheap_diagonal() {
        // Cheap cells: row 0 at columns 0-1, row 1 at 2-3, row 2 at 4-5.
        let mut c = Array2::<f32>::ones((3, 6));
        for (r, cols) in [(0, 0..2), (1, 2..4), (2, 4..6)] {
            for j in cols {
                c[[r, j]] = 0.0;
            }
        }
        let path = dtw(c.view());
        assert_eq!(path.first(), Some(&(0, 0)));
        assert_eq!(path.last(), Some(&(2, 5)));
        assert_eq!(path, vec![(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5)]);
    }

    #[test]
    fn dtw_path_is_monotonic_and_complete() {
        let c = array![[0.3f32, 0.9, 0.1, 0.5], [0.2, 0.8, 0.4, 0.7]];
        let path = dtw(c.view());
        assert_eq!(path[0], (0, 0));
        assert_eq!(*path.last().unwrap(), (1, 3));
        for w in path.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert!(b.0 >= a.0 && b.1 >= a.1 && b.0 - a.0 <= 1 && b.1 - a.1 <= 1 && b != a);
        }
    }

    #[test]
    fn median_filter_reflects_at_the_edges() {
        let w = array![[5.0f32, 1.0, 9.0, 2.0, 8.0]];
        // Width 3, reflect: [1 5 1 9 2 8 2].
        let m = median_filter_rows(w.view(), 3);
        assert_eq!(m, array![[1.0f32, 5.0, 2.0, 8.0, 2.0]]);
        // A spike narrower than the filter disappears.
        let w = array![[0.0f32, 0.0, 0.0, 7.0, 0.0, 0.0, 0.0, 0.0]];
        assert!(median_filter_rows(w.view(), 7).iter().all(|&v| v == 0.0));
    }

    /// Heads that attend to positions 10 k.. for the k-th text token give starts 10 k.
    #[test]
    fn token_positions_follow_the_attention() {
        let (prefix, n_text, positions) = (1, 4, 60);
        let rows = prefix + n_text + 2;
        let mut sc = Array2::<f32>::from_elem((rows, 80), -5.0);
        for r in prefix..rows - 1 {
            let k = r - prefix; // 0 = <|notimestamps|> predicting the first text token
            for j in 10 * k + 5..10 * k + 15 {
                sc[[r, j]] = 5.0;
            }
        }
        // Beyond the audio: ignored even if attended to.
        sc.slice_mut(s![.., 60..]).fill(9.0);
        let starts = token_positions(&[sc.clone(), sc], prefix, n_text, positions).unwrap();
        assert_eq!(starts.len(), n_text + 1);
        for (k, &p) in starts.iter().enumerate() {
            let expect = 10 * k + 5;
            assert!(
                p.abs_diff(expect) <= 5,
                "token {k}: {p} (expected ~{expect})"
            );
        }
        assert!(starts.windows(2).all(|w| w[0] < w[1]));
        assert!(token_positions(&[], prefix, n_text, positions).is_none());
    }
}
