//! Reading build inputs: vectors (.npy / .jsonl / .fvecs) and per-row metadata (CSV).
//!
//! [`load`] picks the vector format from the file extension, reads the optional CSV
//! metadata, and validates everything the builder relies on (finite values, non-zero
//! vectors under cosine, unique non-empty IDs, numeric popularity). Every error names the
//! file and, where it applies, the row / line / column, and says how to fix the input.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use earshot_core::metric::Metric;

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

fn fmt_columns(cols: &[String]) -> String {
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

fn io_err(path: &Path, source: io::Error) -> InputError {
    InputError::Io {
        path: path.to_path_buf(),
        source,
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
        let (raw, meta) = read_jsonl(&spec.vectors)?;
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
        Format::Npy => read_npy(&spec.vectors)?,
        Format::Fvecs => read_fvecs(&spec.vectors)?,
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
            let path = reader.path.clone();
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

// ---------------------------------------------------------------------------------------
// .npy

/// A Python literal as found in a .npy header.
#[derive(Debug, Clone, PartialEq)]
enum PyLit {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<PyLit>),
    List(Vec<PyLit>),
    Dict(Vec<(PyLit, PyLit)>),
}

impl PyLit {
    fn repr(&self) -> String {
        match self {
            PyLit::Str(s) => format!("'{s}'"),
            PyLit::Int(i) => i.to_string(),
            PyLit::Bool(true) => "True".into(),
            PyLit::Bool(false) => "False".into(),
            PyLit::None => "None".into(),
            PyLit::Tuple(items) => {
                let inner: Vec<String> = items.iter().map(PyLit::repr).collect();
                if items.len() == 1 {
                    format!("({},)", inner[0])
                } else {
                    format!("({})", inner.join(", "))
                }
            }
            PyLit::List(items) => {
                let inner: Vec<String> = items.iter().map(PyLit::repr).collect();
                format!("[{}]", inner.join(", "))
            }
            PyLit::Dict(items) => {
                let inner: Vec<String> = items
                    .iter()
                    .map(|(k, v)| format!("{}: {}", k.repr(), v.repr()))
                    .collect();
                format!("{{{}}}", inner.join(", "))
            }
        }
    }
}

struct PyParser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl PyParser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!(
                "expected '{}' at offset {} of the header",
                c as char, self.pos
            ))
        }
    }

    /// Items up to `close`, with optional trailing comma. Returns (items, had_comma).
    fn seq(&mut self, close: u8) -> Result<(Vec<PyLit>, bool), String> {
        let mut items = Vec::new();
        let mut comma = false;
        loop {
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok((items, comma));
            }
            items.push(self.value()?);
            comma = false;
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    comma = true;
                }
                Some(c) if c == close => {}
                _ => {
                    return Err(format!(
                        "malformed sequence at offset {} of the header",
                        self.pos
                    ))
                }
            }
        }
    }

    fn value(&mut self) -> Result<PyLit, String> {
        match self.peek() {
            None => Err("header ends unexpectedly".into()),
            Some(q @ (b'\'' | b'"')) => {
                self.pos += 1;
                let mut out = Vec::new();
                loop {
                    match self.s.get(self.pos) {
                        None => return Err("unterminated string in header".into()),
                        Some(&c) if c == q => {
                            self.pos += 1;
                            break;
                        }
                        Some(b'\\') => {
                            if let Some(&c) = self.s.get(self.pos + 1) {
                                out.push(c);
                            }
                            self.pos += 2;
                        }
                        Some(&c) => {
                            out.push(c);
                            self.pos += 1;
                        }
                    }
                }
                Ok(PyLit::Str(String::from_utf8_lossy(&out).into_owned()))
            }
            Some(b'(') => {
                self.pos += 1;
                let (items, comma) = self.seq(b')')?;
                if items.len() == 1 && !comma {
                    // A parenthesised expression, not a tuple.
                    Ok(items.into_iter().next().unwrap())
                } else {
                    Ok(PyLit::Tuple(items))
                }
            }
            Some(b'[') => {
                self.pos += 1;
                Ok(PyLit::List(self.seq(b']')?.0))
            }
            Some(b'{') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        return Ok(PyLit::Dict(items));
                    }
                    let k = self.value()?;
                    self.expect(b':')?;
                    let v = self.value()?;
                    items.push((k, v));
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {}
                        _ => {
                            return Err(format!(
                                "malformed dict at offset {} of the header",
                                self.pos
                            ))
                        }
                    }
                }
            }
            Some(c) if c == b'-' || c == b'+' || c.is_ascii_digit() => {
                let start = self.pos;
                self.pos += 1;
                while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
                let n: i128 = text
                    .parse()
                    .map_err(|_| format!("bad integer '{text}' in header"))?;
                // Python 2 long suffix.
                if matches!(self.s.get(self.pos), Some(b'L' | b'l')) {
                    self.pos += 1;
                }
                Ok(PyLit::Int(n))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.pos < self.s.len()
                    && (self.s[self.pos].is_ascii_alphanumeric() || self.s[self.pos] == b'_')
                {
                    self.pos += 1;
                }
                match &self.s[start..self.pos] {
                    b"True" => Ok(PyLit::Bool(true)),
                    b"False" => Ok(PyLit::Bool(false)),
                    b"None" => Ok(PyLit::None),
                    other => Err(format!(
                        "unexpected word '{}' in header",
                        String::from_utf8_lossy(other)
                    )),
                }
            }
            Some(c) => Err(format!(
                "unexpected character '{}' at offset {} of the header",
                c as char, self.pos
            )),
        }
    }
}

