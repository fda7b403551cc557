//! `.jsonl` / `.ndjson` vectors: one `{"id", "vector", "creator"?, "popularity"?}` object
//! per line, so the metadata comes with the vectors.

use std::io::{BufRead, BufReader};
use std::path::Path;

use super::{io_err, open, InputError, RawVectors, RowMeta};

/// The `"vector"` field: an array of numbers, with a precise error otherwise.
struct JsonVector(Vec<f32>);

impl<'de> serde::Deserialize<'de> for JsonVector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = JsonVector;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<JsonVector, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(64));
                let mut i = 0usize;
                while let Some(x) = seq.next_element::<serde_json::Value>()? {
                    match x {
                        serde_json::Value::Number(num) => {
                            v.push(num.as_f64().unwrap_or(f64::NAN) as f32)
                        }
                        other => {
                            return Err(serde::de::Error::custom(format!(
                                "\"vector\" element {i} is {}, not a number; \"vector\" must \
                                 be an array of numbers",
                                json_kind(&other)
                            )))
                        }
                    }
                    i += 1;
                }
                Ok(JsonVector(v))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(serde::Deserialize)]
struct JsonLine {
    id: Option<serde_json::Value>,
    vector: Option<JsonVector>,
    creator: Option<serde_json::Value>,
    popularity: Option<serde_json::Value>,
}

fn json_kind(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => format!("the boolean {b}"),
        serde_json::Value::Number(n) => format!("the number {n}"),
        serde_json::Value::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        serde_json::Value::String(_) => "a string".into(),
        serde_json::Value::Array(_) => "an array".into(),
        serde_json::Value::Object(_) => "an object".into(),
    }
}

/// serde_json's message without its "at line 1 column N" suffix (we report the file line).
fn json_error_text(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let base = s.strip_suffix(&suffix).unwrap_or(&s);
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            format!("malformed JSON: {base} (at column {})", e.column())
        }
        _ => base.to_string(),
    }
}

