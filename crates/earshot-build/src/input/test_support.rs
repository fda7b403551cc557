//! Helpers shared by the input readers' tests: files in a temporary directory, specs, and
//! checks on error messages.

use std::path::PathBuf;

use earshot_core::metric::Metric;
pub use tempfile::TempDir;

use super::{load, npy, InputSpec};

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A `.npy` file's bytes: the one writer's header, then `data` as is.
pub fn npy_bytes(descr: &str, fortran: bool, shape: &[usize], data: &[u8], major: u8) -> Vec<u8> {
    let mut out = npy::array_header(descr, fortran, shape, major);
    out.extend_from_slice(data);
    out
}

/// A float32 `.npy` holding `rows`.
pub fn npy_f32(rows: &[&[f32]]) -> Vec<u8> {
    let dim = rows.first().map(|r| r.len()).unwrap_or(0);
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    npy_bytes("<f4", false, &[rows.len(), dim], &f32_bytes(&flat), 1)
}

/// An `.fvecs` file holding `rows` (which may differ in length).
pub fn fvecs(rows: &[&[f32]]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        out.extend_from_slice(&(r.len() as i32).to_le_bytes());
        out.extend_from_slice(&f32_bytes(r));
    }
    out
}

pub fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

pub fn spec(vectors: PathBuf) -> InputSpec {
    InputSpec {
        vectors,
        ..Default::default()
    }
}

pub fn meta_spec(vectors: PathBuf, meta: PathBuf, id: &str) -> InputSpec {
    InputSpec {
        vectors,
        meta: Some(meta),
        id_column: Some(id.into()),
        ..Default::default()
    }
}

/// The message `load` fails with; panics if it succeeds.
pub fn err(spec: &InputSpec, metric: Metric) -> String {
    match load(spec, metric) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

pub fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should contain {p:?}");
    }
}

pub const THREE: [&[f32]; 3] = [&[1.0, 2.0], &[3.0, 4.0], &[-1.0, 0.5]];
