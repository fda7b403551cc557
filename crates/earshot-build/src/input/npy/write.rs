//! Writing `.npy` files: format 1.0, C order, the header padded as numpy pads it.

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::Path;

use super::header::MAGIC;

/// Writes a 2-D float32 array (`<f4`) of `rows` × `cols` values.
pub fn write_f32(path: &Path, rows: usize, cols: usize, data: &[f32]) -> io::Result<()> {
    debug_assert_eq!(rows * cols, data.len());
    write_raw(
        path,
        "<f4",
        &[rows, cols],
        &le_bytes(data, f32::to_le_bytes),
    )
}

/// Writes a 2-D int32 array (`<i4`) of `rows` × `cols` values.
pub fn write_i32(path: &Path, rows: usize, cols: usize, data: &[i32]) -> io::Result<()> {
    debug_assert_eq!(rows * cols, data.len());
    write_raw(
        path,
        "<i4",
        &[rows, cols],
        &le_bytes(data, i32::to_le_bytes),
    )
}

/// Writes an array of any dtype `descr` (e.g. `<f8`) from its raw payload: for files that
/// readers must refuse as well as those they accept.
pub fn write_raw(path: &Path, descr: &str, shape: &[usize], payload: &[u8]) -> io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(&array_header(descr, false, shape, 1))?;
    file.write_all(payload)
}

/// `data` as little-endian bytes: the memory itself on little-endian targets.
fn le_bytes<T: bytemuck::Pod, const N: usize>(
    data: &[T],
    to_le: fn(T) -> [u8; N],
) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(data))
    } else {
        Cow::Owned(data.iter().flat_map(|&x| to_le(x)).collect())
    }
}

/// Everything before the data of a plain array, in format version `major`.
pub(crate) fn array_header(
    descr: &str,
    fortran_order: bool,
    shape: &[usize],
    major: u8,
) -> Vec<u8> {
    let shape = match shape {
        [n] => format!("({n},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", dims.join(", "))
        }
    };
    let order = if fortran_order { "True" } else { "False" };
    frame_header(
        &format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}"),
        major,
    )
}

/// Magic, version `major`.0, header length and `dict` padded with spaces and a final
/// newline so the data starts on a 64-byte boundary, as numpy writes it.
pub(crate) fn frame_header(dict: &str, major: u8) -> Vec<u8> {
    let preamble = if major == 1 { 10 } else { 12 };
    let mut header = dict.as_bytes().to_vec();
    while !(preamble + header.len() + 1).is_multiple_of(64) {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut out = MAGIC.to_vec();
    out.extend([major, 0]);
    if major == 1 {
        let len = u16::try_from(header.len()).expect("a format 1.0 header fits in 65535 bytes");
        out.extend(len.to_le_bytes());
    } else {
        out.extend((header.len() as u32).to_le_bytes());
    }
    out.extend(header);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_numpy_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        write_f32(&p, 2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        // Preamble, dict, space padding, a newline ending the header at byte 127, data.
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        assert_eq!(&bytes[..10], b"\x93NUMPY\x01\x00\x76\x00");
        assert_eq!(&bytes[10..10 + dict.len()], dict.as_bytes());
        assert!(bytes[10 + dict.len()..127].iter().all(|&b| b == b' '));
        assert_eq!(bytes[127], b'\n');
        assert_eq!(bytes.len(), 128 + 24);
        assert_eq!(&bytes[128..132], 1f32.to_le_bytes());

        write_raw(&p, "<f8", &[5], &[0; 40]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert!(String::from_utf8_lossy(&bytes[10..128])
            .starts_with("{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }"));
        assert_eq!(bytes.len(), 128 + 40);
    }

    #[test]
    fn every_version_aligns_the_data() {
        for major in [1u8, 2, 3] {
            for shape in [&[1usize][..], &[10, 20], &[123_456_789, 987_654_321]] {
                let h = array_header("<i8", true, shape, major);
                assert_eq!(h.len() % 64, 0);
                assert_eq!(h[6], major);
                assert_eq!(*h.last().unwrap(), b'\n');
            }
        }
    }
}