fn parse_py_dict(header: &[u8]) -> Result<Vec<(PyLit, PyLit)>, String> {
    let mut p = PyParser { s: header, pos: 0 };
    let v = p.value()?;
    if p.peek().is_some() {
        return Err(format!(
            "unexpected text after the header dict at offset {}",
            p.pos
        ));
    }
    match v {
        PyLit::Dict(items) => Ok(items),
        other => Err(format!("header is {} instead of a dict", other.repr())),
    }
}

/// Human name for a numpy descr, for error messages.
fn describe_descr(descr: &PyLit) -> String {
    let PyLit::Str(s) = descr else {
        return format!("a structured dtype {}", descr.repr());
    };
    let (order, code) = match s.as_bytes().first() {
        Some(b'<' | b'>' | b'|' | b'=') => (&s[..1], &s[1..]),
        _ => ("", s.as_str()),
    };
    let name = match code {
        "f2" => "float16",
        "f4" => "float32",
        "f8" => "float64",
        "f16" => "float128",
        "i1" => "int8",
        "i2" => "int16",
        "i4" => "int32",
        "i8" => "int64",
        "u1" => "uint8",
        "u2" => "uint16",
        "u4" => "uint32",
        "u8" => "uint64",
        "b1" => "bool",
        c if c.starts_with('O') => "object",
        c if c.starts_with('U') || c.starts_with('S') => "string",
        c if c.starts_with('c') => "complex",
        _ => "",
    };
    let endian = if order == ">" { "big-endian " } else { "" };
    if name.is_empty() {
        format!("'{s}'")
    } else {
        format!("{endian}{name} ('{s}')")
    }
}