/// Reads the vectors and the per-line metadata; blank lines are skipped.
pub(super) fn read(path: &Path) -> Result<(RawVectors, RowMeta), InputError> {
    let file = open(path)?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let err = |line: u64, message: String| InputError::Jsonl {
        path: path.to_path_buf(),
        line,
        message,
    };

    let mut vectors: Vec<f32> = Vec::new();
    let mut dim: Option<(usize, u64)> = None;
    let mut ids = Vec::new();
    let mut lines = Vec::new();
    let mut creators: Vec<Option<String>> = Vec::new();
    let mut popularity: Vec<Option<f32>> = Vec::new();
    let mut any_creator = false;
    let mut any_popularity = false;

    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let got = r.read_until(b'\n', &mut buf).map_err(|e| io_err(path, e))?;
        if got == 0 {
            break;
        }
        line_no += 1;
        let mut text: &[u8] = &buf;
        if line_no == 1 {
            text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
        }
        let text = text.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if text[0] != b'{' {
            return Err(err(
                line_no,
                "expected a JSON object like {\"id\": \"...\", \"vector\": [...]}".into(),
            ));
        }
        let rec: JsonLine =
            serde_json::from_slice(text).map_err(|e| err(line_no, json_error_text(&e)))?;

        let id = match rec.id {
            Some(serde_json::Value::String(s)) => s,
            None => return Err(err(line_no, "missing \"id\" (a string)".into())),
            Some(other) => {
                return Err(err(
                    line_no,
                    format!(
                        "\"id\" must be a JSON string, found {}; quote it, e.g. \"id\": \"123\"",
                        json_kind(&other)
                    ),
                ))
            }
        };
        let Some(JsonVector(v)) = rec.vector else {
            return Err(err(
                line_no,
                "missing \"vector\" (an array of numbers)".into(),
            ));
        };
        match dim {
            None => {
                dim = Some((v.len(), line_no));
            }
            Some((d, first_line)) if d != v.len() => {
                return Err(err(
                    line_no,
                    format!(
                        "vector has {} numbers but the first vector (line {first_line}) has \
                         {d}; all vectors must have the same dimension",
                        v.len()
                    ),
                ));
            }
            Some(_) => {}
        }
        vectors.extend_from_slice(&v);

        let creator = match rec.creator {
            None => None,
            Some(serde_json::Value::String(s)) => {
                any_creator = true;
                if s.is_empty() {
                    None
                } else {
                    Some(s)
                }
            }
            Some(other) => {
                return Err(err(
                    line_no,
                    format!(
                        "\"creator\" must be a string or null, found {}",
                        json_kind(&other)
                    ),
                ))
            }
        };
        let row = ids.len();
        let pop = match rec.popularity {
            None => None,
            Some(serde_json::Value::Number(num)) => {
                any_popularity = true;
                let x = num.as_f64().unwrap_or(f64::NAN) as f32;
                if !x.is_finite() {
                    return Err(InputError::BadPopularity {
                        path: path.to_path_buf(),
                        row,
                        line: Some(line_no),
                        column: "popularity".into(),
                        value: format!("{num} (outside the float32 range)"),
                    });
                }
                Some(x)
            }
            Some(other) => {
                return Err(InputError::BadPopularity {
                    path: path.to_path_buf(),
                    row,
                    line: Some(line_no),
                    column: "popularity".into(),
                    value: {
                        let mut v = other.to_string();
                        if v.len() > 40 {
                            v = format!("{} ({} chars)", json_kind(&other), v.len());
                        }
                        v
                    },
                })
            }
        };
        ids.push(id);
        lines.push(line_no);
        creators.push(creator);
        popularity.push(pop);
    }

    let n = ids.len();
    Ok((
        RawVectors {
            n,
            dim: dim.map(|(d, _)| d).unwrap_or(0),
            vectors,
        },
        RowMeta {
            source: Some(path.to_path_buf()),
            ids,
            creators: any_creator.then_some(creators),
            popularity: any_popularity.then_some(popularity),
            lines: Some(lines),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::super::test_support::*;
    use earshot_core::metric::Metric;

    #[test]
    fn jsonl_ok() {
        let d = TempDir::new().unwrap();
        let p = write(
            &d,
            "v.jsonl",
            b"{\"id\": \"a\", \"vector\": [1, 2.5, -3e0]}\n\
              \n\
              {\"id\": \"b\", \"vector\": [0, 1, 0], \"creator\": \"Zed\", \"extra\": {\"x\": 1}}\r\n\
              {\"id\": \"c\", \"vector\": [1, 1, 1], \"creator\": null}\n",
        );
        let ds = load(&spec(p), Metric::Cosine).unwrap();
        assert_eq!(ds.ids, vec!["a", "b", "c"]);
        assert_eq!(ds.dim, 3);
        assert_eq!(ds.row(0), &[1.0, 2.5, -3.0]);
        assert_eq!(ds.creators.unwrap(), vec![None, Some("Zed".into()), None]);
        assert!(ds.popularity.is_none());

        let p = write(
            &d,
            "v.ndjson",
            b"{\"id\": \"a\", \"vector\": [1], \"popularity\": 3}\n{\"id\": \"b\", \"vector\": [2]}",
        );
        let ds = load(&spec(p), Metric::L2).unwrap();
        assert!(ds.creators.is_none());
        assert_eq!(ds.popularity.unwrap(), vec![Some(3.0), None]);
    }

    #[test]
    fn jsonl_errors() {
        let d = TempDir::new().unwrap();
        let ok = "{\"id\": \"a\", \"vector\": [1, 2]}\n\n";
        let cases: &[(&str, &[&str])] = &[
            (
                "{\"id\": \"b\", \"vector\": [1, 2]\n",
                &["line 3", "malformed JSON"],
            ),
            ("not json\n", &["line 3", "JSON object"]),
            ("{\"vector\": [1, 2]}\n", &["line 3", "missing \"id\""]),
            ("{\"id\": \"b\"}\n", &["line 3", "missing \"vector\""]),
            (
                "{\"id\": 7, \"vector\": [1, 2]}\n",
                &["line 3", "must be a JSON string", "number 7"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [1, \"x\"]}\n",
                &["line 3", "element 1", "not a number"],
            ),
            (
                "{\"id\": \"b\", \"vector\": \"1,2\"}\n",
                &["line 3", "array of numbers"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [1, 2, 3]}\n",
                &["line 3", "3 numbers", "(line 1) has 2"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [1, 2], \"popularity\": \"hi\"}\n",
                &["row 1 (line 3)", "popularity"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [1, 2], \"popularity\": 1e300}\n",
                &["row 1 (line 3)", "popularity"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [1, 2], \"creator\": 5}\n",
                &["line 3", "\"creator\""],
            ),
            (
                "{\"id\": \"a\", \"vector\": [3, 4]}\n",
                &["v.jsonl", "\"a\"", "row 0 (line 1)", "row 1 (line 3)"],
            ),
            (
                "{\"id\": \"\", \"vector\": [3, 4]}\n",
                &["row 1 (line 3)", "empty"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [0, 0]}\n",
                &["row 1 (line 3)", "cosine needs non-zero"],
            ),
            (
                "{\"id\": \"b\", \"vector\": [1, 1e39]}\n",
                &["row 1 (line 3)", "column 1", "inf"],
            ),
        ];
        for (second, parts) in cases {
            let p = write(&d, "v.jsonl", format!("{ok}{second}").as_bytes());
            let msg = err(&spec(p), Metric::Cosine);
            has(&msg, &["v.jsonl"]);
            has(&msg, parts);
        }

        let p = write(&d, "e.jsonl", b"\n\n");
        has(&err(&spec(p), Metric::L2), &["e.jsonl", "no vectors"]);
        let p = write(&d, "z.jsonl", b"{\"id\": \"a\", \"vector\": []}\n");
        has(&err(&spec(p), Metric::L2), &["z.jsonl", "dimension 0"]);

        // Metadata options are rejected for JSONL.
        let p = write(&d, "v.jsonl", ok.as_bytes());
        let m = write(&d, "m.csv", b"id\na\n");
        has(
            &err(&meta_spec(p.clone(), m, "id"), Metric::L2),
            &["metadata comes from the JSONL fields"],
        );
        let mut s = spec(p);
        s.creator_column = Some("x".into());
        has(
            &err(&s, Metric::L2),
            &["metadata comes from the JSONL fields"],
        );
    }
}
