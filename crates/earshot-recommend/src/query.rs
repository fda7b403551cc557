//! A client's query vector, checked and brought into a collection's space.

use earshot_core::collection::Collection;
use earshot_core::distance;
use earshot_core::metric::Metric;

/// Largest query-vector norm accepted under l2 and dot: the query's magnitude enters the
/// scores there, and past this they would overflow f32 (scores must stay finite numbers).
pub const MAX_QUERY_NORM: f64 = 1e15;

/// Why a vector cannot query a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorError {
    /// It has `got` dimensions; the collection has `want`.
    Dimension { got: usize, want: usize },
    /// The component at `index` is NaN or infinite.
    NotFinite { index: usize },
    /// Its norm is above [`MAX_QUERY_NORM`] under l2 or dot.
    TooLong,
    /// All zeros under cosine (no direction) or dot (every item would score 0).
    Zero,
}

/// The vector as a query of `c`: checked, and normalized under cosine.
pub fn prepare(c: &Collection, vector: &[f32]) -> Result<Vec<f32>, VectorError> {
    prepare_in(c.manifest.metric, c.dim(), vector)
}

/// [`prepare`] for a space known by its metric and dimension (a router's sharded collection).
pub fn prepare_in(metric: Metric, dim: usize, vector: &[f32]) -> Result<Vec<f32>, VectorError> {
    let mut q = Vec::with_capacity(vector.len());
    prepare_into(metric, dim, vector, &mut q)?;
    Ok(q)
}

/// [`prepare_in`] into a reused buffer `q` (overwritten).
pub fn prepare_into(
    metric: Metric,
    dim: usize,
    vector: &[f32],
    q: &mut Vec<f32>,
) -> Result<(), VectorError> {
    if vector.len() != dim {
        return Err(VectorError::Dimension {
            got: vector.len(),
            want: dim,
        });
    }
    if let Some(index) = vector.iter().position(|x| !x.is_finite()) {
        return Err(VectorError::NotFinite { index });
    }
    if metric != Metric::Cosine && distance::norm_f64(vector) > MAX_QUERY_NORM {
        return Err(VectorError::TooLong);
    }
    q.clear();
    q.extend_from_slice(vector);
    match metric {
        Metric::Cosine if !distance::normalize(q) => Err(VectorError::Zero),
        Metric::Dot if q.iter().all(|&x| x == 0.0) => Err(VectorError::Zero),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{at, collection};

    #[test]
    fn vectors_are_checked_and_brought_into_the_space() {
        let (_d1, cosine) = collection(Metric::Cosine, vec![at(1.0, "a", 1.0)]);
        let (_d2, l2) = collection(Metric::L2, vec![at(1.0, "a", 1.0)]);
        let (_d3, dot) = collection(Metric::Dot, vec![at(1.0, "a", 1.0)]);
        for c in [&cosine, &l2, &dot] {
            assert_eq!(
                prepare(c, &[1.0]),
                Err(VectorError::Dimension { got: 1, want: 2 })
            );
            assert_eq!(
                prepare(c, &[0.0, f32::NAN]),
                Err(VectorError::NotFinite { index: 1 })
            );
        }
        assert_eq!(prepare(&cosine, &[3.0, 4.0]), Ok(vec![0.6, 0.8]));
        assert_eq!(prepare(&l2, &[3.0, 4.0]), Ok(vec![3.0, 4.0]));
        // Huge vectors only matter where magnitude enters the score.
        assert_eq!(prepare(&cosine, &[1e30, 0.0]), Ok(vec![1.0, 0.0]));
        assert_eq!(prepare(&l2, &[1e30, 0.0]), Err(VectorError::TooLong));
        assert_eq!(prepare(&dot, &[1e30, 0.0]), Err(VectorError::TooLong));
        // A zero vector has a distance to everything under l2 only.
        assert_eq!(prepare(&cosine, &[0.0, 0.0]), Err(VectorError::Zero));
        assert_eq!(prepare(&dot, &[0.0, 0.0]), Err(VectorError::Zero));
        assert_eq!(prepare(&l2, &[0.0, 0.0]), Ok(vec![0.0, 0.0]));
    }
}
