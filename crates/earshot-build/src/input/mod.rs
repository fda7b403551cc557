//! Reading build inputs: vectors (.npy / .jsonl / .fvecs) and per-row metadata (CSV).
//!
//! [`load`] picks the vector format from the file extension, reads the optional CSV
//! metadata, and validates everything the builder relies on (finite values, non-zero
//! vectors under cosine, unique non-empty IDs, numeric popularity). Every error names the
//! file and, where it applies, the row / line / column, and says how to fix the input.
//!
//! One file per reader: [`npy`] (also the `.npy` reader and writer for the rest of the
//! tree), `fvecs`, `jsonl` (vectors and metadata together) and `csv_meta`.

mod csv_meta;
mod error;
mod fvecs;
mod jsonl;
pub mod npy;
#[cfg(test)]
mod test_support;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use earshot_core::metric::Metric;

use csv_meta::MetaReader;
use error::io_err;
pub use error::InputError;

/// Longest ID accepted, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

/// Where build inputs come from.
#[derive(Debug, Clone, Default)]
pub struct InputSpec {
    /// Vectors: `.npy` (float32, 2-D, C order), `.jsonl` / `.ndjson`, or `.fvecs`.
    pub vectors: PathBuf,
    /// CSV with a header row; data row i describes vector row i. Only with `.npy` / `.fvecs`.
    pub meta: Option<PathBuf>,
    /// Column holding the (string) IDs; required when `meta` is given.
    pub id_column: Option<String>,
    /// Optional column holding the creator (artist); empty cell = none.
    pub creator_column: Option<String>,
    /// Optional column holding a popularity number (f32); empty cell = missing.
    pub popularity_column: Option<String>,
}

/// Everything the builder needs, validated.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dim: usize,
    /// Row-major, `len() * dim` values.
    pub vectors: Vec<f32>,
    pub ids: Vec<String>,
    /// `Some` if a creator column / field exists; `None` cell = empty.
    pub creators: Option<Vec<Option<String>>>,
    /// `Some` if a popularity column / field exists; `None` cell = missing.
    pub popularity: Option<Vec<Option<f32>>>,
}

impl Dataset {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The vector of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }
}

fn open(path: &Path) -> Result<File, InputError> {
    File::open(path).map_err(|e| io_err(path, e))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Npy,
    Jsonl,
    Fvecs,
}

fn format_of(path: &Path) -> Result<Format, InputError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("npy") => Ok(Format::Npy),
        Some("jsonl") | Some("ndjson") => Ok(Format::Jsonl),
        Some("fvecs") => Ok(Format::Fvecs),
        _ => Err(InputError::UnsupportedFormat {
            path: path.to_path_buf(),
        }),
    }
}

/// Vectors as read from the vectors file, before metadata and validation.
struct RawVectors {
    n: usize,
    dim: usize,
    vectors: Vec<f32>,
}

/// Per-row metadata and the file lines rows came from (for messages).
struct RowMeta {
    /// File IDs (and popularity) came from; `None` = IDs are generated row numbers.
    source: Option<PathBuf>,
    ids: Vec<String>,
    creators: Option<Vec<Option<String>>>,
    popularity: Option<Vec<Option<f32>>>,
    /// 1-based file line of each row, when rows come from a text file.
    lines: Option<Vec<u64>>,
}

impl RowMeta {
    fn line(&self, row: usize) -> Option<u64> {
        self.lines.as_ref().map(|l| l[row])
    }
}

