//! The write log: every acknowledged write to a collection is one numbered segment object in
//! the object store (`URL/NAME/log/SEQ.seg`, docs/format.md "Write log"). The sequence number
//! is the order; a segment is created with create-if-absent, so two writers can never take the
//! same number and a batch is either wholly in the log or not at all.
//!
//! A segment is framed, checksummed bytes: a fixed 32-byte header, a JSON part (the items'
//! metadata, or the deleted IDs) and the upserted vectors as raw little-endian f32 — a batch
//! of 1,000 × 384-d items is 1.5 MB instead of ~4 MB of JSON numbers.

use serde::{Deserialize, Serialize};

/// First bytes of every segment; the last byte is the segment format version.
pub const MAGIC: [u8; 8] = *b"ESLOG\0\0\x01";
/// Bytes before the JSON part: magic, JSON length, vector bytes, xxh3-64 of the rest.
pub const HEADER_LEN: usize = 32;
/// Largest segment a reader accepts (a write batch is bounded far below this).
pub const MAX_SEGMENT_BYTES: u64 = 256 << 20;
/// Digits of the zero-padded sequence number in a segment's name, so that names sort as
/// numbers do.
const SEQ_DIGITS: usize = 20;

/// One write batch: its place in the log and what it does.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Its sequence number (1, 2, …); equal to the number in its object name.
    pub seq: u64,
    /// The collection it writes to.
    pub collection: String,
    /// When the writer acknowledged it, milliseconds since the Unix epoch (for lag metrics).
    pub written_at_ms: u64,
    /// What it writes.
    pub ops: Ops,
}

/// What a segment does: upsert a batch of items, or delete a batch of IDs.
#[derive(Debug, Clone, PartialEq)]
pub enum Ops {
    /// Add or replace these items (each vector `dim` long).
    Upsert {
        /// Vector dimension.
        dim: usize,
        /// The items, in the order sent.
        items: Vec<LogItem>,
    },
    /// Remove the items with these IDs (unknown IDs are no-ops).
    Delete {
        /// The IDs, in the order sent.
        ids: Vec<String>,
    },
}

/// An upserted item, as a build input row would give it. Vectors are stored as sent
/// (validated, not normalised): the reader prepares them as the collection's metric says.
#[derive(Debug, Clone, PartialEq)]
pub struct LogItem {
    /// Its ID (the key of the upsert).
    pub id: String,
    /// Its vector, as sent.
    pub vector: Vec<f32>,
    /// Its creator, if any.
    pub creator: Option<String>,
    /// Its popularity, if any.
    pub popularity: Option<f32>,
}

/// The JSON part of a segment.
#[derive(Serialize, Deserialize)]
struct Head {
    seq: u64,
    collection: String,
    written_at_ms: u64,
    #[serde(flatten)]
    op: HeadOp,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum HeadOp {
    /// Items' metadata in order; their vectors follow the JSON part, `dim` floats each.
    Upsert {
        dim: usize,
        items: Vec<HeadItem>,
    },
    Delete {
        ids: Vec<String>,
    },
}

#[derive(Serialize, Deserialize)]
struct HeadItem {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    creator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    popularity: Option<f32>,
}

/// A segment's object name under `URL/NAME/log/`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:0SEQ_DIGITS$}.seg")
}

/// The sequence number of a segment's object name, or None for any other name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&s| s > 0)
}

impl Segment {
    /// Number of items or IDs the segment writes.
    pub fn len(&self) -> usize {
        match &self.ops {
            Ops::Upsert { items, .. } => items.len(),
            Ops::Delete { ids } => ids.len(),
        }
    }

    /// Whether it writes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The segment's bytes (header, JSON part, vectors).
    pub fn encode(&self) -> Vec<u8> {
        let (op, vectors) = match &self.ops {
            Ops::Upsert { dim, items } => {
                let mut v = Vec::with_capacity(items.len() * dim * 4);
                for it in items {
                    debug_assert_eq!(it.vector.len(), *dim);
                    for x in &it.vector {
                        v.extend_from_slice(&x.to_le_bytes());
                    }
                }
                let items = items
                    .iter()
                    .map(|it| HeadItem {
                        id: it.id.clone(),
                        creator: it.creator.clone(),
                        popularity: it.popularity,
                    })
                    .collect();
                (HeadOp::Upsert { dim: *dim, items }, v)
            }
            Ops::Delete { ids } => (HeadOp::Delete { ids: ids.clone() }, Vec::new()),
        };
        let head = Head {
            seq: self.seq,
            collection: self.collection.clone(),
            written_at_ms: self.written_at_ms,
            op,
        };
        let json = serde_json::to_vec(&head).expect("a segment head serialises");
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(&json);
        hasher.update(&vectors);
        let mut out = Vec::with_capacity(HEADER_LEN + json.len() + vectors.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&(vectors.len() as u64).to_le_bytes());
        out.extend_from_slice(&hasher.digest().to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&vectors);
        out
    }

