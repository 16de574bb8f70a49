//! From a model's output tensor to one vector per text. Pure functions over slices.

use ndarray::{ArrayView2, ArrayView3, Axis};

/// Mean of each text's token vectors over its attention mask (padding excluded).
///
/// `hidden` is `[batch, tokens, dim]`, `mask` is `[batch, tokens]` row-major; returns
/// `[batch, dim]` row-major.
pub fn mean_pool(hidden: ArrayView3<'_, f32>, mask: ArrayView2<'_, i64>) -> Vec<f32> {
    let (batch, _, dim) = hidden.dim();
    let mut out = vec![0f32; batch * dim];
    for ((text, text_mask), pooled) in hidden
        .axis_iter(Axis(0))
        .zip(mask.axis_iter(Axis(0)))
        .zip(out.chunks_exact_mut(dim))
    {
        let mut counted = 0f32;
        for (token, &m) in text.axis_iter(Axis(0)).zip(text_mask.iter()) {
            if m != 0 {
                counted += 1.0;
                for (acc, &v) in pooled.iter_mut().zip(token.iter()) {
                    *acc += v;
                }
            }
        }
        // Same floor as sentence-transformers, so an all-padding row yields zeros, not NaN.
        let denom = counted.max(1e-9);
        pooled.iter_mut().for_each(|v| *v /= denom);
    }
    out
}

/// The first token's vector of each text.
pub fn cls_pool(hidden: ArrayView3<'_, f32>) -> Vec<f32> {
    hidden.index_axis(Axis(1), 0).iter().copied().collect()
}

/// Scales each `dim`-sized row to unit length (rows of zeros stay zero).
pub fn l2_normalize_rows(rows: &mut [f32], dim: usize) {
    for row in rows.chunks_exact_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// Cosine similarity of two vectors of equal length.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3};

    #[test]
    fn mean_pool_ignores_padding() {
        // Two texts of 3 token slots, dim 2; the second text has one padded slot.
        let hidden = Array3::from_shape_vec(
            (2, 3, 2),
            vec![1., 2., 3., 4., 5., 6., 10., 20., 30., 40., 999., 999.],
        )
        .unwrap();
        let mask = Array2::from_shape_vec((2, 3), vec![1, 1, 1, 1, 1, 0]).unwrap();
        assert_eq!(mean_pool(hidden.view(), mask.view()), vec![3., 4., 20., 30.]);
    }

    #[test]
    fn cls_pool_takes_first_token() {
        let hidden = Array3::from_shape_vec((2, 2, 2), vec![1., 2., 3., 4., 5., 6., 7., 8.]).unwrap();
        assert_eq!(cls_pool(hidden.view()), vec![1., 2., 5., 6.]);
    }

    #[test]
    fn normalize_gives_unit_rows_and_keeps_zero_rows() {
        let mut rows = vec![3., 4., 0., 0.];
        l2_normalize_rows(&mut rows, 2);
        assert_eq!(rows, vec![0.6, 0.8, 0., 0.]);
        assert!((cosine(&[1., 0.], &[1., 1.]) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }
}
