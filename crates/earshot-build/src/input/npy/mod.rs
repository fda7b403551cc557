//! `.npy` files (NumPy's array format): the one reader and writer in the tree.
//!
//! The header is a Python dict literal read from the file, so `header` caps its size and
//! `literal` its nesting. On top of it: [`read_vectors`] for `earshot build` (errors
//! that say how to fix the file), [`read_f32`] / [`read_int`] for the bench and tests, and
//! the writers used by the synthetic generator, the demo and the tests.

mod header;
mod literal;
mod write;

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};

use super::{io_err, le_to_native, open, InputError, RawVectors};
use header::{describe_dtype, read_header, Header, HeaderError};
use literal::PyLiteral;
#[cfg(test)]
pub(crate) use write::array_header;
pub use write::{write_f32, write_i32, write_raw};

/// A whole array as read by [`read_f32`] / [`read_int`].
#[derive(Debug)]
pub struct Array<T> {
    /// One or two dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<T>,
}

impl<T> Array<T> {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Elements per row (1 for a 1-D array).
    pub fn cols(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(1)
    }
}

/// Reads a 1-D or 2-D float32 array (`<f4`).
pub fn read_f32(path: &Path) -> anyhow::Result<Array<f32>> {
    let (mut file, shape, _) = open_array(path, &["<f4"])?;
    let mut data = vec![0f32; shape.iter().product()];
    file.read_exact(bytemuck::cast_slice_mut(&mut data))
        .with_context(|| format!("cannot read {}", path.display()))?;
    le_to_native(&mut data);
    Ok(Array { shape, data })
}

/// Reads a 1-D or 2-D integer array (`<i4` or `<i8`) as i64.
pub fn read_int(path: &Path) -> anyhow::Result<Array<i64>> {
    let (mut file, shape, descr) = open_array(path, &["<i4", "<i8"])?;
    let n = shape.iter().product();
    let context = || format!("cannot read {}", path.display());
    let data = if descr == "<i8" {
        let mut data = vec![0i64; n];
        file.read_exact(bytemuck::cast_slice_mut(&mut data))
            .with_context(context)?;
        data.iter_mut().for_each(|x| *x = i64::from_le(*x));
        data
    } else {
        let mut data = vec![0i32; n];
        file.read_exact(bytemuck::cast_slice_mut(&mut data))
            .with_context(context)?;
        data.into_iter().map(|x| i32::from_le(x) as i64).collect()
    };
    Ok(Array { shape, data })
}

/// Opens an array for [`read_f32`] / [`read_int`] and checks it: one of the `wanted`
/// dtypes, C order, 1-D or 2-D, all its data present. Returns the file positioned at the
/// data, the shape and the dtype.
fn open_array(
    path: &Path,
    wanted: &[&'static str],
) -> anyhow::Result<(File, Vec<usize>, &'static str)> {
    let (file, file_len, header) = open_npy(path).map_err(into_anyhow)?;
    let found = header.descr_text();
    let Some(&descr) = wanted.iter().find(|w| **w == found) else {
        bail!(
            "{}: dtype {found} where {} was expected",
            path.display(),
            wanted.join(" or ")
        );
    };
    if header.fortran_order().map_err(|e| header_error(path, e))? {
        bail!(
            "{}: Fortran order is not supported; save with np.ascontiguousarray",
            path.display()
        );
    }
    let dims = header.shape().map_err(|e| header_error(path, e))?;
    let shape: Vec<usize> = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| header_error(path, HeaderError::Shape(header.shape_repr())))?;
    if shape.is_empty() || shape.len() > 2 {
        bail!(
            "{}: expected a 1-D or 2-D array, got shape {shape:?}",
            path.display()
        );
    }
    let elem: u64 = if descr == "<i8" { 8 } else { 4 };
    let available = file_len - header.data_start;
    let need = dims.iter().try_fold(elem, |bytes, &d| bytes.checked_mul(d));
    match need {
        Some(need) if need <= available => {}
        _ => bail!(
            "{}: truncated: shape {shape:?} needs {} data bytes, file has {available}",
            path.display(),
            need.unwrap_or(u64::MAX)
        ),
    }
    Ok((file, shape, descr))
}

/// Reads the vectors for `earshot build`: float32, 2-D (rows, dim), C order.
pub(super) fn read_vectors(path: &Path) -> Result<RawVectors, InputError> {
    let (mut file, file_len, header) = open_npy(path)?;
    if header.descr != PyLiteral::Str("<f4".into()) {
        return Err(InputError::NpyDtype {
            path: path.to_path_buf(),
            found: describe_dtype(&header.descr),
        });
    }
    let dims = header.shape().map_err(|e| header_error(path, e))?;
    let shape = header.shape_repr();
    // A 2-D array with a dimension of size <= 1 is identical in both orders, but numpy
    // writes fortran_order False for those anyway; treat True as column-major.
    if header.fortran_order().map_err(|e| header_error(path, e))? {
        return Err(InputError::NpyFortranOrder {
            path: path.to_path_buf(),
        });
    }
    if dims.len() != 2 {
        return Err(InputError::NpyShape {
            path: path.to_path_buf(),
            shape,
        });
    }
    let (n, dim) = (dims[0], dims[1]);
    let actual = file_len - header.data_start;
    let expected = n.checked_mul(dim).and_then(|c| c.checked_mul(4));
    let expected = match expected {
        Some(e) if e <= actual => e,
        _ => {
            return Err(InputError::NpyTruncated {
                path: path.to_path_buf(),
                shape,
                expected: expected.unwrap_or(u64::MAX),
                actual,
            })
        }
    };
    let (n, dim) = (n as usize, dim as usize);
    let mut vectors = vec![0f32; (expected / 4) as usize];
    file.read_exact(bytemuck::cast_slice_mut::<f32, u8>(&mut vectors))
        .map_err(|e| io_err(path, e))?;
    le_to_native(&mut vectors);
    Ok(RawVectors { n, dim, vectors })
}

