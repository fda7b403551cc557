//! A string table: the strings laid end to end, their offsets, and an open-addressing hash
//! table from string to row, all three read in place from the mapping (no parsing at open).

use super::array_file::{self, ArrayFile, Verify};
use super::FormatError;
use std::path::Path;

const EMPTY: u32 = u32::MAX;

fn hash(s: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s)
}

/// The three arrays of a table, built in memory by the builder.
pub struct StringTableData {
    pub offsets: Vec<u64>,
    pub bytes: Vec<u8>,
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
        Ok(Self {
            offsets,
            bytes,
            slots,
        })
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The string at `row`; empty if out of range or damaged (lazy opens skip the checksum).
    pub fn get(&self, row: u32) -> &str {
        self.raw(row)
            .and_then(|s| std::str::from_utf8(s).ok())
            .unwrap_or("")
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

    pub fn files(&self) -> [&ArrayFile; 3] {
        [&self.offsets, &self.bytes, &self.slots]
    }
}