/// Load and validate the build inputs described by `spec`.
pub fn load(spec: &InputSpec, metric: Metric) -> Result<Dataset, InputError> {
    let format = format_of(&spec.vectors)?;
    let any_column = spec.id_column.is_some()
        || spec.creator_column.is_some()
        || spec.popularity_column.is_some();

    if format == Format::Jsonl {
        if spec.meta.is_some() || any_column {
            return Err(InputError::Options(format!(
                "{}: metadata comes from the JSONL fields (\"id\", \"creator\", \"popularity\"); \
                 do not pass --meta / --id-column / --creator-column / --popularity-column with \
                 a JSONL vectors file",
                spec.vectors.display()
            )));
        }
        let (raw, meta) = jsonl::read(&spec.vectors)?;
        check_shape(&spec.vectors, &raw)?;
        return finish(spec, metric, raw, meta);
    }

    let meta_reader = match &spec.meta {
        None => {
            if any_column {
                let mut given = Vec::new();
                if spec.id_column.is_some() {
                    given.push("--id-column");
                }
                if spec.creator_column.is_some() {
                    given.push("--creator-column");
                }
                if spec.popularity_column.is_some() {
                    given.push("--popularity-column");
                }
                return Err(InputError::Options(format!(
                    "{} given without --meta; pass --meta <file.csv> with the metadata, or drop \
                     the column options (IDs are then the row numbers)",
                    given.join(" / ")
                )));
            }
            None
        }
        Some(meta_path) => Some(MetaReader::open(meta_path, spec)?),
    };

    let raw = match format {
        Format::Npy => npy::read_vectors(&spec.vectors)?,
        Format::Fvecs => fvecs::read(&spec.vectors)?,
        Format::Jsonl => unreachable!(),
    };
    check_shape(&spec.vectors, &raw)?;

    let (meta, meta_path) = match meta_reader {
        None => (
            RowMeta {
                source: None,
                ids: (0..raw.n).map(|i| i.to_string()).collect(),
                creators: None,
                popularity: None,
                lines: None,
            },
            None,
        ),
        Some(reader) => {
            let path = reader.path().to_path_buf();
            (reader.read_rows(raw.n)?, Some(path))
        }
    };
    if meta.ids.len() != raw.n {
        return Err(InputError::RowCountMismatch {
            meta: meta_path.unwrap_or_default(),
            meta_rows: meta.ids.len(),
            vectors: spec.vectors.clone(),
            vector_rows: raw.n,
        });
    }
    finish(spec, metric, raw, meta)
}

