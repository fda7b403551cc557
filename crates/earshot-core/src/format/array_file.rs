//! One typed array per file: a 64-byte header, then the little-endian payload.
//!
//! The header carries magic, format version, a byte-order mark, the element type, the
//! element count, the payload length and an xxh3-64 checksum of the payload, so a file
//! can be validated on its own (`earshot verify`) and a truncated, bit-flipped or
//! foreign file is refused by name before any of its payload is touched.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use bincode::{Decode, Encode};
use memmap2::Mmap;

use super::FormatError;

/// The first eight bytes of every array file.
pub const MAGIC: [u8; 8] = *b"EARSHOT\x01";
/// The format version this earshot writes and reads (array headers and the manifest).
pub const FORMAT_VERSION: u32 = 1;
/// Header bytes before the payload.
pub const HEADER_LEN: usize = 64;
/// Written as a little-endian u32; reads back differently on a big-endian writer's file.
const BYTE_ORDER_MARK: u32 = 0x0102_0304;

/// The element types the format stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // The variants are the Rust types they name.
pub enum ElemType {
    U8 = 1,
    U32 = 2,
    U64 = 3,
    F32 = 4,
    I8 = 5,
}

impl ElemType {
    fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::U8,
            2 => Self::U32,
            3 => Self::U64,
            4 => Self::F32,
            5 => Self::I8,
            _ => return None,
        })
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::U32 | Self::F32 => 4,
            Self::U64 => 8,
        }
    }
}

/// Types that can be stored in an array file.
pub trait Element: bytemuck::Pod {
    /// The header's tag for this type.
    const TYPE: ElemType;
}
impl Element for u8 {
    const TYPE: ElemType = ElemType::U8;
}
impl Element for i8 {
    const TYPE: ElemType = ElemType::I8;
}
impl Element for u32 {
    const TYPE: ElemType = ElemType::U32;
}
impl Element for u64 {
    const TYPE: ElemType = ElemType::U64;
}
impl Element for f32 {
    const TYPE: ElemType = ElemType::F32;
}

#[derive(Encode, Decode, Debug)]
struct Header {
    magic: [u8; 8],
    version: u32,
    byte_order: u32,
    elem_type: u32,
    elem_size: u32,
    count: u64,
    payload_len: u64,
    checksum: u64,
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
}

/// The payload checksum stored in headers and the manifest: xxh3-64.
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Writes `data` to `path` (creating it), fsyncs it, and returns the payload checksum.
pub fn write<T: Element>(path: &Path, data: &[T]) -> std::io::Result<u64> {
    let payload: &[u8] = bytemuck::cast_slice(data);
    let sum = checksum(payload);
    let header = Header {
        magic: MAGIC,
        version: FORMAT_VERSION,
        byte_order: BYTE_ORDER_MARK,
        elem_type: T::TYPE as u32,
        elem_size: T::TYPE.size() as u32,
        count: data.len() as u64,
        payload_len: payload.len() as u64,
        checksum: sum,
    };
    let mut head = [0u8; HEADER_LEN];
    bincode::encode_into_slice(&header, &mut head, bincode_config())
        .expect("header fits in 64 bytes");
    // The header goes out with the payload's first 2 MiB - 64 bytes, so that every write
    // starts on a 2 MiB boundary: the page cache then holds the file as 2 MiB folios, which
    // `open` maps with huge pages (a lone 64-byte write would leave the first 2 MiB in small
    // ones).
    let lead = payload.len().min(HUGE_PAGE - HEADER_LEN);
    let mut first = Vec::with_capacity(HEADER_LEN + lead);
    first.extend_from_slice(&head);
    first.extend_from_slice(&payload[..lead]);
    let mut file = File::create(path)?;
    file.write_all(&first)?;
    file.write_all(&payload[lead..])?;
    file.sync_all()?;
    Ok(sum)
}

/// How much checking to do when opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Header and length checks only: opens in microseconds, touches no payload page.
    /// (A string table still reads its offsets and bytes once: see `strings`.)
    Lazy,
    /// Also checksum the payload (reads, and so warms, every page).
    Full,
}

/// Files at least this long are mapped with `MADV_HUGEPAGE` (see `ArrayFile::open`).
const HUGE_PAGES_FROM: u64 = 8 << 20;
/// The huge page size of x86-64 and of arm64 with 4 KiB pages.
const HUGE_PAGE: usize = 2 << 20;

