//! Everything in a `.npy` file before the data: the magic, the format version, the header
//! length and the header dict (`descr`, `fortran_order`, `shape`).
//!
//! Only the header's syntax is checked here; whether the dtype, order and shape suit the
//! caller is for the caller to say, in its own words.

use std::io::{self, Read};

use super::literal::{self, PyLiteral};
use crate::input::read_full;

/// The first six bytes of every `.npy` file.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Longest header read, in bytes: the most format 1.0 can express. numpy writes 2.0 / 3.0
/// (4-byte length) only for headers longer than that, which only structured dtypes with
/// thousands of fields produce, and its own reader refuses headers over 10,000 bytes unless
/// told otherwise (`max_header_size`). Without a cap a 4-byte length field would make a
/// small file of ours allocate and parse up to 4 GiB.
pub const MAX_HEADER_BYTES: u64 = 65_535;

/// Why a `.npy` header cannot be read. Each message is a reason to complete
/// "not a NumPy .npy file: …"; I/O errors pass through for the caller to name the file.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error(transparent)]
    Io(#[from] io::Error),

    #[error("it does not start with the \\x93NUMPY magic")]
    BadMagic,

    #[error("the file ends inside the preamble")]
    ShortPreamble,

    #[error("unsupported format version {major}.{minor} (1.0, 2.0 and 3.0 are supported)")]
    Version { major: u8, minor: u8 },

    #[error(
        "the header claims {claimed} bytes but the file has only {available} bytes after the \
         preamble (truncated?)"
    )]
    HeaderTruncated { claimed: u64, available: u64 },

    #[error(
        "the header claims {claimed} bytes, more than the {MAX_HEADER_BYTES} accepted (numpy \
         writes about 128 for an array of numbers)"
    )]
    HeaderTooLong { claimed: u64 },

    #[error("the header is not ASCII")]
    NotAscii,

    #[error("cannot parse the header dict ({0})")]
    Syntax(String),

    #[error("the header has no '{0}'")]
    MissingKey(&'static str),

    #[error("invalid shape {0}")]
    Shape(String),

    #[error("'fortran_order' is {0} instead of True/False")]
    FortranOrder(String),
}

/// A parsed header. `fortran_order` and `shape` are checked when asked for, so a caller
/// decides which problem it reports first.
#[derive(Debug, Clone)]
pub struct Header {
    /// The dtype: a string such as `'<f4'`, or a list for a structured dtype.
    pub descr: PyLiteral,
    fortran_order: PyLiteral,
    shape: PyLiteral,
    /// Offset of the first data byte from the start of the file.
    pub data_start: u64,
}

impl Header {
    /// True for column-major data.
    pub fn fortran_order(&self) -> Result<bool, HeaderError> {
        match self.fortran_order {
            PyLiteral::Bool(b) => Ok(b),
            ref other => Err(HeaderError::FortranOrder(other.repr())),
        }
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> Result<Vec<u64>, HeaderError> {
        let invalid = || HeaderError::Shape(self.shape.repr());
        let PyLiteral::Tuple(items) = &self.shape else {
            return Err(invalid());
        };
        items
            .iter()
            .map(|d| match d {
                PyLiteral::Int(i) => u64::try_from(*i).map_err(|_| invalid()),
                _ => Err(invalid()),
            })
            .collect()
    }

    /// The shape as the file spells it, e.g. `(3, 4)` or `(6,)`.
    pub fn shape_repr(&self) -> String {
        self.shape.repr()
    }

    /// The dtype string (e.g. `<f4`), or the repr of a structured dtype.
    pub fn descr_text(&self) -> String {
        match &self.descr {
            PyLiteral::Str(s) => s.clone(),
            other => other.repr(),
        }
    }
}

/// Reads the header from the start of a `.npy` file of `file_len` bytes, leaving `r` at
/// the first data byte.
pub fn read_header(r: &mut impl Read, file_len: u64) -> Result<Header, HeaderError> {
    let mut pre = [0u8; 12];
    let got = read_full(r, &mut pre[..10])?;
    if got < 8 || &pre[..6] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    if got < 10 {
        return Err(HeaderError::ShortPreamble);
    }
    let (major, minor) = (pre[6], pre[7]);
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([pre[8], pre[9]]) as u64, 10u64),
        2 | 3 => {
            if read_full(r, &mut pre[10..12])? < 2 {
                return Err(HeaderError::ShortPreamble);
            }
            (
                u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as u64,
                12u64,
            )
        }
        _ => return Err(HeaderError::Version { major, minor }),
    };
    if header_start + header_len > file_len {
        return Err(HeaderError::HeaderTruncated {
            claimed: header_len,
            available: file_len.saturating_sub(header_start),
        });
    }
    if header_len > MAX_HEADER_BYTES {
        return Err(HeaderError::HeaderTooLong {
            claimed: header_len,
        });
    }
    let mut header = vec![0u8; header_len as usize];
    r.read_exact(&mut header)?;
    // 1.0 and 2.0 headers are latin-1 but numpy only ever writes ASCII; 3.0 is UTF-8.
    if major < 3 && !header.is_ascii() {
        return Err(HeaderError::NotAscii);
    }
    let mut dict = literal::parse_dict(&header).map_err(HeaderError::Syntax)?;
    // Python keeps the last of repeated keys, and so does this.
    let mut take = |key: &'static str| {
        let at = dict
            .iter()
            .rposition(|(k, _)| matches!(k, PyLiteral::Str(s) if s == key))
            .ok_or(HeaderError::MissingKey(key))?;
        Ok::<_, HeaderError>(dict.remove(at).1)
    };
    let descr = take("descr")?;
    let fortran_order = take("fortran_order")?;
    let shape = take("shape")?;
    Ok(Header {
        descr,
        fortran_order,
        shape,
        data_start: header_start + header_len,
    })
}