fn check_shape(path: &Path, raw: &RawVectors) -> Result<(), InputError> {
    if raw.n == 0 {
        return Err(InputError::NoRows {
            path: path.to_path_buf(),
        });
    }
    if raw.dim == 0 {
        return Err(InputError::ZeroDim {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn finish(
    spec: &InputSpec,
    metric: Metric,
    raw: RawVectors,
    meta: RowMeta,
) -> Result<Dataset, InputError> {
    debug_assert_eq!(raw.vectors.len(), raw.n * raw.dim);
    debug_assert_eq!(meta.ids.len(), raw.n);
    // Rows of a JSONL file carry their line numbers; for .npy/.fvecs the row is enough.
    let vector_lines = if meta.source.as_deref() == Some(spec.vectors.as_path()) {
        meta.lines.as_deref()
    } else {
        None
    };
    validate_vectors(&spec.vectors, &raw, metric, vector_lines)?;
    validate_ids(&spec.vectors, &meta)?;
    Ok(Dataset {
        dim: raw.dim,
        vectors: raw.vectors,
        ids: meta.ids,
        creators: meta.creators,
        popularity: meta.popularity,
    })
}

fn validate_vectors(
    path: &Path,
    raw: &RawVectors,
    metric: Metric,
    lines: Option<&[u64]>,
) -> Result<(), InputError> {
    let cosine = metric == Metric::Cosine;
    for (row, v) in raw.vectors.chunks_exact(raw.dim).enumerate() {
        // Fast whole-row checks (vectorisable); locate the culprit only on failure.
        if !v.iter().fold(true, |ok, x| ok & x.is_finite()) {
            let column = v.iter().position(|x| !x.is_finite()).unwrap_or(0);
            return Err(InputError::NonFinite {
                path: path.to_path_buf(),
                row,
                line: lines.map(|l| l[row]),
                column,
                value: v[column],
            });
        }
        // For finite f32 the (f64) norm is zero exactly when every component is zero.
        if cosine && v.iter().fold(true, |z, &x| z & (x == 0.0)) {
            return Err(InputError::ZeroNorm {
                path: path.to_path_buf(),
                row,
                line: lines.map(|l| l[row]),
            });
        }
    }
    Ok(())
}

fn validate_ids(vectors_path: &Path, meta: &RowMeta) -> Result<(), InputError> {
    let path = meta
        .source
        .clone()
        .unwrap_or_else(|| vectors_path.to_path_buf());
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(meta.ids.len());
    for (row, id) in meta.ids.iter().enumerate() {
        if id.is_empty() {
            return Err(InputError::EmptyId {
                path,
                row,
                line: meta.line(row),
            });
        }
        if id.len() > MAX_ID_BYTES {
            return Err(InputError::IdTooLong {
                path,
                row,
                line: meta.line(row),
                len: id.len(),
            });
        }
        if let Some(&first) = seen.get(id.as_str()) {
            return Err(InputError::DuplicateId {
                path,
                id: id.clone(),
                first_row: first,
                first_line: meta.line(first),
                second_row: row,
                second_line: meta.line(row),
            });
        }
        seen.insert(id.as_str(), row);
    }
    Ok(())
}

/// Convert little-endian stored floats to native order (no-op on little-endian targets).
fn le_to_native(v: &mut [f32]) {
    if cfg!(target_endian = "big") {
        for x in v.iter_mut() {
            *x = f32::from_bits(u32::from_le(x.to_bits()));
        }
    }
}

/// Read exactly `buf.len()` bytes; returns how many were read before EOF.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn npy_without_meta() {
        let d = TempDir::new().unwrap();
        let p = write(&d, "v.npy", &npy_f32(&THREE));
        let ds = load(&spec(p), Metric::Cosine).unwrap();
        assert_eq!(ds.dim, 2);
        assert_eq!(ds.len(), 3);
        assert!(!ds.is_empty());
        assert_eq!(ds.row(1), &[3.0, 4.0]);
        assert_eq!(ds.ids, vec!["0", "1", "2"]);
        assert!(ds.creators.is_none() && ds.popularity.is_none());
    }

    #[test]
    fn missing_file_and_bad_extension() {
        let d = TempDir::new().unwrap();
        let p = d.path().join("nope.npy");
        has(&err(&spec(p), Metric::L2), &["nope.npy", "cannot read"]);
        let p = write(&d, "v.txt", b"1 2 3");
        has(
            &err(&spec(p), Metric::L2),
            &["v.txt", ".npy", ".jsonl", ".ndjson", ".fvecs"],
        );
    }

    #[test]
    fn non_finite_and_zero_norm() {
        let d = TempDir::new().unwrap();
        let rows: [&[f32]; 3] = [&[1.0, 2.0, 3.0], &[1.0, 1.0, 1.0], &[1.0, f32::NAN, 0.0]];
        let p = write(&d, "nan.npy", &npy_f32(&rows));
        has(
            &err(&spec(p), Metric::L2),
            &["nan.npy", "row 2", "column 1", "NaN"],
        );

        let rows: [&[f32]; 2] = [&[f32::INFINITY, 1.0], &[1.0, 1.0]];
        let p = write(&d, "inf.fvecs", &fvecs(&rows));
        has(&err(&spec(p), Metric::Dot), &["row 0", "column 0", "inf"]);

        let rows: [&[f32]; 3] = [&[1.0, 2.0], &[0.0, -0.0], &[1.0, 1.0]];
        let p = write(&d, "zero.npy", &npy_f32(&rows));
        has(
            &err(&spec(p.clone()), Metric::Cosine),
            &["zero.npy", "row 1", "cosine needs non-zero"],
        );
        assert_eq!(load(&spec(p), Metric::L2).unwrap().len(), 3);
    }
}