/// A memory-mapped array file whose header and length have been checked.
pub struct ArrayFile {
    path: PathBuf,
    map: Mmap,
    count: usize,
    checksum: u64,
}

impl ArrayFile {
    /// Maps `path` and checks its header and length for elements of type `T` (and with
    /// `Verify::Full` its checksum); every refusal names the file.
    pub fn open<T: Element>(path: &Path, verify: Verify) -> Result<Self, FormatError> {
        let bad = |problem: String| FormatError::File {
            path: path.to_path_buf(),
            problem,
        };
        let file = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| bad(format!("cannot stat: {e}")))?
            .len();
        if len < HEADER_LEN as u64 {
            return Err(bad(format!(
                "truncated: {len} bytes, shorter than the {HEADER_LEN}-byte header"
            )));
        }
        // SAFETY: a mapping is only as stable as the file under it: if another process
        // truncates a mapped file, touching the lost pages raises SIGBUS, and if it rewrites
        // one in place, bytes change under the `&[T]` slices handed out (which Rust assumes
        // never change). earshot's writers do neither: build, derive and version switches
        // write every file into a new temporary directory and rename that directory (or a
        // symlink to it) into place, so a published file is never modified, only unlinked,
        // which leaves the mapped inode intact. Operators must do likewise: never edit,
        // truncate or copy over the files of a collection a server may have open; put a new
        // collection beside it and rename it in (or build a new version). The length checks
        // below only catch a file that was already short when it was opened.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| bad(format!("cannot mmap: {e}")))?;
        // Large arrays (the vectors and the graph) are read at random by every walk: with
        // 2 MiB pages their translations fit the TLB. Pages the kernel reads in for this
        // mapping from now on come as 2 MiB folios mapped whole (pages already cached
        // stay as they are; `write` makes fresh files cache that way). yes-tracks, one
        // thread, ef 32: 8,600–9,300 → 11,300–11,900 queries/s (BENCHMARKS.md §6, "Huge
        // pages"). Only a hint: refused or unsupported is fine.
        #[cfg(target_os = "linux")]
        if len >= HUGE_PAGES_FROM {
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        let (header, _): (Header, usize) =
            bincode::decode_from_slice(&map[..HEADER_LEN], bincode_config())
                .map_err(|e| bad(format!("unreadable header: {e}")))?;
        if header.magic != MAGIC {
            return Err(bad("not an earshot index file (bad magic)".into()));
        }
        if header.byte_order != BYTE_ORDER_MARK {
            return Err(bad(format!(
                "wrong byte order mark {:#010x}: written on a machine of the other endianness",
                header.byte_order
            )));
        }
        if header.version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} but this earshot reads version {FORMAT_VERSION}: rebuild the index with this version",
                header.version
            )));
        }
        let elem = ElemType::from_code(header.elem_type)
            .ok_or_else(|| bad(format!("unknown element type {}", header.elem_type)))?;
        if elem != T::TYPE || header.elem_size as usize != elem.size() {
            return Err(bad(format!(
                "holds {elem:?} elements where {:?} were expected",
                T::TYPE
            )));
        }
        let expected = header
            .count
            .checked_mul(elem.size() as u64)
            .filter(|&p| p == header.payload_len)
            .ok_or_else(|| bad("header count and payload length disagree".into()))?;
        let actual = len - HEADER_LEN as u64;
        if actual != expected {
            return Err(bad(format!(
                "{} payload: header says {expected} bytes, file has {actual}",
                if actual < expected {
                    "truncated"
                } else {
                    "oversized"
                }
            )));
        }
        let count = usize::try_from(header.count).map_err(|_| bad("too large".into()))?;
        let out = Self {
            path: path.to_path_buf(),
            map,
            count,
            checksum: header.checksum,
        };
        if verify == Verify::Full {
            out.verify_checksum()?;
        }
        Ok(out)
    }

    /// Checksums the payload (reading every page); a mismatch names the file.
    pub fn verify_checksum(&self) -> Result<(), FormatError> {
        let actual = checksum(self.payload());
        if actual != self.checksum {
            return Err(FormatError::File {
                path: self.path.clone(),
                problem: format!(
                    "checksum mismatch (stored {:016x}, computed {actual:016x}): the file is corrupt",
                    self.checksum
                ),
            });
        }
        Ok(())
    }

    fn payload(&self) -> &[u8] {
        &self.map[HEADER_LEN..]
    }

    /// The payload as a typed slice, straight from the mapping; `T` is the type the file
    /// was opened as.
    pub fn as_slice<T: Element>(&self) -> &[T] {
        // Length and type were checked at open; the mapping is page-aligned and the
        // payload starts at byte 64, so the cast cannot fail.
        bytemuck::cast_slice(self.payload())
    }

    /// Elements in the payload.
    pub fn len(&self) -> usize {
        self.count
    }
    /// True when the payload holds no element.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// The payload checksum recorded in the header (not recomputed).
    pub fn checksum(&self) -> u64 {
        self.checksum
    }
    /// The path the file was opened from (named by every error about it).
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Bytes of the mapping (header included).
    pub fn mapped_bytes(&self) -> usize {
        self.map.len()
    }
    /// Asks the kernel to read the whole file ahead (pages in without checksumming).
    pub fn advise_willneed(&self) {
        #[cfg(unix)]
        let _ = self.map.advise(memmap2::Advice::WillNeed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        let data: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
        write(&p, &data).unwrap();
        let f = ArrayFile::open::<f32>(&p, Verify::Full).unwrap();
        assert_eq!(f.as_slice::<f32>(), &data[..]);
        // wrong type
        let e = ArrayFile::open::<u32>(&p, Verify::Lazy).err().unwrap();
        assert!(e.to_string().contains("a.bin"), "{e}");
        // bit flip in the payload: lazy opens, full refuses
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[HEADER_LEN + 17] ^= 0x10;
        std::fs::write(&p, &bytes).unwrap();
        assert!(ArrayFile::open::<f32>(&p, Verify::Lazy).is_ok());
        let e = ArrayFile::open::<f32>(&p, Verify::Full).err().unwrap();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
        let lazy = ArrayFile::open::<f32>(&p, Verify::Lazy).unwrap();
        let e = lazy.verify_checksum().err().unwrap();
        assert!(e.to_string().contains("a.bin: checksum mismatch"), "{e}");
        // truncation
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let e = ArrayFile::open::<f32>(&p, Verify::Lazy).err().unwrap();
        assert!(e.to_string().contains("truncated"), "{e}");
        std::fs::write(&p, &bytes[..10]).unwrap();
        let e = ArrayFile::open::<f32>(&p, Verify::Lazy).err().unwrap();
        assert!(e.to_string().contains("header"), "{e}");
        // big-endian byte-order mark
        let mut be = bytes.clone();
        be[12..16].copy_from_slice(&BYTE_ORDER_MARK.to_be_bytes());
        std::fs::write(&p, &be).unwrap();
        let e = ArrayFile::open::<f32>(&p, Verify::Lazy).err().unwrap();
        assert!(e.to_string().contains("byte order"), "{e}");
        // other version
        let mut v = bytes.clone();
        v[8..12].copy_from_slice(&99u32.to_le_bytes());
        std::fs::write(&p, &v).unwrap();
        let e = ArrayFile::open::<f32>(&p, Verify::Lazy).err().unwrap();
        assert!(e.to_string().contains("format version 99"), "{e}");
    }

    /// Writes `data`, opens it with full checks and compares everything the header records.
    fn round_trip<T: Element + PartialEq + std::fmt::Debug>(data: &[T]) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.bin");
        let sum = write(&p, data).unwrap();
        let f = ArrayFile::open::<T>(&p, Verify::Full).unwrap();
        assert_eq!(f.as_slice::<T>(), data);
        assert_eq!(f.len(), data.len());
        assert_eq!(f.checksum(), sum);
        assert_eq!(f.checksum(), checksum(bytemuck::cast_slice(data)));
        assert_eq!(f.path(), p);
        let size = T::TYPE.size() * data.len();
        assert_eq!(f.mapped_bytes(), HEADER_LEN + size);
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            f.mapped_bytes() as u64
        );
    }

    #[test]
    fn every_element_type_round_trips() {
        round_trip::<u8>(&[0, 1, 255]);
        round_trip::<i8>(&[-127, 0, 127]);
        round_trip::<u32>(&[0, 7, u32::MAX]);
        round_trip::<u64>(&[0, 1 << 40, u64::MAX]);
        round_trip::<f32>(&[0.0, -1.5, f32::MAX]);
    }

    #[test]
    fn empty_array() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.bin");
        write::<u32>(&p, &[]).unwrap();
        let f = ArrayFile::open::<u32>(&p, Verify::Full).unwrap();
        assert!(f.as_slice::<u32>().is_empty());
    }
}
