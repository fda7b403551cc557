//! `SimilarStream`'s answer message, written by hand so that the server can send an answer's
//! `Results` encoded straight from the mapped collection: building the prost `Results` first
//! (two `String`s and a struct per item, then a second pass to encode and a third to free
//! them) cost about 3 % of a server's CPU under one stream of small `similar` queries
//! (BENCHMARKS.md §6, "Cheaper recall checks, longer rounds, answers written in place").
//! On the wire nothing changes: `earshot.v1.SimilarAnswer` as `proto/` defines it, and a
//! client decodes `Encoded` bytes as `Ok` (build.rs maps the message to this type).

use earshot_server::api::ResultItem;
use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{self, encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::{DecodeError, Message};

use crate::pb;

/// One answer of `SimilarStream`.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct SimilarAnswer {
    pub outcome: Option<Outcome>,
}

/// `SimilarAnswer.outcome`.
#[derive(Clone, PartialEq, Debug)]
pub enum Outcome {
    /// The answer (field 1).
    Ok(pb::Results),
    /// The message's error in place of its answer (field 2).
    Error(pb::BatchError),
    /// The answer as the encoded bytes of a `Results` (field 1 on the wire); only ever sent,
    /// never decoded: a receiver gets `Ok`.
    Encoded(Bytes),
}

const OK: u32 = 1;
const ERROR: u32 = 2;

impl Message for SimilarAnswer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match &self.outcome {
            Some(Outcome::Ok(r)) => encoding::message::encode(OK, r, buf),
            Some(Outcome::Error(e)) => encoding::message::encode(ERROR, e, buf),
            Some(Outcome::Encoded(b)) => {
                encode_key(OK, WireType::LengthDelimited, buf);
                encode_varint(b.len() as u64, buf);
                buf.put_slice(b);
            }
            None => {}
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: encoding::DecodeContext,
    ) -> Result<(), DecodeError> {
        // As prost merges a oneof: a repeated field merges into the variant already there.
        match tag {
            OK => {
                let mut r = match self.outcome.take() {
                    Some(Outcome::Ok(r)) => r,
                    _ => pb::Results::default(),
                };
                encoding::message::merge(wire_type, &mut r, buf, ctx)?;
                self.outcome = Some(Outcome::Ok(r));
            }
            ERROR => {
                let mut e = match self.outcome.take() {
                    Some(Outcome::Error(e)) => e,
                    _ => pb::BatchError::default(),
                };
                encoding::message::merge(wire_type, &mut e, buf, ctx)?;
                self.outcome = Some(Outcome::Error(e));
            }
            _ => encoding::skip_field(wire_type, tag, buf, ctx)?,
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        match &self.outcome {
            Some(Outcome::Ok(r)) => encoding::message::encoded_len(OK, r),
            Some(Outcome::Error(e)) => encoding::message::encoded_len(ERROR, e),
            Some(Outcome::Encoded(b)) => key_len(OK) + encoded_len_varint(b.len() as u64) + b.len(),
            None => 0,
        }
    }

    fn clear(&mut self) {
        self.outcome = None;
    }
}

/// A `Results` holding only `items`, encoded as prost encodes the message `convert`
/// builds from them (fields in order, proto3 defaults omitted, optionals present when set);
/// `None` when an item has an explanation (those go through prost). One pass: each item's
/// strings are read from the mapping once.
pub fn encode_results<'a>(items: impl Iterator<Item = ResultItem<'a>>) -> Option<Bytes> {
    // Room for 10 items of a typical size; the buffer grows past that.
    let mut buf = BytesMut::with_capacity(10 * 64);
    for it in items {
        if it.explain.is_some() {
            return None;
        }
        encode_key(1, WireType::LengthDelimited, &mut buf);
        encode_varint(item_len(&it) as u64, &mut buf);
        if !it.id.is_empty() {
            string(1, it.id, &mut buf);
        }
        if it.score != 0.0 {
            encoding::float::encode(2, &it.score, &mut buf);
        }
        if let Some(c) = it.creator {
            string(3, c, &mut buf);
        }
        if let Some(p) = it.popularity {
            encoding::float::encode(4, &p, &mut buf);
        }
        if let Some(p) = it.creator_popularity.flatten() {
            encoding::float::encode(5, &p, &mut buf);
        }
    }
    Some(buf.freeze())
}

/// A `ResultItem`'s encoded length (without an explanation).
fn item_len(it: &ResultItem<'_>) -> usize {
    let s = |tag: u32, v: &str| key_len(tag) + encoded_len_varint(v.len() as u64) + v.len();
    let f = |tag: u32| key_len(tag) + 4;
    (if it.id.is_empty() { 0 } else { s(1, it.id) })
        + (if it.score != 0.0 { f(2) } else { 0 })
        + it.creator.map_or(0, |c| s(3, c))
        + it.popularity.map_or(0, |_| f(4))
        + it.creator_popularity.flatten().map_or(0, |_| f(5))
}

fn string(tag: u32, v: &str, buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(v.len() as u64, buf);
    buf.put_slice(v.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::result_item;

    /// Items covering every field's presence and absence, -0.0, an empty and a long ID.
    fn items(long: &str) -> Vec<ResultItem<'_>> {
        let item = |id, score: f32, creator| ResultItem {
            id,
            score,
            creator,
            popularity: (score > 0.5).then_some(score * 3.0),
            creator_popularity: (score > 0.7).then_some((score < 0.9).then_some(7.5)),
            explain: None,
        };
        vec![
            item("trk-1", 0.99, Some("Sigur Rós")),
            item("", 0.0, None),
            item(long, -0.0, Some("")),
            item("日本語", 0.8, Some("a")),
            item("trk-2", 0.3, None),
        ]
    }

    #[test]
    fn hand_encoded_results_are_the_bytes_prost_writes() {
        let long = "x".repeat(300); // a two-byte length
        for n in 0..=items(&long).len() {
            let all = items(&long);
            fn copy<'a>(i: &ResultItem<'a>) -> ResultItem<'a> {
                ResultItem {
                    id: i.id,
                    score: i.score,
                    creator: i.creator,
                    popularity: i.popularity,
                    creator_popularity: i.creator_popularity,
                    explain: None,
                }
            }
            let encoded = encode_results(all[..n].iter().map(copy)).unwrap();
            let prost = pb::Results {
                results: items(&long).into_iter().take(n).map(result_item).collect(),
                ..Default::default()
            };
            assert_eq!(&encoded[..], &prost.encode_to_vec()[..], "{n} items");
            // As a stream answer: the bytes of the prost `Ok`, decoded as `Ok`.
            let sent = SimilarAnswer {
                outcome: Some(Outcome::Encoded(encoded)),
            };
            let built = SimilarAnswer {
                outcome: Some(Outcome::Ok(prost)),
            };
            assert_eq!(sent.encode_to_vec(), built.encode_to_vec());
            assert_eq!(sent.encoded_len(), built.encoded_len());
            let got = SimilarAnswer::decode(&sent.encode_to_vec()[..]).unwrap();
            assert_eq!(got, built);
        }
    }

    #[test]
    fn errors_and_empty_answers_round_trip() {
        let e = SimilarAnswer {
            outcome: Some(Outcome::Error(pb::BatchError {
                code: "unknown_id".into(),
                message: "no item x".into(),
                status: 404,
            })),
        };
        assert_eq!(SimilarAnswer::decode(&e.encode_to_vec()[..]).unwrap(), e);
        assert_eq!(
            SimilarAnswer::decode(&[][..]).unwrap(),
            SimilarAnswer::default()
        );
    }
}