/// A numpy dtype in words, for messages: `big-endian float32 ('>f4')`.
pub fn describe_dtype(descr: &PyLiteral) -> String {
    let PyLiteral::Str(s) = descr else {
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

#[cfg(test)]
mod tests {
    use super::super::write::{array_header, frame_header};
    use super::*;

    fn read(bytes: &[u8]) -> Result<Header, HeaderError> {
        read_header(&mut io::Cursor::new(bytes), bytes.len() as u64)
    }

    fn reason(bytes: &[u8]) -> String {
        read(bytes).unwrap_err().to_string()
    }

    /// A header holding `dict`, written as format version `major`.
    fn with_dict(dict: &str, major: u8) -> Vec<u8> {
        frame_header(dict, major)
    }

    #[test]
    fn reads_every_version() {
        for major in [1u8, 2, 3] {
            let bytes = array_header("<f4", false, &[3, 4], major);
            let h = read(&bytes).unwrap();
            assert_eq!(h.descr, PyLiteral::Str("<f4".into()));
            assert_eq!(
                (h.shape().unwrap(), h.shape_repr()),
                (vec![3, 4], "(3, 4)".into())
            );
            assert!(!h.fortran_order().unwrap());
            assert_eq!(h.data_start, bytes.len() as u64);
            assert_eq!(h.data_start % 64, 0, "numpy aligns the data to 64 bytes");
        }
        // 3.0 headers are UTF-8.
        let h = read(&with_dict(
            "{'descr': [('é', '<f4')], 'fortran_order': False, 'shape': (), }",
            3,
        ))
        .unwrap();
        assert_eq!(h.descr_text(), "[('é', '<f4')]");
        assert_eq!(h.shape().unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn wrong_magic_version_and_short_preamble() {
        assert_eq!(
            reason(b"hello world, not numpy at all"),
            "it does not start with the \\x93NUMPY magic"
        );
        assert_eq!(reason(b""), "it does not start with the \\x93NUMPY magic");
        assert_eq!(
            reason(b"\x93NUMPY\x01"),
            "it does not start with the \\x93NUMPY magic"
        );
        assert_eq!(
            reason(b"\x93NUMPY\x01\x00\x10"),
            "the file ends inside the preamble"
        );
        assert_eq!(
            reason(b"\x93NUMPY\x02\x00\x10\x00\x00"),
            "the file ends inside the preamble"
        );
        let mut v4 = array_header("<f4", false, &[1, 1], 1);
        v4[6] = 4;
        assert_eq!(
            reason(&v4),
            "unsupported format version 4.0 (1.0, 2.0 and 3.0 are supported)"
        );
    }

    #[test]
    fn huge_header_lengths_are_refused_before_allocating() {
        // A 4-byte length field claiming 4 GiB in a 128-byte file.
        let mut bytes = array_header("<f4", false, &[1, 1], 2);
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            reason(&bytes),
            "the header claims 4294967295 bytes but the file has only 116 bytes after the \
             preamble (truncated?)"
        );
        // A header that really is that long is refused by the cap, unread.
        let padded = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), {}}}",
            " ".repeat(MAX_HEADER_BYTES as usize)
        );
        let bytes = with_dict(&padded, 2);
        let claimed = bytes.len() as u64 - 12;
        assert!(claimed > MAX_HEADER_BYTES);
        assert_eq!(
            reason(&bytes),
            format!(
                "the header claims {claimed} bytes, more than the 65535 accepted (numpy writes \
                 about 128 for an array of numbers)"
            )
        );
        // The largest header format 1.0 can hold is still read.
        let mut bytes = MAGIC.to_vec();
        bytes.extend([1, 0, 0xFF, 0xFF]);
        bytes.extend(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), }");
        bytes.resize(10 + 65_535 - 1, b' ');
        bytes.push(b'\n');
        assert_eq!(read(&bytes).unwrap().shape().unwrap(), [1, 1]);
    }

    #[test]
    fn hostile_dicts_are_refused() {
        let deep = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': {}2, 3{}}}",
            "(".repeat(30_000),
            ")".repeat(30_000)
        );
        let cases: &[(&str, &str)] = &[
            (
                &deep,
                "cannot parse the header dict (the header nests deeper than 64 levels at \
                 offset 113)",
            ),
            (
                "{'descr': '<f4, 'fortran_order': False, 'shape': (1, 1)}",
                "cannot parse the header dict (malformed dict at offset 17 of the header)",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), 'x': 'open}",
                "cannot parse the header dict (unterminated string in header)",
            ),
            (
                "[('descr', '<f4'), ('shape', (1, 1))]",
                "cannot parse the header dict (header is [('descr', '<f4'), ('shape', (1, 1))] \
                 instead of a dict)",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1)}; import os",
                "cannot parse the header dict (unexpected text after the header dict at offset \
                 57)",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False}",
                "the header has no 'shape'",
            ),
            (
                "{'fortran_order': False, 'shape': (1,)}",
                "the header has no 'descr'",
            ),
            (
                "{'descr': '<f4', 'shape': (1,)}",
                "the header has no 'fortran_order'",
            ),
        ];
        for (dict, expected) in cases {
            assert_eq!(reason(&with_dict(dict, 1)), *expected, "{dict:.80}");
        }
        let mut latin1 = array_header("<f4", false, &[1, 1], 2);
        latin1[20] = 0xE9;
        assert_eq!(reason(&latin1), "the header is not ASCII");
    }

    #[test]
    fn shape_and_order_are_checked_on_request() {
        let h = |shape: &str, fortran: &str| {
            read(&with_dict(
                &format!("{{'descr': '<f4', 'fortran_order': {fortran}, 'shape': {shape}}}"),
                1,
            ))
            .unwrap()
        };
        let huge = h("(4611686018427387904, 4611686018427387904)", "False");
        assert_eq!(huge.shape().unwrap(), [1 << 62, 1 << 62]);
        for bad in [
            "(-1, 3)",
            "(18446744073709551616, 1)",
            "[2, 3]",
            "(2, '3')",
            "7",
        ] {
            assert_eq!(
                h(bad, "False").shape().unwrap_err().to_string(),
                format!("invalid shape {}", h(bad, "False").shape_repr())
            );
        }
        assert!(h("(2, 3)", "True").fortran_order().unwrap());
        assert_eq!(
            h("(2, 3)", "1").fortran_order().unwrap_err().to_string(),
            "'fortran_order' is 1 instead of True/False"
        );
        // Repeated keys: the last one counts, as in Python.
        let last = read(&with_dict(
            "{'descr': '<f8', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}",
            1,
        ))
        .unwrap();
        assert_eq!(last.descr_text(), "<f4");
    }

    #[test]
    fn dtypes_in_words() {
        let s = |d: &str| describe_dtype(&PyLiteral::Str(d.into()));
        assert_eq!(s("<f8"), "float64 ('<f8')");
        assert_eq!(s(">f4"), "big-endian float32 ('>f4')");
        assert_eq!(s("|u1"), "uint8 ('|u1')");
        assert_eq!(s("<U12"), "string ('<U12')");
        assert_eq!(s("<m8[s]"), "'<m8[s]'");
        let structured = literal::parse_dict(b"{'d': [('a', '<f4')]}").unwrap();
        assert_eq!(
            describe_dtype(&structured[0].1),
            "a structured dtype [('a', '<f4')]"
        );
    }
}
