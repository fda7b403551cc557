//! The arithmetic kernels behind [`crate::distance`] and [`crate::quant`], and the one place
//! that picks them: the CPU is probed once per process (AVX-512F, else AVX2+FMA, else
//! portable code) and every caller gets the same table. `EARSHOT_NO_SIMD=1` forces the
//! portable kernels.
//!
//! The SIMD kernels are private to [`x86`]; the only way to reach them is a table that module
//! builds after detecting the features they need.

use std::sync::OnceLock;

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

/// One kernel set. Each function reads the first `min(a.len(), b.len())` elements.
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    /// `Σ a_d · b_d`.
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// `Σ (a_d − b_d)²`.
    pub l2sq: fn(&[f32], &[f32]) -> f32,
    /// `Σ a_d · b_d` with 8-bit `b` (the quantised walk).
    pub dot_f32_i8: fn(&[f32], &[i8]) -> f32,
    /// Reported by `/v1/collections` and `bench`.
    pub name: &'static str,
}

/// The kernel set for this CPU, chosen on first use.
pub(crate) fn kernels() -> &'static Kernels {
    static SELECTED: OnceLock<Kernels> = OnceLock::new();
    SELECTED.get_or_init(select)
}

fn select() -> Kernels {
    #[cfg(target_arch = "x86_64")]
    {
        if std::env::var_os("EARSHOT_NO_SIMD").is_none() {
            if let Some(k) = x86::detect() {
                return k;
            }
        }
    }
    portable::KERNELS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel set this CPU can run, not only the selected one (an AVX-512 machine
    /// also tests the AVX2 kernels).
    fn every_set() -> Vec<Kernels> {
        #[cfg(target_arch = "x86_64")]
        let mut sets = x86::every_supported();
        #[cfg(not(target_arch = "x86_64"))]
        let mut sets = Vec::new();
        sets.push(*kernels());
        sets
    }

    #[test]
    fn kernels_match_portable_for_every_length() {
        for k in every_set() {
            for n in [1usize, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100, 384, 784] {
                let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.37).collect();
                let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.21).collect();
                let c: Vec<i8> = (0..n)
                    .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
                    .collect();
                let (d0, l0) = (portable::dot(&a, &b), portable::l2sq(&a, &b));
                let tol = 1e-4 * (1.0 + d0.abs().max(l0));
                assert!(((k.dot)(&a, &b) - d0).abs() < tol, "{} dot n={n}", k.name);
                assert!(((k.l2sq)(&a, &b) - l0).abs() < tol, "{} l2 n={n}", k.name);
                let q0 = portable::dot_f32_i8(&a, &c);
                assert!(
                    ((k.dot_f32_i8)(&a, &c) - q0).abs() < 1e-3 * (1.0 + q0.abs()),
                    "{} i8 n={n}",
                    k.name
                );
            }
        }
    }

    #[test]
    fn kernels_read_only_the_shorter_length() {
        for k in every_set() {
            let a = vec![1.0f32; 40];
            let b = vec![2.0f32; 33];
            let c = vec![3i8; 17];
            assert_eq!((k.dot)(&a, &b), 66.0, "{}", k.name);
            assert_eq!((k.l2sq)(&b, &a), 33.0, "{}", k.name);
            assert_eq!((k.dot_f32_i8)(&a, &c), 51.0, "{}", k.name);
        }
    }
}
