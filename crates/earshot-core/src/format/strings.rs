//! A string table: the strings laid end to end, their offsets, and an open-addressing hash
//! table from string to row, all three read in place from the mapping (no parsing at open).
//!
//! Opening proves every row is a UTF-8 string inside the bytes (one pass over the offsets and
//! the bytes, with either `Verify`), so reading a row on the request path cannot fail and
//! copies nothing, and a damaged row is refused at open, naming its file.

use super::array_file::{self, ArrayFile, Verify};
use super::FormatError;
use std::path::Path;

const EMPTY: u32 = u32::MAX;

fn hash(s: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s)
}

/// The three arrays of a table, built in memory by the builder.
pub struct StringTableData {
    /// Row `i` is `bytes[offsets[i]..offsets[i + 1]]`; `count + 1` entries.
    pub offsets: Vec<u64>,
    /// The strings end to end.
    pub bytes: Vec<u8>,
    /// Hash slots: a row, or `u32::MAX` for an empty slot.
    pub slots: Vec<u32>,
}

impl StringTableData {
    /// Lays out `strings` (which must be distinct) with a table at most half full.
    pub fn build<S: AsRef<str>>(strings: &[S]) -> Self {
        let mut offsets = Vec::with_capacity(strings.len() + 1);
        let mut bytes = Vec::new();
        offsets.push(0);
        for s in strings {
            bytes.extend_from_slice(s.as_ref().as_bytes());
            offsets.push(bytes.len() as u64);
        }
        let cap = (strings.len() * 2).next_power_of_two().max(2);
        let mut slots = vec![EMPTY; cap];
        for (row, s) in strings.iter().enumerate() {
            let mut i = hash(s.as_ref().as_bytes()) as usize & (cap - 1);
            while slots[i] != EMPTY {
                i = (i + 1) & (cap - 1);
            }
            slots[i] = row as u32;
        }
        Self {
            offsets,
            bytes,
            slots,
        }
    }

    /// Writes `<stem>_offsets.bin`, `<stem>_bytes.bin`, `<stem>_hash.bin`; returns (name, checksum) pairs.
    pub fn write(&self, dir: &Path, stem: &str) -> std::io::Result<Vec<(String, u64)>> {
        let names = file_names(stem);
        Ok(vec![
            (
                names[0].clone(),
                array_file::write(&dir.join(&names[0]), &self.offsets)?,
            ),
            (
                names[1].clone(),
                array_file::write(&dir.join(&names[1]), &self.bytes)?,
            ),
            (
                names[2].clone(),
                array_file::write(&dir.join(&names[2]), &self.slots)?,
            ),
        ])
    }
}

/// The offsets, bytes and hash file names of the table `stem`.
pub fn file_names(stem: &str) -> [String; 3] {
    [
        format!("{stem}_offsets.bin"),
        format!("{stem}_bytes.bin"),
        format!("{stem}_hash.bin"),
    ]
}

/// A mapped string table.
pub struct StringTable {
    offsets: ArrayFile,
    bytes: ArrayFile,
    slots: ArrayFile,
}

impl StringTable {
    /// Maps the table `stem` of `count` strings in `dir` and proves every row readable.
    pub fn open(dir: &Path, stem: &str, count: usize, verify: Verify) -> Result<Self, FormatError> {
        let [o, b, h] = file_names(stem);
        let offsets = ArrayFile::open::<u64>(&dir.join(&o), verify)?;
        let bytes = ArrayFile::open::<u8>(&dir.join(&b), verify)?;
        let slots = ArrayFile::open::<u32>(&dir.join(&h), verify)?;
        let bad = |path: &Path, problem: &str| FormatError::File {
            path: path.to_path_buf(),
            problem: problem.to_string(),
        };
        if offsets.len() != count + 1 {
            return Err(bad(
                offsets.path(),
                "offset count does not match the manifest",
            ));
        }
        let cap = slots.len();
        if !cap.is_power_of_two() || cap < count {
            return Err(bad(
                slots.path(),
                "hash table size is not a power of two above the count",
            ));
        }
        let offs = offsets.as_slice::<u64>();
        if offs.last().copied() != Some(bytes.len() as u64) || offs.first() != Some(&0) {
            return Err(bad(offsets.path(), "offsets do not span the string bytes"));
        }
        check_rows(&offsets, &bytes)?;
        Ok(Self {
            offsets,
            bytes,
            slots,
        })
    }

    /// Strings in the table.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }
    /// True when the table holds no string.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The string at `row`, straight from the mapping; "" past the last row (rows come from
    /// this collection, so that is the caller's mistake, not damage).
    pub fn get(&self, row: u32) -> &str {
        let Some(bytes) = self.raw(row) else {
            return "";
        };
        // Cannot fail: `open` proved every row UTF-8, and published files never change
        // (see the mmap contract in `ArrayFile::open`).
        std::str::from_utf8(bytes).unwrap_or_else(|e| {
            panic!(
                "{}: row {row} is no longer UTF-8 ({e}): the file was modified while mapped",
                self.bytes.path().display()
            )
        })
    }

    /// Starts loading `row`'s offsets (the first of the two dependent loads of [`get`]).
    ///
    /// [`get`]: Self::get
    pub fn prefetch_offsets(&self, row: u32) {
        crate::search::prefetch_range(self.offsets.as_slice::<u64>(), row as usize, 2);
    }

    /// Starts loading `row`'s bytes (reads its offsets: prefetch those first).
    pub fn prefetch_bytes(&self, row: u32) {
        if let Some(b) = self.raw(row) {
            crate::search::prefetch_range(b, 0, b.len().max(1));
        }
    }

