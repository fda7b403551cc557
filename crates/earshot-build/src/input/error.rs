//! [`InputError`]: why the build inputs could not be loaded.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use super::MAX_ID_BYTES;

/// Why the inputs could not be loaded. Messages name the file (and row / line / column)
/// and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{}: unsupported vectors file type; supported formats are .npy (float32, 2-D), \
         .jsonl / .ndjson (one {{\"id\", \"vector\"}} object per line) and .fvecs",
        path.display()
    )]
    UnsupportedFormat { path: PathBuf },

    /// An invalid combination of options (e.g. `--id-column` without `--meta`).
    #[error("{0}")]
    Options(String),

    #[error("{}: not a NumPy .npy file: {reason}; save the array with numpy.save()", path.display())]
    NotNpy { path: PathBuf, reason: String },

    #[error(
        "{}: array dtype is {found}, but only little-endian float32 ('<f4') is supported; \
         convert with arr.astype('float32') and save again",
        path.display()
    )]
    NpyDtype { path: PathBuf, found: String },

    #[error(
        "{}: array is stored in Fortran (column-major) order; save a C-ordered copy with \
         numpy.save(path, numpy.ascontiguousarray(arr))",
        path.display()
    )]
    NpyFortranOrder { path: PathBuf },

    #[error(
        "{}: array has shape {shape}, but a 2-D array of shape (rows, dim) is required; \
         reshape it before saving",
        path.display()
    )]
    NpyShape { path: PathBuf, shape: String },

    #[error(
        "{}: file is truncated: shape {shape} needs {expected} bytes of float32 data after \
         the header, but only {actual} bytes are present; re-create the file",
        path.display()
    )]
    NpyTruncated {
        path: PathBuf,
        shape: String,
        expected: u64,
        actual: u64,
    },

    #[error("{}: record {record} (row {record}): {message}", path.display())]
    Fvecs {
        path: PathBuf,
        record: usize,
        message: String,
    },

    #[error("{}: line {line}: {message}", path.display())]
    Jsonl {
        path: PathBuf,
        line: u64,
        message: String,
    },

    #[error("{}{}: {message}", path.display(), fmt_opt_line(line))]
    Csv {
        path: PathBuf,
        line: Option<u64>,
        message: String,
    },

    #[error(
        "{}: no column named \"{column}\" (given as {option}); available columns: {}",
        path.display(),
        fmt_columns(available)
    )]
    UnknownColumn {
        path: PathBuf,
        column: String,
        option: &'static str,
        available: Vec<String>,
    },

    #[error(
        "row counts differ: {} has {meta_rows} data rows but {} has {vector_rows} vectors; \
         metadata row i must describe vector row i",
        meta.display(),
        vectors.display()
    )]
    RowCountMismatch {
        meta: PathBuf,
        meta_rows: usize,
        vectors: PathBuf,
        vector_rows: usize,
    },

    #[error("{}: contains no vectors; at least one row is needed", path.display())]
    NoRows { path: PathBuf },

    #[error("{}: vectors have dimension 0; at least one component is needed", path.display())]
    ZeroDim { path: PathBuf },

    #[error(
        "{}: {}, column {column}: value is {value}; all vector components must be finite \
         numbers",
        path.display(),
        fmt_row(*row, line)
    )]
    NonFinite {
        path: PathBuf,
        row: usize,
        line: Option<u64>,
        column: usize,
        value: f32,
    },

    #[error(
        "{}: {} is an all-zero vector; cosine needs non-zero vectors: remove the row or \
         use the l2 or dot metric",
        path.display(),
        fmt_row(*row, line)
    )]
    ZeroNorm {
        path: PathBuf,
        row: usize,
        line: Option<u64>,
    },

    #[error("{}: {}: ID is empty; every row needs a non-empty ID", path.display(), fmt_row(*row, line))]
    EmptyId {
        path: PathBuf,
        row: usize,
        line: Option<u64>,
    },

    #[error(
        "{}: {}: ID is {len} bytes long; the maximum is {MAX_ID_BYTES} bytes",
        path.display(),
        fmt_row(*row, line)
    )]
    IdTooLong {
        path: PathBuf,
        row: usize,
        line: Option<u64>,
        len: usize,
    },

    #[error(
        "{}: duplicate ID \"{id}\" at {} and again at {}; IDs must be unique",
        path.display(),
        fmt_row(*first_row, first_line),
        fmt_row(*second_row, second_line)
    )]
    DuplicateId {
        path: PathBuf,
        id: String,
        first_row: usize,
        first_line: Option<u64>,
        second_row: usize,
        second_line: Option<u64>,
    },

    #[error(
        "{}: {}, column \"{column}\": popularity {value} is not a finite number; use a \
         number, or leave it empty for missing",
        path.display(),
        fmt_row(*row, line)
    )]
    BadPopularity {
        path: PathBuf,
        row: usize,
        line: Option<u64>,
        column: String,
        value: String,
    },
}

fn fmt_row(row: usize, line: &Option<u64>) -> String {
    match line {
        Some(l) => format!("row {row} (line {l})"),
        None => format!("row {row}"),
    }
}

fn fmt_opt_line(line: &Option<u64>) -> String {
    match line {
        Some(l) => format!(": line {l}"),
        None => String::new(),
    }
}

pub(super) fn fmt_columns(cols: &[String]) -> String {
    if cols.is_empty() {
        return "(none)".to_string();
    }
    let mut s = String::new();
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "\"{c}\"");
    }
    s
}

pub(super) fn io_err(path: &Path, source: io::Error) -> InputError {
    InputError::Io {
        path: path.to_path_buf(),
        source,
    }
}