fn read_npy(path: &Path) -> Result<RawVectors, InputError> {
    let not_npy = |reason: &str| InputError::NotNpy {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let mut file = open(path)?;
    let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();

    let mut pre = [0u8; 12];
    let got = read_full(&mut file, &mut pre[..10]).map_err(|e| io_err(path, e))?;
    if got < 8 || &pre[..6] != b"\x93NUMPY" {
        return Err(not_npy("it does not start with the \\x93NUMPY magic"));
    }
    if got < 10 {
        return Err(not_npy("the file ends inside the preamble"));
    }
    let (major, minor) = (pre[6], pre[7]);
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([pre[8], pre[9]]) as u64, 10u64),
        2 | 3 => {
            if read_full(&mut file, &mut pre[10..12]).map_err(|e| io_err(path, e))? < 2 {
                return Err(not_npy("the file ends inside the preamble"));
            }
            (
                u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as u64,
                12u64,
            )
        }
        _ => {
            return Err(not_npy(&format!(
                "unsupported format version {major}.{minor} (1.0, 2.0 and 3.0 are supported)"
            )))
        }
    };
    if header_start + header_len > file_len {
        return Err(not_npy(&format!(
            "the header claims {header_len} bytes but the file has only {} bytes after the \
             preamble (truncated?)",
            file_len - header_start
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| io_err(path, e))?;
    if major < 3 && !header.is_ascii() {
        return Err(not_npy("the header is not ASCII"));
    }
    let dict = parse_py_dict(&header)
        .map_err(|e| not_npy(&format!("cannot parse the header dict ({e})")))?;
    let get = |key: &str| {
        dict.iter()
            .find(|(k, _)| matches!(k, PyLit::Str(s) if s == key))
            .map(|(_, v)| v)
    };
    let descr = get("descr").ok_or_else(|| not_npy("the header has no 'descr'"))?;
    let fortran =
        get("fortran_order").ok_or_else(|| not_npy("the header has no 'fortran_order'"))?;
    let shape = get("shape").ok_or_else(|| not_npy("the header has no 'shape'"))?;

    if descr != &PyLit::Str("<f4".into()) {
        return Err(InputError::NpyDtype {
            path: path.to_path_buf(),
            found: describe_descr(descr),
        });
    }
    let dims: Vec<u64> = match shape {
        PyLit::Tuple(items) => items
            .iter()
            .map(|d| match d {
                PyLit::Int(i) if *i >= 0 && *i <= u64::MAX as i128 => Ok(*i as u64),
                _ => Err(not_npy(&format!("invalid shape {}", shape.repr()))),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(not_npy(&format!("invalid shape {}", shape.repr()))),
    };
    let shape_repr = shape.repr();
    match fortran {
        PyLit::Bool(false) => {}
        // A 2-D array with a dimension of size <= 1 is identical in both orders, but numpy
        // writes fortran_order False for those anyway; treat True as column-major.
        PyLit::Bool(true) => {
            return Err(InputError::NpyFortranOrder {
                path: path.to_path_buf(),
            })
        }
        other => {
            return Err(not_npy(&format!(
                "'fortran_order' is {} instead of True/False",
                other.repr()
            )))
        }
    }
    if dims.len() != 2 {
        return Err(InputError::NpyShape {
            path: path.to_path_buf(),
            shape: shape_repr,
        });
    }
    let (n, dim) = (dims[0], dims[1]);
    let data_start = header_start + header_len;
    let actual = file_len - data_start;
    let expected = n.checked_mul(dim).and_then(|c| c.checked_mul(4));
    let expected = match expected {
        Some(e) if e <= actual => e,
        _ => {
            return Err(InputError::NpyTruncated {
                path: path.to_path_buf(),
                shape: shape_repr,
                expected: expected.unwrap_or(u64::MAX),
                actual,
            })
        }
    };
    let (n, dim) = (n as usize, dim as usize);
    let count = (expected / 4) as usize;
    let mut vectors = vec![0f32; count];
    file.read_exact(bytemuck::cast_slice_mut::<f32, u8>(&mut vectors))
        .map_err(|e| io_err(path, e))?;
    le_to_native(&mut vectors);
    Ok(RawVectors { n, dim, vectors })
}

// ---------------------------------------------------------------------------------------
// .fvecs

fn read_fvecs(path: &Path) -> Result<RawVectors, InputError> {
    let file = open(path)?;
    let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let fvecs_err = |record: usize, message: String| InputError::Fvecs {
        path: path.to_path_buf(),
        record,
        message,
    };

    let mut vectors: Vec<f32> = Vec::new();
    let mut dim: Option<usize> = None;
    let mut pos: u64 = 0;
    let mut record = 0usize;
    loop {
        let mut head = [0u8; 4];
        let got = read_full(&mut r, &mut head).map_err(|e| io_err(path, e))?;
        if got == 0 {
            break;
        }
        if got < 4 {
            return Err(fvecs_err(
                record,
                format!(
                    "truncated: the file ends {got} bytes into the record's 4-byte dimension \
                     field; the last record is incomplete"
                ),
            ));
        }
        pos += 4;
        let d = i32::from_le_bytes(head);
        if d < 0 {
            return Err(fvecs_err(
                record,
                format!("dimension field is negative ({d}); this is not a valid .fvecs file"),
            ));
        }
        let d = d as usize;
        let expected_dim = match dim {
            None => {
                let remaining = file_len.saturating_sub(pos);
                let rec_bytes = 4 + 4 * d as u64;
                // Reserve for the whole file up front (all records have the same size).
                vectors.reserve(((remaining + 4) / rec_bytes.max(1)) as usize * d);
                dim = Some(d);
                d
            }
            Some(e) => e,
        };
        if d != expected_dim {
            return Err(fvecs_err(
                record,
                format!(
                    "dimension is {d} but record 0 has dimension {expected_dim}; all vectors \
                     must have the same dimension"
                ),
            ));
        }
        let need = 4 * d as u64;
        let remaining = file_len.saturating_sub(pos);
        if need > remaining {
            return Err(fvecs_err(
                record,
                format!(
                    "truncated: the record needs {need} bytes of data but the file has only \
                     {remaining} left; the last record is incomplete"
                ),
            ));
        }
        let start = vectors.len();
        vectors.resize(start + d, 0.0);
        let got = read_full(
            &mut r,
            bytemuck::cast_slice_mut::<f32, u8>(&mut vectors[start..]),
        )
        .map_err(|e| io_err(path, e))?;
        if got as u64 != need {
            return Err(fvecs_err(
                record,
                format!(
                    "truncated: the record needs {need} bytes of data but only {got} could be \
                     read"
                ),
            ));
        }
        pos += need;
        record += 1;
    }
    le_to_native(&mut vectors);
    Ok(RawVectors {
        n: record,
        dim: dim.unwrap_or(0),
        vectors,
    })
}

// ---------------------------------------------------------------------------------------
// .jsonl

/// The `"vector"` field: an array of numbers, with a precise error otherwise.
struct JsonVector(Vec<f32>);

impl<'de> serde::Deserialize<'de> for JsonVector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = JsonVector;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<JsonVector, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(64));
                let mut i = 0usize;
                while let Some(x) = seq.next_element::<serde_json::Value>()? {
                    match x {
                        serde_json::Value::Number(num) => {
                            v.push(num.as_f64().unwrap_or(f64::NAN) as f32)
                        }
                        other => {
                            return Err(serde::de::Error::custom(format!(
                                "\"vector\" element {i} is {}, not a number; \"vector\" must \
                                 be an array of numbers",
                                json_kind(&other)
                            )))
                        }
                    }
                    i += 1;
                }
                Ok(JsonVector(v))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(serde::Deserialize)]
struct JsonLine {
    id: Option<serde_json::Value>,
    vector: Option<JsonVector>,
    creator: Option<serde_json::Value>,
    popularity: Option<serde_json::Value>,
}

fn json_kind(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => format!("the boolean {b}"),
        serde_json::Value::Number(n) => format!("the number {n}"),
        serde_json::Value::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        serde_json::Value::String(_) => "a string".into(),
        serde_json::Value::Array(_) => "an array".into(),
        serde_json::Value::Object(_) => "an object".into(),
    }
}

/// serde_json's message without its "at line 1 column N" suffix (we report the file line).
fn json_error_text(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let base = s.strip_suffix(&suffix).unwrap_or(&s);
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            format!("malformed JSON: {base} (at column {})", e.column())
        }
        _ => base.to_string(),
    }
}