    /// The bytes at `row` (not checked to be UTF-8).
    fn raw(&self, row: u32) -> Option<&[u8]> {
        let offs = self.offsets.as_slice::<u64>();
        let row = row as usize;
        let (&a, &b) = (offs.get(row)?, offs.get(row + 1)?);
        self.bytes.as_slice::<u8>().get(a as usize..b as usize)
    }

    /// The row holding `s`, if any.
    pub fn find(&self, s: &str) -> Option<u32> {
        let slots = self.slots.as_slice::<u32>();
        let mask = slots.len() - 1;
        let mut i = hash(s.as_bytes()) as usize & mask;
        // Bounded probe: a damaged table cannot loop forever.
        for _ in 0..slots.len() {
            let row = slots[i];
            if row == EMPTY {
                return None;
            }
            // Bytes equal to a &str are valid UTF-8: no need to validate each probed slot.
            if self.raw(row) == Some(s.as_bytes()) {
                return Some(row);
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// The offsets, bytes and hash files.
    pub fn files(&self) -> [&ArrayFile; 3] {
        [&self.offsets, &self.bytes, &self.slots]
    }
}

/// Proves every row a UTF-8 string inside the bytes, given offsets that start at 0 and end
/// at the byte count: the offsets never decrease, the bytes are UTF-8, and every offset
/// falls on a character boundary. Each error names the damaged file and row.
fn check_rows(offsets: &ArrayFile, bytes: &ArrayFile) -> Result<(), FormatError> {
    let offs = offsets.as_slice::<u64>();
    if let Some(row) = offs.windows(2).position(|w| w[0] > w[1]) {
        return Err(FormatError::file(
            offsets.path(),
            format!("row {row} ends before it starts: the offsets are corrupt"),
        ));
    }
    let text = std::str::from_utf8(bytes.as_slice::<u8>()).map_err(|e| {
        let at = e.valid_up_to() as u64;
        let row = offs.partition_point(|&o| o <= at).saturating_sub(1);
        FormatError::file(
            bytes.path(),
            format!("row {row} is not UTF-8 (byte {at}): the file is corrupt"),
        )
    })?;
    // Offsets are at most `text.len()` here (ascending up to the last, which equals it).
    if let Some(row) = offs
        .iter()
        .position(|&o| !text.is_char_boundary(o as usize))
    {
        return Err(FormatError::file(
            offsets.path(),
            format!("row {row} starts inside a UTF-8 character: the offsets are corrupt"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRINGS: [&str; 5] = ["trk-1", "", "Sigur Rós", "日本語", "trk-2"];

    fn open(dir: &Path, verify: Verify) -> Result<StringTable, FormatError> {
        StringTable::open(dir, "ids", STRINGS.len(), verify)
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let written = StringTableData::build(&STRINGS)
            .write(dir.path(), "ids")
            .unwrap();
        assert_eq!(
            written.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["ids_offsets.bin", "ids_bytes.bin", "ids_hash.bin"]
        );
        for verify in [Verify::Lazy, Verify::Full] {
            let t = open(dir.path(), verify).unwrap();
            assert_eq!(t.len(), STRINGS.len());
            for (row, s) in STRINGS.iter().enumerate() {
                assert_eq!(t.get(row as u32), *s);
                assert_eq!(t.find(s), Some(row as u32));
            }
            assert_eq!(t.find("trk-3"), None);
            assert_eq!(t.get(STRINGS.len() as u32), "");
            for (f, (name, sum)) in t.files().iter().zip(&written) {
                assert!(f.path().ends_with(name));
                assert_eq!(f.checksum(), *sum);
            }
        }
        let e = StringTable::open(dir.path(), "ids", 4, Verify::Lazy)
            .err()
            .unwrap();
        assert!(e.to_string().contains("ids_offsets.bin"), "{e}");
    }

    #[test]
    fn empty_table() {
        let dir = tempfile::tempdir().unwrap();
        StringTableData::build::<&str>(&[])
            .write(dir.path(), "creators")
            .unwrap();
        let t = StringTable::open(dir.path(), "creators", 0, Verify::Full).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.find(""), None);
    }

    /// Writes a table whose checksums are right but whose rows are damaged by `damage`, and
    /// checks both opens refuse it naming `file` and saying `words`.
    fn assert_refused(damage: impl FnOnce(&mut StringTableData), file: &str, words: &str) {
        let dir = tempfile::tempdir().unwrap();
        let mut data = StringTableData::build(&STRINGS);
        damage(&mut data);
        data.write(dir.path(), "ids").unwrap();
        for verify in [Verify::Lazy, Verify::Full] {
            let e = open(dir.path(), verify).err().unwrap().to_string();
            assert!(e.contains(file) && e.contains(words), "{verify:?}: {e}");
        }
    }

    #[test]
    fn damaged_rows_are_refused_at_open() {
        // "Sigur Rós" is row 2: bytes 5..15, with 'ó' at bytes 12..14.
        assert_refused(
            |d| d.bytes[12] = 0xFF,
            "ids_bytes.bin",
            "row 2 is not UTF-8",
        );
        assert_refused(
            |d| d.offsets.swap(1, 3),
            "ids_offsets.bin",
            "ends before it starts",
        );
        assert_refused(
            |d| d.offsets[3] = 13,
            "ids_offsets.bin",
            "row 3 starts inside a UTF-8 character",
        );
        assert_refused(
            |d| *d.offsets.last_mut().unwrap() += 1,
            "ids_offsets.bin",
            "do not span",
        );
    }
}