/// Opens `path` and reads its header; returns the file positioned at the data and its length.
fn open_npy(path: &Path) -> Result<(File, u64, Header), InputError> {
    let mut file = open(path)?;
    let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let header = read_header(&mut file, file_len).map_err(|e| header_error(path, e))?;
    Ok((file, file_len, header))
}

/// For the anyhow readers an I/O error is the context "cannot read PATH" over its cause, so
/// `{:#}` does not print the cause twice (`InputError::Io` shows it and is its source).
fn into_anyhow(e: InputError) -> anyhow::Error {
    match e {
        InputError::Io { path, source } => {
            anyhow::Error::new(source).context(format!("cannot read {}", path.display()))
        }
        other => other.into(),
    }
}

fn header_error(path: &Path, e: HeaderError) -> InputError {
    match e {
        HeaderError::Io(source) => io_err(path, source),
        reason => InputError::NotNpy {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::super::test_support::*;
    use super::*;
    use earshot_core::metric::Metric;

    #[test]
    fn npy_versions_2_and_3() {
        let d = TempDir::new().unwrap();
        for major in [2u8, 3] {
            let data = f32_bytes(&[1.0, 2.0, 3.0]);
            let p = write(&d, "v.npy", &npy_bytes("<f4", false, &[1, 3], &data, major));
            let ds = load(&spec(p), Metric::L2).unwrap();
            assert_eq!((ds.len(), ds.dim), (1, 3));
            assert_eq!(ds.row(0), &[1.0, 2.0, 3.0]);
        }
    }

    #[test]
    fn npy_header_errors() {
        let d = TempDir::new().unwrap();
        let data = vec![0u8; 48];
        let p = write(&d, "a.npy", &npy_bytes("<f8", false, &[2, 3], &data, 1));
        has(
            &err(&spec(p), Metric::L2),
            &["a.npy", "float64", "<f8", "astype('float32')"],
        );

        let p = write(
            &d,
            "b.npy",
            &npy_bytes("<f4", true, &[2, 3], &data[..24], 1),
        );
        has(&err(&spec(p), Metric::L2), &["b.npy", "Fortran"]);

        let p = write(&d, "c.npy", &npy_bytes("<f4", false, &[6], &data[..24], 1));
        has(&err(&spec(p), Metric::L2), &["c.npy", "(6,)", "2-D"]);

        let p = write(
            &d,
            "d.npy",
            &npy_bytes("<f4", false, &[1, 2, 3], &data[..24], 1),
        );
        has(&err(&spec(p), Metric::L2), &["(1, 2, 3)", "2-D"]);

        let p = write(
            &d,
            "e.npy",
            &npy_bytes("<f4", false, &[4, 3], &data[..24], 1),
        );
        has(
            &err(&spec(p), Metric::L2),
            &["e.npy", "truncated", "48", "24"],
        );

        let p = write(&d, "f.npy", b"hello world, not numpy at all");
        has(&err(&spec(p), Metric::L2), &["f.npy", "not a NumPy"]);

        let p = write(&d, "g.npy", &npy_bytes("<f4", false, &[0, 3], &[], 1));
        has(&err(&spec(p), Metric::L2), &["g.npy", "no vectors"]);

        let p = write(&d, "h.npy", &npy_bytes("<f4", false, &[3, 0], &[], 1));
        has(&err(&spec(p), Metric::L2), &["h.npy", "dimension 0"]);

        let p = write(
            &d,
            "i.npy",
            &npy_bytes(">f4", false, &[2, 3], &data[..24], 1),
        );
        has(
            &err(&spec(p), Metric::L2),
            &["big-endian float32", "astype"],
        );
    }

    #[test]
    fn hostile_headers_name_the_file() {
        let d = TempDir::new().unwrap();
        let framed = |dict: &str| write::frame_header(dict, 1);
        let deep = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': {}2, 3{}}}",
            "(".repeat(20_000),
            ")".repeat(20_000)
        );
        let p = write(&d, "deep.npy", &framed(&deep));
        assert_eq!(
            err(&spec(p.clone()), Metric::L2),
            format!(
                "{}: not a NumPy .npy file: cannot parse the header dict (the header nests \
                 deeper than 64 levels at offset 113); save the array with numpy.save()",
                p.display()
            )
        );
        assert!(read_f32(&p)
            .unwrap_err()
            .to_string()
            .contains("nests deeper"));

        let p = write(&d, "open.npy", &framed("{'descr': '<f4"));
        has(
            &err(&spec(p), Metric::L2),
            &["open.npy", "not a NumPy", "unterminated string"],
        );
        let p = write(&d, "list.npy", &framed("[1, 2]"));
        has(
            &err(&spec(p), Metric::L2),
            &["list.npy", "header is [1, 2] instead of a dict"],
        );

        let mut huge = array_header("<f4", false, &[1, 1], 2);
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let p = write(&d, "huge.npy", &huge);
        has(
            &err(&spec(p.clone()), Metric::L2),
            &["huge.npy", "claims 4294967295 bytes"],
        );
        has(
            &read_int(&p).unwrap_err().to_string(),
            &["huge.npy", "claims 4294967295 bytes"],
        );

        let p = write(&d, "magic.npy", b"\x93NUMPZ\x01\x00\x00\x00");
        has(
            &err(&spec(p.clone()), Metric::L2),
            &["magic.npy", "\\x93NUMPY magic"],
        );
        has(
            &read_f32(&p).unwrap_err().to_string(),
            &["magic.npy", "magic"],
        );
    }

    #[test]
    fn shape_overflow_is_a_truncated_file_not_a_crash() {
        let d = TempDir::new().unwrap();
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': \
                    (4611686018427387904, 4611686018427387904), }";
        let mut bytes = write::frame_header(dict, 1);
        bytes.extend(f32_bytes(&[1.0; 8]));
        let p = write(&d, "big.npy", &bytes);
        assert_eq!(
            err(&spec(p.clone()), Metric::L2),
            format!(
                "{}: file is truncated: shape (4611686018427387904, 4611686018427387904) needs \
                 18446744073709551615 bytes of float32 data after the header, but only 32 bytes \
                 are present; re-create the file",
                p.display()
            )
        );
        assert_eq!(
            read_f32(&p).unwrap_err().to_string(),
            format!(
                "{}: truncated: shape [4611686018427387904, 4611686018427387904] needs \
                 18446744073709551615 data bytes, file has 32",
                p.display()
            )
        );
        // A zero dimension makes the product small whatever the other one is.
        let p = write(
            &d,
            "wide.npy",
            &npy_bytes("<f4", false, &[0, usize::MAX], &[], 1),
        );
        has(&err(&spec(p), Metric::L2), &["wide.npy", "no vectors"]);
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3), }";
        let p = write(&d, "neg.npy", &write::frame_header(dict, 1));
        has(
            &err(&spec(p), Metric::L2),
            &["neg.npy", "invalid shape (-2, 3)"],
        );
    }

    #[test]
    fn read_and_write_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        write_f32(&p, 2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let a = read_f32(&p).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!((a.rows(), a.cols()), (2, 3));
        assert_eq!(a.data, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let q = dir.path().join("b.npy");
        write_i32(&q, 1, 2, &[7, -1]).unwrap();
        assert_eq!(read_int(&q).unwrap().data, vec![7, -1]);
        assert!(read_f32(&q).unwrap_err().to_string().contains("dtype"));

        let r = dir.path().join("c.npy");
        let longs: Vec<u8> = [5i64, -(1 << 40), 9]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        write_raw(&r, "<i8", &[3], &longs).unwrap();
        let a = read_int(&r).unwrap();
        assert_eq!((a.shape.clone(), a.rows(), a.cols()), (vec![3], 3, 1));
        assert_eq!(a.data, [5, -(1 << 40), 9]);
    }

    #[test]
    fn read_refuses_what_it_cannot_use() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let shown = p.display().to_string();
        let message = |descr: &str, fortran: bool, shape: &[usize], data: &[u8]| {
            std::fs::write(&p, npy_bytes(descr, fortran, shape, data, 1)).unwrap();
            read_int(&p).unwrap_err().to_string()
        };
        assert_eq!(
            message("<f4", false, &[2], &[0; 8]),
            format!("{shown}: dtype <f4 where <i4 or <i8 was expected")
        );
        assert_eq!(
            message(">i8", false, &[2], &[0; 16]),
            format!("{shown}: dtype >i8 where <i4 or <i8 was expected")
        );
        assert_eq!(
            message("<i4", true, &[2, 2], &[0; 16]),
            format!("{shown}: Fortran order is not supported; save with np.ascontiguousarray")
        );
        assert_eq!(
            message("<i4", false, &[2, 2, 2], &[0; 32]),
            format!("{shown}: expected a 1-D or 2-D array, got shape [2, 2, 2]")
        );
        assert_eq!(
            message("<i8", false, &[3, 2], &[0; 47]),
            format!("{shown}: truncated: shape [3, 2] needs 48 data bytes, file has 47")
        );
        let missing = dir.path().join("missing.npy");
        let cause = std::fs::File::open(&missing).unwrap_err();
        assert_eq!(
            format!("{:#}", read_f32(&missing).unwrap_err()),
            format!("cannot read {}: {cause}", missing.display())
        );
    }
}