fn read_jsonl(path: &Path) -> Result<(RawVectors, RowMeta), InputError> {
    let file = open(path)?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let err = |line: u64, message: String| InputError::Jsonl {
        path: path.to_path_buf(),
        line,
        message,
    };

    let mut vectors: Vec<f32> = Vec::new();
    let mut dim: Option<(usize, u64)> = None;
    let mut ids = Vec::new();
    let mut lines = Vec::new();
    let mut creators: Vec<Option<String>> = Vec::new();
    let mut popularity: Vec<Option<f32>> = Vec::new();
    let mut any_creator = false;
    let mut any_popularity = false;

    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let got = r.read_until(b'\n', &mut buf).map_err(|e| io_err(path, e))?;
        if got == 0 {
            break;
        }
        line_no += 1;
        let mut text: &[u8] = &buf;
        if line_no == 1 {
            text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
        }
        let text = text.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if text[0] != b'{' {
            return Err(err(
                line_no,
                "expected a JSON object like {\"id\": \"...\", \"vector\": [...]}".into(),
            ));
        }
        let rec: JsonLine =
            serde_json::from_slice(text).map_err(|e| err(line_no, json_error_text(&e)))?;

        let id = match rec.id {
            Some(serde_json::Value::String(s)) => s,
            None => return Err(err(line_no, "missing \"id\" (a string)".into())),
            Some(other) => {
                return Err(err(
                    line_no,
                    format!(
                        "\"id\" must be a JSON string, found {}; quote it, e.g. \"id\": \"123\"",
                        json_kind(&other)
                    ),
                ))
            }
        };
        let Some(JsonVector(v)) = rec.vector else {
            return Err(err(
                line_no,
                "missing \"vector\" (an array of numbers)".into(),
            ));
        };
        match dim {
            None => {
                dim = Some((v.len(), line_no));
            }
            Some((d, first_line)) if d != v.len() => {
                return Err(err(
                    line_no,
                    format!(
                        "vector has {} numbers but the first vector (line {first_line}) has \
                         {d}; all vectors must have the same dimension",
                        v.len()
                    ),
                ));
            }
            Some(_) => {}
        }
        vectors.extend_from_slice(&v);

        let creator = match rec.creator {
            None => None,
            Some(serde_json::Value::String(s)) => {
                any_creator = true;
                if s.is_empty() {
                    None
                } else {
                    Some(s)
                }
            }
            Some(other) => {
                return Err(err(
                    line_no,
                    format!(
                        "\"creator\" must be a string or null, found {}",
                        json_kind(&other)
                    ),
                ))
            }
        };
        let row = ids.len();
        let pop = match rec.popularity {
            None => None,
            Some(serde_json::Value::Number(num)) => {
                any_popularity = true;
                let x = num.as_f64().unwrap_or(f64::NAN) as f32;
                if !x.is_finite() {
                    return Err(InputError::BadPopularity {
                        path: path.to_path_buf(),
                        row,
                        line: Some(line_no),
                        column: "popularity".into(),
                        value: format!("{num} (outside the float32 range)"),
                    });
                }
                Some(x)
            }
            Some(other) => {
                return Err(InputError::BadPopularity {
                    path: path.to_path_buf(),
                    row,
                    line: Some(line_no),
                    column: "popularity".into(),
                    value: {
                        let mut v = other.to_string();
                        if v.len() > 40 {
                            v = format!("{} ({} chars)", json_kind(&other), v.len());
                        }
                        v
                    },
                })
            }
        };
        ids.push(id);
        lines.push(line_no);
        creators.push(creator);
        popularity.push(pop);
    }

    let n = ids.len();
    Ok((
        RawVectors {
            n,
            dim: dim.map(|(d, _)| d).unwrap_or(0),
            vectors,
        },
        RowMeta {
            source: Some(path.to_path_buf()),
            ids,
            creators: any_creator.then_some(creators),
            popularity: any_popularity.then_some(popularity),
            lines: Some(lines),
        },
    ))
}

// ---------------------------------------------------------------------------------------
// CSV metadata

/// A CSV metadata file whose header has been read and columns resolved.
struct MetaReader {
    path: PathBuf,
    reader: csv::Reader<BufReader<File>>,
    id_col: usize,
    creator_col: Option<usize>,
    popularity: Option<(usize, String)>,
}

fn csv_error(path: &Path, e: csv::Error) -> InputError {
    let line = e.position().map(|p| p.line());
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "row has {len} fields but the header has {expected_len}; every row needs one value \
             per column (quote values that contain commas)"
        ),
        csv::ErrorKind::Utf8 { err, .. } => {
            format!(
                "not valid UTF-8 (field {}); save the file as UTF-8",
                err.field() + 1
            )
        }
        csv::ErrorKind::Io(io) => format!("read error: {io}"),
        _ => e.to_string(),
    };
    InputError::Csv {
        path: path.to_path_buf(),
        line,
        message,
    }
}

