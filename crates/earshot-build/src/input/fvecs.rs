//! `.fvecs` vectors (the ANN-benchmarks format): each record is a little-endian i32
//! dimension followed by that many little-endian float32 values.

use std::io::BufReader;
use std::path::Path;

use super::{io_err, le_to_native, open, read_full, InputError, RawVectors};

/// Reads every record; all must have the dimension of the first.
pub(super) fn read(path: &Path) -> Result<RawVectors, InputError> {
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

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::super::test_support::*;
    use earshot_core::metric::Metric;

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
}
