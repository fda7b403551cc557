//! Minimal `.npy` reading and writing: 1-D and 2-D, little-endian f4 / i4 / i8, C order.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};

#[derive(Debug)]
pub struct Array<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl<T> Array<T> {
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }
    /// Elements per row (1 for a 1-D array).
    pub fn cols(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(1)
    }
}

/// Reads the header: returns (descr, fortran_order, shape, data offset).
pub fn parse_header(bytes: &[u8]) -> Result<(String, bool, Vec<usize>, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + len)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or(format!("header has no '{key}'"))?;
        Ok(header[at + key.len() + 2..]
            .trim_start()
            .trim_start_matches(':')
            .trim_start())
    };
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or("bad descr")?
        .to_string();
    let fortran = field("fortran_order")?.starts_with("True");
    let shape_text = field("shape")?;
    let shape_text = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("bad shape")?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape entry {s:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((descr, fortran, shape, start + len))
}

fn read_raw(path: &Path, want: &[&str], elem: usize) -> anyhow::Result<(Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (descr, fortran, shape, offset) =
        parse_header(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if !want.contains(&descr.as_str()) {
        bail!(
            "{}: dtype {descr} where {} was expected",
            path.display(),
            want.join(" or ")
        );
    }
    if fortran {
        bail!(
            "{}: Fortran order is not supported; save with np.ascontiguousarray",
            path.display()
        );
    }
    if shape.is_empty() || shape.len() > 2 {
        bail!(
            "{}: expected a 1-D or 2-D array, got shape {shape:?}",
            path.display()
        );
    }
    let n: usize = shape.iter().product();
    let need = n * elem;
    let payload = &bytes[offset..];
    if payload.len() < need {
        bail!(
            "{}: truncated: shape {shape:?} needs {need} data bytes, file has {}",
            path.display(),
            payload.len()
        );
    }
    Ok((shape, payload[..need].to_vec()))
}

pub fn read_f32(path: &Path) -> anyhow::Result<Array<f32>> {
    let (shape, raw) = read_raw(path, &["<f4"], 4)?;
    let data = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Array { shape, data })
}

/// Reads an integer array (i4 or i8) as i64.
pub fn read_int(path: &Path) -> anyhow::Result<Array<i64>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (descr, ..) =
        parse_header(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let elem = if descr == "<i8" { 8 } else { 4 };
    let (shape, raw) = read_raw(path, &["<i4", "<i8"], elem)?;
    let data = if elem == 8 {
        raw.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    } else {
        raw.chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
            .collect()
    };
    Ok(Array { shape, data })
}

/// Writes a 2-D float32 array.
pub fn write_f32(path: &Path, rows: usize, cols: usize, data: &[f32]) -> std::io::Result<()> {
    write_raw(path, "<f4", &[rows, cols], bytemuck::cast_slice(data))
}

/// Writes a 2-D int32 array.
pub fn write_i32(path: &Path, rows: usize, cols: usize, data: &[i32]) -> std::io::Result<()> {
    write_raw(path, "<i4", &[rows, cols], bytemuck::cast_slice(data))
}

fn write_raw(path: &Path, descr: &str, shape: &[usize], payload: &[u8]) -> std::io::Result<()> {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so the data starts on a 64-byte boundary, ending the header with '\n'.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    f.write_all(payload)?;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        write_f32(&p, 2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let a = read_f32(&p).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data[5], 6.0);
        let q = dir.path().join("b.npy");
        write_i32(&q, 1, 2, &[7, -1]).unwrap();
        assert_eq!(read_int(&q).unwrap().data, vec![7, -1]);
        assert!(read_f32(&q).unwrap_err().to_string().contains("dtype"));
    }
}