impl MetaReader {
    fn open(path: &Path, spec: &InputSpec) -> Result<MetaReader, InputError> {
        let file = open(path)?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(BufReader::with_capacity(1 << 20, file));
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| csv_error(path, e))?
            .iter()
            .map(|h| h.to_string())
            .collect();
        if headers.is_empty() || (headers.len() == 1 && headers[0].trim().is_empty()) {
            return Err(InputError::Csv {
                path: path.to_path_buf(),
                line: None,
                message: "the file is empty; a header row naming the columns is required".into(),
            });
        }
        let find = |name: &str, option: &'static str| -> Result<usize, InputError> {
            headers
                .iter()
                .position(|h| h == name)
                .or_else(|| headers.iter().position(|h| h.trim() == name.trim()))
                .ok_or_else(|| InputError::UnknownColumn {
                    path: path.to_path_buf(),
                    column: name.to_string(),
                    option,
                    available: headers.clone(),
                })
        };
        let Some(id_name) = &spec.id_column else {
            return Err(InputError::Options(format!(
                "--meta {} needs --id-column to say which column holds the IDs; available \
                 columns: {}",
                path.display(),
                fmt_columns(&headers)
            )));
        };
        let id_col = find(id_name, "--id-column")?;
        let creator_col = match &spec.creator_column {
            Some(c) => Some(find(c, "--creator-column")?),
            None => None,
        };
        let popularity = match &spec.popularity_column {
            Some(c) => Some((find(c, "--popularity-column")?, c.clone())),
            None => None,
        };
        Ok(MetaReader {
            path: path.to_path_buf(),
            reader,
            id_col,
            creator_col,
            popularity,
        })
    }

    fn read_rows(mut self, expected_rows: usize) -> Result<RowMeta, InputError> {
        let path = self.path.as_path();
        let mut ids = Vec::with_capacity(expected_rows);
        let mut lines = Vec::with_capacity(expected_rows);
        let mut creators = self.creator_col.map(|_| Vec::with_capacity(expected_rows));
        let mut popularity = self
            .popularity
            .as_ref()
            .map(|_| Vec::with_capacity(expected_rows));
        let mut rec = csv::StringRecord::new();
        loop {
            match self.reader.read_record(&mut rec) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(csv_error(path, e)),
            }
            let row = ids.len();
            let line = rec.position().map(|p| p.line()).unwrap_or(row as u64 + 2);
            ids.push(rec.get(self.id_col).unwrap_or("").to_string());
            lines.push(line);
            if let (Some(col), Some(out)) = (self.creator_col, creators.as_mut()) {
                let cell = rec.get(col).unwrap_or("");
                out.push((!cell.is_empty()).then(|| cell.to_string()));
            }
            if let (Some((col, name)), Some(out)) = (&self.popularity, popularity.as_mut()) {
                let cell = rec.get(*col).unwrap_or("").trim();
                if cell.is_empty() {
                    out.push(None);
                } else {
                    match cell.parse::<f32>() {
                        Ok(x) if x.is_finite() => out.push(Some(x)),
                        _ => {
                            return Err(InputError::BadPopularity {
                                path: path.to_path_buf(),
                                row,
                                line: Some(line),
                                column: name.clone(),
                                value: format!("{cell:?}"),
                            })
                        }
                    }
                }
            }
        }
        Ok(RowMeta {
            source: Some(self.path),
            ids,
            creators,
            popularity,
            lines: Some(lines),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tempfile::TempDir;

    fn npy_bytes(descr: &str, fortran: bool, shape: &str, data: &[u8], major: u8) -> Vec<u8> {
        let dict = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        let pre = if major == 1 { 10 } else { 12 };
        let mut header = dict.into_bytes();
        while (pre + header.len() + 1) % 64 != 0 {
            header.push(b' ');
        }
        header.push(b'\n');
        let mut out = b"\x93NUMPY".to_vec();
        out.push(major);
        out.push(0);
        if major == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn npy_f32(rows: &[&[f32]]) -> Vec<u8> {
        let dim = rows.first().map(|r| r.len()).unwrap_or(0);
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        npy_bytes(
            "<f4",
            false,
            &format!("({}, {dim})", rows.len()),
            &f32_bytes(&flat),
            1,
        )
    }

    fn fvecs(rows: &[&[f32]]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in rows {
            out.extend_from_slice(&(r.len() as i32).to_le_bytes());
            out.extend_from_slice(&f32_bytes(r));
        }
        out
    }

    fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        let mut f = File::create(&p).unwrap();
        f.write_all(bytes).unwrap();
        p
    }

    fn spec(vectors: PathBuf) -> InputSpec {
        InputSpec {
            vectors,
            ..Default::default()
        }
    }

    fn meta_spec(vectors: PathBuf, meta: PathBuf, id: &str) -> InputSpec {
        InputSpec {
            vectors,
            meta: Some(meta),
            id_column: Some(id.into()),
            ..Default::default()
        }
    }

    fn err(spec: &InputSpec, metric: Metric) -> String {
        match load(spec, metric) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn has(msg: &str, parts: &[&str]) {
        for p in parts {
            assert!(msg.contains(p), "message {msg:?} should contain {p:?}");
        }
    }

    const THREE: [&[f32]; 3] = [&[1.0, 2.0], &[3.0, 4.0], &[-1.0, 0.5]];

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
    fn npy_versions_2_and_3() {
        let d = TempDir::new().unwrap();
        for major in [2u8, 3] {
            let data = f32_bytes(&[1.0, 2.0, 3.0]);
            let p = write(
                &d,
                "v.npy",
                &npy_bytes("<f4", false, "(1, 3)", &data, major),
            );
            let ds = load(&spec(p), Metric::L2).unwrap();
            assert_eq!((ds.len(), ds.dim), (1, 3));
            assert_eq!(ds.row(0), &[1.0, 2.0, 3.0]);
        }
    }

    #[test]
    fn npy_header_errors() {
        let d = TempDir::new().unwrap();
        let data = vec![0u8; 48];
        let p = write(&d, "a.npy", &npy_bytes("<f8", false, "(2, 3)", &data, 1));
        has(
            &err(&spec(p), Metric::L2),
            &["a.npy", "float64", "<f8", "astype('float32')"],
        );

        let p = write(
            &d,
            "b.npy",
            &npy_bytes("<f4", true, "(2, 3)", &data[..24], 1),
        );
        has(&err(&spec(p), Metric::L2), &["b.npy", "Fortran"]);

        let p = write(
            &d,
            "c.npy",
            &npy_bytes("<f4", false, "(6,)", &data[..24], 1),
        );
        has(&err(&spec(p), Metric::L2), &["c.npy", "(6,)", "2-D"]);

        let p = write(
            &d,
            "d.npy",
            &npy_bytes("<f4", false, "(1, 2, 3)", &data[..24], 1),
        );
        has(&err(&spec(p), Metric::L2), &["(1, 2, 3)", "2-D"]);

        let p = write(
            &d,
            "e.npy",
            &npy_bytes("<f4", false, "(4, 3)", &data[..24], 1),
        );
        has(
            &err(&spec(p), Metric::L2),
            &["e.npy", "truncated", "48", "24"],
        );

        let p = write(&d, "f.npy", b"hello world, not numpy at all");
        has(&err(&spec(p), Metric::L2), &["f.npy", "not a NumPy"]);

        let p = write(&d, "g.npy", &npy_bytes("<f4", false, "(0, 3)", &[], 1));
        has(&err(&spec(p), Metric::L2), &["g.npy", "no vectors"]);

        let p = write(&d, "h.npy", &npy_bytes("<f4", false, "(3, 0)", &[], 1));
        has(&err(&spec(p), Metric::L2), &["h.npy", "dimension 0"]);

        let p = write(
            &d,
            "i.npy",
            &npy_bytes(">f4", false, "(2, 3)", &data[..24], 1),
        );
        has(
            &err(&spec(p), Metric::L2),
            &["big-endian float32", "astype"],
        );
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

    #[test]
    fn fvecs_ok_and_errors() {
        let d = TempDir::new().unwrap();
        let p = write(&d, "v.fvecs", &fvecs(&THREE));
        let ds = load(&spec(p), Metric::Cosine).unwrap();
        assert_eq!((ds.len(), ds.dim), (3, 2));
        assert_eq!(ds.row(2), &[-1.0, 0.5]);
        assert_eq!(ds.ids, vec!["0", "1", "2"]);

        let rows: [&[f32]; 3] = [&[1.0, 2.0], &[3.0, 4.0], &[1.0, 2.0, 3.0]];
        let p = write(&d, "mixed.fvecs", &fvecs(&rows));
        has(
            &err(&spec(p), Metric::L2),
            &["mixed.fvecs", "record 2", "dimension is 3", "2"],
        );

        let mut bytes = fvecs(&THREE);
        bytes.truncate(bytes.len() - 3);
        let p = write(&d, "trunc.fvecs", &bytes);
        has(
            &err(&spec(p), Metric::L2),
            &["trunc.fvecs", "record 2", "truncated"],
        );

        let mut bytes = fvecs(&THREE);
        bytes.extend_from_slice(&[2, 0]);
        let p = write(&d, "trunc2.fvecs", &bytes);
        has(&err(&spec(p), Metric::L2), &["record 3", "truncated"]);

        let p = write(&d, "empty.fvecs", b"");
        has(&err(&spec(p), Metric::L2), &["empty.fvecs", "no vectors"]);
    }

    #[test]
    fn csv_meta_ok() {
        let d = TempDir::new().unwrap();
        let v = write(&d, "v.npy", &npy_f32(&THREE));
        let m = write(
            &d,
            "m.csv",
            "\u{feff}track_id,artist,plays\n\
             t1,Alice,10\n\
             \"t,2\",,\n\
             t3,\"Bob, Jr.\", 2.5e3 \n"
                .as_bytes(),
        );
        let mut s = meta_spec(v.clone(), m.clone(), "track_id");
        s.creator_column = Some("artist".into());
        s.popularity_column = Some("plays".into());
        let ds = load(&s, Metric::Cosine).unwrap();
        assert_eq!(ds.ids, vec!["t1", "t,2", "t3"]);
        assert_eq!(
            ds.creators.unwrap(),
            vec![
                Some("Alice".to_string()),
                None,
                Some("Bob, Jr.".to_string())
            ]
        );
        assert_eq!(ds.popularity.unwrap(), vec![Some(10.0), None, Some(2500.0)]);

        // Only the ID column.
        let ds = load(&meta_spec(v, m, "plays"), Metric::Cosine);
        // "plays" has an empty cell on row 1 -> empty ID error naming line 3.
        has(
            &ds.unwrap_err().to_string(),
            &["m.csv", "row 1 (line 3)", "empty"],
        );
    }

    #[test]
    fn csv_meta_errors() {
        let d = TempDir::new().unwrap();
        let v = write(&d, "v.npy", &npy_f32(&THREE));
        let m = write(&d, "m.csv", b"id,artist,plays\na,x,1\nb,y,2\nc,z,3\n");

        let mut s = meta_spec(v.clone(), m.clone(), "track");
        has(
            &err(&s, Metric::L2),
            &[
                "m.csv",
                "\"track\"",
                "--id-column",
                "\"id\"",
                "\"artist\"",
                "\"plays\"",
            ],
        );
        s.id_column = Some("id".into());
        s.creator_column = Some("singer".into());
        has(
            &err(&s, Metric::L2),
            &["\"singer\"", "--creator-column", "\"artist\""],
        );
        s.creator_column = None;
        s.popularity_column = Some("pop".into());
        has(&err(&s, Metric::L2), &["\"pop\"", "--popularity-column"]);

        // Meta without --id-column lists the columns.
        let s = InputSpec {
            vectors: v.clone(),
            meta: Some(m.clone()),
            ..Default::default()
        };
        has(
            &err(&s, Metric::L2),
            &["--id-column", "\"id\", \"artist\", \"plays\""],
        );

        // Column options without --meta.
        let s = InputSpec {
            vectors: v.clone(),
            id_column: Some("id".into()),
            ..Default::default()
        };
        has(&err(&s, Metric::L2), &["--id-column", "without --meta"]);

        // Row count mismatch: both numbers.
        let m2 = write(&d, "short.csv", b"id\na\nb\n");
        has(
            &err(&meta_spec(v.clone(), m2, "id"), Metric::L2),
            &["short.csv", "2 data rows", "3 vectors", "v.npy"],
        );
        let m2 = write(&d, "long.csv", b"id\na\nb\nc\nd\n");
        has(
            &err(&meta_spec(v.clone(), m2, "id"), Metric::L2),
            &["4 data rows", "3 vectors"],
        );

        // Ragged row.
        let m2 = write(&d, "ragged.csv", b"id,artist\na,x\nb\nc,z\n");
        has(
            &err(&meta_spec(v.clone(), m2, "id"), Metric::L2),
            &["ragged.csv", "line 3", "1 fields", "header has 2"],
        );

        // Empty file.
        let m2 = write(&d, "empty.csv", b"");
        has(
            &err(&meta_spec(v.clone(), m2, "id"), Metric::L2),
            &["empty.csv", "header row"],
        );

        // Duplicate IDs name both rows.
        let m2 = write(&d, "dup.csv", b"id\nx\ny\nx\n");
        has(
            &err(&meta_spec(v.clone(), m2, "id"), Metric::L2),
            &["dup.csv", "\"x\"", "row 0 (line 2)", "row 2 (line 4)"],
        );

        // ID too long.
        let long = "a".repeat(1025);
        let m2 = write(&d, "long_id.csv", format!("id\nx\n{long}\nz\n").as_bytes());
        has(
            &err(&meta_spec(v.clone(), m2, "id"), Metric::L2),
            &["row 1 (line 3)", "1025 bytes", "1024"],
        );

        // Bad popularity values.
        for (bad, shown) in [("abc", "\"abc\""), ("NaN", "\"NaN\""), ("inf", "\"inf\"")] {
            let m2 = write(
                &d,
                "pop.csv",
                format!("id,plays\na,1\nb,\nc,{bad}\n").as_bytes(),
            );
            let mut s = meta_spec(v.clone(), m2, "id");
            s.popularity_column = Some("plays".into());
            has(
                &err(&s, Metric::L2),
                &["pop.csv", "row 2 (line 4)", "\"plays\"", shown],
            );
        }
    }

    #[test]
    fn fvecs_with_meta() {
        let d = TempDir::new().unwrap();
        let v = write(&d, "v.fvecs", &fvecs(&THREE));
        let m = write(&d, "m.csv", b"id,who\na,\nb,B\nc,C\n");
        let mut s = meta_spec(v, m, "id");
        s.creator_column = Some("who".into());
        let ds = load(&s, Metric::L2).unwrap();
        assert_eq!(ds.ids, vec!["a", "b", "c"]);
        assert_eq!(ds.creators.unwrap()[0], None);
        assert!(ds.popularity.is_none());
    }

    #[test]
    fn jsonl_ok() {
        let d = TempDir::new().unwrap();
        let p = write(
            &d,
            "v.jsonl",
            b"{\"id\": \"a\", \"vector\": [1, 2.5, -3e0]}\n\
              \n\
              {\"id\": \"b\", \"vector\": [0, 1, 0], \"creator\": \"Zed\", \"extra\": {\"x\": 1}}\r\n\
              {\"id\": \"c\", \"vector\": [1, 1, 1], \"creator\": null}\n",
        );
        let ds = load(&spec(p), Metric::Cosine).unwrap();
        assert_eq!(ds.ids, vec!["a", "b", "c"]);
        assert_eq!(ds.dim, 3);
        assert_eq!(ds.row(0), &[1.0, 2.5, -3.0]);
        assert_eq!(ds.creators.unwrap(), vec![None, Some("Zed".into()), None]);
        assert!(ds.popularity.is_none());

        let p = write(
            &d,
            "v.ndjson",
            b"{\"id\": \"a\", \"vector\": [1], \"popularity\": 3}\n{\"id\": \"b\", \"vector\": [2]}",
        );
        let ds = load(&spec(p), Metric::L2).unwrap();
        assert!(ds.creators.is_none());
        assert_eq!(ds.popularity.unwrap(), vec![Some(3.0), None]);
    }

    #[test]
    fn jsonl_errors() {
        let d = TempDir::new().unwrap();
        let ok = "{\"id\": \"a\", \"vector\": [1, 2]}\n\n";
        let cases: &[(&str, &[&str])] = &[
            (
                "{\"id\": \"b\", \"vector\": [1, 2]\n",
                &["line 3", "malformed JSON"],
            ),
            ("not json\n", &["line 3", "JSON object"]),
            ("{\"vector\": [1, 2]}\n", &["line 3", "missing \"id\""]),
            ("{\"id\": \"b\"}\n", &["line 3", "missing \"vector\""]),
            (
                "{\"id\": 7, \"vector\": [1, 2]}\n",
                &["line 3", "must be a JSON string", "number 7"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [1, \"x\"]}\n",
                &["line 3", "element 1", "not a number"],
            ),
            (
                "{\"id\": \"b\", \"vector\": \"1,2\"}\n",
                &["line 3", "array of numbers"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [1, 2, 3]}\n",
                &["line 3", "3 numbers", "(line 1) has 2"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [1, 2], \"popularity\": \"hi\"}\n",
                &["row 1 (line 3)", "popularity"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [1, 2], \"popularity\": 1e300}\n",
                &["row 1 (line 3)", "popularity"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [1, 2], \"creator\": 5}\n",
                &["line 3", "\"creator\""],
            ),
            (
                "{\"id\": \"a\", \"vector\": [3, 4]}\n",
                &["v.jsonl", "\"a\"", "row 0 (line 1)", "row 1 (line 3)"],
            ),
            (
                "{\"id\": \"\", \"vector\": [3, 4]}\n",
                &["row 1 (line 3)", "empty"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [0, 0]}\n",
                &["row 1 (line 3)", "cosine needs non-zero"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [1, 1e39]}\n",
                &["row 1 (line 3)", "column 1", "inf"],
            ),
        ];
        for (second, parts) in cases {
            let p = write(&d, "v.jsonl", format!("{ok}{second}").as_bytes());
            let msg = err(&spec(p), Metric::Cosine);
            has(&msg, &["v.jsonl"]);
            has(&msg, parts);
        }

        let p = write(&d, "e.jsonl", b"\n\n");
        has(&err(&spec(p), Metric::L2), &["e.jsonl", "no vectors"]);
        let p = write(&d, "z.jsonl", b"{\"id\": \"a\", \"vector\": []}\n");
        has(&err(&spec(p), Metric::L2), &["z.jsonl", "dimension 0"]);

        // Metadata options are rejected for JSONL.
        let p = write(&d, "v.jsonl", ok.as_bytes());
        let m = write(&d, "m.csv", b"id\na\n");
        has(
            &err(&meta_spec(p.clone(), m, "id"), Metric::L2),
            &["metadata comes from the JSONL fields"],
        );
        let mut s = spec(p);
        s.creator_column = Some("x".into());
        has(
            &err(&s, Metric::L2),
            &["metadata comes from the JSONL fields"],
        );
    }

    #[test]
    fn header_parser() {
        let dict =
            parse_py_dict(b"{'descr': [('a', '<f4')], 'shape': (3L, 4), 'x': None}").unwrap();
        assert_eq!(dict.len(), 3);
        assert_eq!(dict[1].1, PyLit::Tuple(vec![PyLit::Int(3), PyLit::Int(4)]));
        assert_eq!(
            describe_descr(&dict[0].1),
            "a structured dtype [('a', '<f4')]"
        );
        assert_eq!(PyLit::Tuple(vec![PyLit::Int(5)]).repr(), "(5,)");
        assert!(parse_py_dict(b"{'a': 1").is_err());
    }
}