    /// Reads a segment, refusing anything that is not exactly the segment `expected_seq` of
    /// `collection`: wrong magic or version, lengths that disagree with the bytes, a checksum
    /// mismatch, non-finite vectors. The error says what is wrong, for a person to read.
    pub fn decode(bytes: &[u8], collection: &str, expected_seq: u64) -> Result<Segment, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!(
                "{} bytes is shorter than a segment header ({HEADER_LEN})",
                bytes.len()
            ));
        }
        if bytes[..8] != MAGIC {
            return Err(if bytes[..5] == MAGIC[..5] {
                format!(
                    "segment format version {} (this earshot reads version {})",
                    bytes[7], MAGIC[7]
                )
            } else {
                "not an earshot log segment (bad magic)".into()
            });
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let (json_len, vec_len, sum) = (word(8), word(16), word(24));
        let body = &bytes[HEADER_LEN..];
        if json_len.checked_add(vec_len) != Some(body.len() as u64) {
            return Err(format!(
                "header says {json_len} + {vec_len} bytes follow, the object has {}",
                body.len()
            ));
        }
        if xxhash_rust::xxh3::xxh3_64(body) != sum {
            return Err("checksum mismatch: the segment's bytes are damaged".into());
        }
        let (json, vectors) = body.split_at(json_len as usize);
        let head: Head =
            serde_json::from_slice(json).map_err(|e| format!("unreadable JSON part: {e}"))?;
        if head.seq != expected_seq {
            return Err(format!(
                "holds sequence number {} under the name of {expected_seq}",
                head.seq
            ));
        }
        if head.collection != collection {
            return Err(format!(
                "written to collection {:?}, found in the log of {collection:?}",
                head.collection
            ));
        }
        let ops = match head.op {
            HeadOp::Delete { ids } => {
                if vec_len != 0 {
                    return Err("a delete segment carries vector bytes".into());
                }
                Ops::Delete { ids }
            }
            HeadOp::Upsert { dim, items } => {
                if dim == 0 || items.len().checked_mul(dim * 4) != Some(vectors.len()) {
                    return Err(format!(
                        "{} items of dimension {dim} need {} vector bytes, the segment has {}",
                        items.len(),
                        items.len() * dim * 4,
                        vectors.len()
                    ));
                }
                let mut out = Vec::with_capacity(items.len());
                for (i, (it, raw)) in items
                    .into_iter()
                    .zip(vectors.chunks_exact(dim * 4))
                    .enumerate()
                {
                    let vector: Vec<f32> = raw
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    if vector.iter().any(|x| !x.is_finite()) {
                        return Err(format!("item {i} ({:?}) has a non-finite value", it.id));
                    }
                    out.push(LogItem {
                        id: it.id,
                        vector,
                        creator: it.creator,
                        popularity: it.popularity,
                    });
                }
                Ops::Upsert { dim, items: out }
            }
        };
        Ok(Segment {
            seq: head.seq,
            collection: head.collection,
            written_at_ms: head.written_at_ms,
            ops,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert() -> Segment {
        Segment {
            seq: 7,
            collection: "tracks".into(),
            written_at_ms: 1_700_000_000_000,
            ops: Ops::Upsert {
                dim: 3,
                items: vec![
                    LogItem {
                        id: "a".into(),
                        vector: vec![1.0, -2.5, 1e-30],
                        creator: Some("x".into()),
                        popularity: Some(3.0),
                    },
                    LogItem {
                        id: "b\u{e9}".into(),
                        vector: vec![0.1, 0.2, f32::MAX],
                        creator: None,
                        popularity: None,
                    },
                ],
            },
        }
    }

    #[test]
    fn segments_round_trip_bit_for_bit() {
        let s = upsert();
        assert_eq!(Segment::decode(&s.encode(), "tracks", 7).unwrap(), s);
        let d = Segment {
            seq: 8,
            collection: "tracks".into(),
            written_at_ms: 5,
            ops: Ops::Delete {
                ids: vec!["a".into(), "zz".into()],
            },
        };
        assert_eq!(Segment::decode(&d.encode(), "tracks", 8).unwrap(), d);
    }

    #[test]
    fn damaged_or_misplaced_segments_are_refused_with_the_reason() {
        let bytes = upsert().encode();
        let err = |b: &[u8], c: &str, seq: u64| Segment::decode(b, c, seq).unwrap_err();
        assert!(err(&bytes, "tracks", 8).contains("sequence number 7 under the name of 8"));
        assert!(err(&bytes, "creators", 7).contains("collection"));
        assert!(err(&bytes[..bytes.len() - 1], "tracks", 7).contains("the object has"));
        assert!(err(&bytes[..10], "tracks", 7).contains("shorter"));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(err(&flipped, "tracks", 7).contains("checksum"));
        let mut v2 = bytes.clone();
        v2[7] = 2;
        assert!(err(&v2, "tracks", 7).contains("format version 2"));
        assert!(err(b"PK\x03\x04 not a segment at all, just bytes", "t", 1).contains("magic"));
    }

    #[test]
    fn names_sort_as_numbers_and_nothing_else_parses() {
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert!(segment_name(9) < segment_name(10));
        for bad in [
            "42.seg",
            "00000000000000000000.seg",
            "0000000000000000004x.seg",
            "x",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }
}
