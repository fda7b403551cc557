//! Several taste centroids: deterministic weighted k-means over the positive history.
//!
//! Seeding is k-means++ without randomness: the heaviest item first, then repeatedly the item
//! with the largest `weight × squared distance` to its nearest chosen centre (ties → earlier
//! item). Then at most 20 Lloyd iterations with weighted means. Same input, same centroids.

use earshot_core::distance;

pub struct Cluster {
    pub centre: Vec<f32>,
    /// Sum of the member items' weights.
    pub weight: f32,
}

/// Clusters `points` (vector, weight > 0) into `k` clusters; `k` is capped at the number of
/// points, and no points or `k = 0` give no clusters.
pub fn kmeans(points: &[(&[f32], f32)], k: usize, dim: usize) -> Vec<Cluster> {
    let k = k.min(points.len());
    if k == 0 {
        return Vec::new();
    }
    // The heaviest point, then the one with the largest weight × squared distance to its
    // nearest centre; `first_max` keeps the earlier point on ties.
    let heaviest = first_max(points.len(), |i| points[i].1);
    let mut centres: Vec<Vec<f32>> = Vec::with_capacity(k);
    centres.push(points[heaviest].0.to_vec());
    let mut nearest: Vec<f32> = points
        .iter()
        .map(|(v, _)| distance::l2sq(v, &centres[0]))
        .collect();
    while centres.len() < k {
        let next = points[first_max(points.len(), |i| points[i].1 * nearest[i])].0;
        for (i, (v, _)) in points.iter().enumerate() {
            nearest[i] = nearest[i].min(distance::l2sq(v, next));
        }
        centres.push(next.to_vec());
    }
    let mut assign = vec![0usize; points.len()];
    for _ in 0..20 {
        let mut changed = false;
        for (i, (v, _)) in points.iter().enumerate() {
            // The nearest centre, the earlier one on ties.
            let best = first_max(k, |j| -distance::l2sq(v, &centres[j]));
            changed |= best != assign[i];
            assign[i] = best;
        }
        for (j, centre) in centres.iter_mut().enumerate() {
            let members = points.iter().zip(&assign).filter(|(_, &a)| a == j);
            if let Some(mean) =
                super::history::weighted_mean(members.map(|((v, w), _)| (*v, *w)), dim)
            {
                *centre = mean;
            }
        }
        if !changed {
            break;
        }
    }
    (0..k)
        .map(|j| Cluster {
            centre: centres[j].clone(),
            weight: points
                .iter()
                .zip(&assign)
                .filter(|(_, &a)| a == j)
                .map(|((_, w), _)| *w)
                .sum(),
        })
        .filter(|c| c.weight > 0.0)
        .collect()
}

/// The index in `0..n` with the largest `key` (the earliest on ties; 0 when `n` is 0).
fn first_max(n: usize, key: impl Fn(usize) -> f32) -> usize {
    if n == 0 {
        return 0;
    }
    let (mut best, mut best_key) = (0, key(0));
    for i in 1..n {
        let k = key(i);
        if k.total_cmp(&best_key).is_gt() {
            (best, best_key) = (i, k);
        }
    }
    best
}

/// Splits `k` slots in proportion to `weights` (largest remainder; ties → earlier).
pub fn share_slots(k: usize, weights: &[f32]) -> Vec<usize> {
    let total: f32 = weights.iter().sum();
    let exact: Vec<f32> = weights.iter().map(|w| k as f32 * w / total).collect();
    let mut slots: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        (exact[b] - exact[b].floor())
            .total_cmp(&(exact[a] - exact[a].floor()))
            .then(a.cmp(&b))
    });
    let mut left = k - slots.iter().sum::<usize>();
    for &j in order.iter().cycle() {
        if left == 0 {
            break;
        }
        slots[j] += 1;
        left -= 1;
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_two_tastes_deterministically() {
        let metal = [1.0f32, 0.0, 0.0];
        let metal2 = [0.9f32, 0.1, 0.0];
        let lullaby = [0.0f32, 0.0, 1.0];
        let pts: Vec<(&[f32], f32)> = vec![(&metal, 1.0), (&lullaby, 1.0), (&metal2, 2.0)];
        let a = kmeans(&pts, 2, 3);
        let b = kmeans(&pts, 2, 3);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].centre, b[0].centre);
        assert!(
            (a[0].weight - 3.0).abs() < 1e-6,
            "metal cluster first (heaviest)"
        );
        assert!(a[1].centre[2] > 0.99);
    }

    #[test]
    fn k_is_capped_at_the_points() {
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 1.0];
        let pts: Vec<(&[f32], f32)> = vec![(&a, 1.0), (&b, 1.0)];
        assert_eq!(kmeans(&pts, 5, 2).len(), 2);
        assert!(kmeans(&pts, 0, 2).is_empty());
        assert!(kmeans(&[], 3, 2).is_empty());
        // Equal weights: the earlier point seeds the first cluster.
        assert_eq!(kmeans(&pts, 1, 2)[0].weight, 2.0);
        assert_eq!(kmeans(&pts, 2, 2)[0].centre, a);
    }

    #[test]
    fn slots_sum_to_k() {
        assert_eq!(share_slots(10, &[3.0, 1.0]), vec![8, 2]);
        assert_eq!(share_slots(10, &[1.0, 1.0, 1.0]), vec![4, 3, 3]);
        assert_eq!(share_slots(1, &[1.0, 1.0]).iter().sum::<usize>(), 1);
    }
}
