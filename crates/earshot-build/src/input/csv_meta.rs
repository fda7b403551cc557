//! CSV metadata for `.npy` / `.fvecs` vectors: a header row naming the columns, then data
//! row i describing vector row i.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::error::fmt_columns;
use super::{open, InputError, InputSpec, RowMeta};

/// A CSV metadata file whose header has been read and columns resolved.
pub(super) struct MetaReader {
    path: PathBuf,
    reader: csv::Reader<BufReader<File>>,
    id_col: usize,
    creator_col: Option<usize>,
    popularity: Option<(usize, String)>,
}

fn csv_error(path: &Path, e: csv::Error) -> InputError {
    let line = e.position().map(|p| p.line());
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "row has {len} fields but the header has {expected_len}; every row needs one value \
             per column (quote values that contain commas)"
        ),
        csv::ErrorKind::Utf8 { err, .. } => {
            format!(
                "not valid UTF-8 (field {}); save the file as UTF-8",
                err.field() + 1
            )
        }
        csv::ErrorKind::Io(io) => format!("read error: {io}"),
        _ => e.to_string(),
    };
    InputError::Csv {
        path: path.to_path_buf(),
        line,
        message,
    }
}

impl MetaReader {
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn open(path: &Path, spec: &InputSpec) -> Result<MetaReader, InputError> {
        let file = open(path)?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(BufReader::with_capacity(1 << 20, file));
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| csv_error(path, e))?
            .iter()
            .map(|h| h.to_string())
            .collect();
        if headers.is_empty() || (headers.len() == 1 && headers[0].trim().is_empty()) {
            return Err(InputError::Csv {
                path: path.to_path_buf(),
                line: None,
                message: "the file is empty; a header row naming the columns is required".into(),
            });
        }
        let find = |name: &str, option: &'static str| -> Result<usize, InputError> {
            headers
                .iter()
                .position(|h| h == name)
                .or_else(|| headers.iter().position(|h| h.trim() == name.trim()))
                .ok_or_else(|| InputError::UnknownColumn {
                    path: path.to_path_buf(),
                    column: name.to_string(),
                    option,
                    available: headers.clone(),
                })
        };
        let Some(id_name) = &spec.id_column else {
            return Err(InputError::Options(format!(
                "--meta {} needs --id-column to say which column holds the IDs; available \
                 columns: {}",
                path.display(),
                fmt_columns(&headers)
            )));
        };
        let id_col = find(id_name, "--id-column")?;
        let creator_col = match &spec.creator_column {
            Some(c) => Some(find(c, "--creator-column")?),
            None => None,
        };
        let popularity = match &spec.popularity_column {
            Some(c) => Some((find(c, "--popularity-column")?, c.clone())),
            None => None,
        };
        Ok(MetaReader {
            path: path.to_path_buf(),
            reader,
            id_col,
            creator_col,
            popularity,
        })
    }

    pub(super) fn read_rows(mut self, expected_rows: usize) -> Result<RowMeta, InputError> {
        let path = self.path.as_path();
        let mut ids = Vec::with_capacity(expected_rows);
        let mut lines = Vec::with_capacity(expected_rows);
        let mut creators = self.creator_col.map(|_| Vec::with_capacity(expected_rows));
        let mut popularity = self
            .popularity
            .as_ref()
            .map(|_| Vec::with_capacity(expected_rows));
        let mut rec = csv::StringRecord::new();
        loop {
            match self.reader.read_record(&mut rec) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(csv_error(path, e)),
            }
            let row = ids.len();
            let line = rec.position().map(|p| p.line()).unwrap_or(row as u64 + 2);
            ids.push(rec.get(self.id_col).unwrap_or("").to_string());
            lines.push(line);
            if let (Some(col), Some(out)) = (self.creator_col, creators.as_mut()) {
                let cell = rec.get(col).unwrap_or("");
                out.push((!cell.is_empty()).then(|| cell.to_string()));
            }
            if let (Some((col, name)), Some(out)) = (&self.popularity, popularity.as_mut()) {
                let cell = rec.get(*col).unwrap_or("").trim();
                if cell.is_empty() {
                    out.push(None);
                } else {
                    match cell.parse::<f32>() {
                        Ok(x) if x.is_finite() => out.push(Some(x)),
                        _ => {
                            return Err(InputError::BadPopularity {
                                path: path.to_path_buf(),
                                row,
                                line: Some(line),
                                column: name.clone(),
                                value: format!("{cell:?}"),
                            })
                        }
                    }
                }
            }
        }
        Ok(RowMeta {
            source: Some(self.path),
            ids,
            creators,
            popularity,
            lines: Some(lines),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{load, InputSpec};
    use earshot_core::metric::Metric;

    #[test]
    fn csv_meta_ok() {
        let d = TempDir::new().unwrap();
        let v = write(&d, "v.npy", &npy_f32(&THREE));
        let m = write(
            &d,
            "m.csv",
            "\u{feff}track_id,artist,plays\n\
             t1,Alice,10\n\
             \"t,2\",,\n\
             t3,\"Bob, Jr.\", 2.5e3 \n"
                .as_bytes(),
        );
        let mut s = meta_spec(v.clone(), m.clone(), "track_id");
        s.creator_column = Some("artist".into());
        s.popularity_column = Some("plays".into());
        let ds = load(&s, Metric::Cosine).unwrap();
        assert_eq!(ds.ids, vec!["t1", "t,2", "t3"]);
        assert_eq!(
            ds.creators.unwrap(),
            vec![
                Some("Alice".to_string()),
                None,
                Some("Bob, Jr.".to_string())
            ]
        );
        assert_eq!(ds.popularity.unwrap(), vec![Some(10.0), None, Some(2500.0)]);

        // Only the ID column.
        let ds = load(&meta_spec(v, m, "plays"), Metric::Cosine);
        // "plays" has an empty cell on row 1 -> empty ID error naming line 3.
        has(
            &ds.unwrap_err().to_string(),
            &["m.csv", "row 1 (line 3)", "empty"],
        );
    }

    #[test]
    fn csv_meta_errors() {
        let d = TempDir::new().unwrap();
        let v = write(&d, "v.npy", &npy_f32(&THREE));
        let m = write(&d, "m.csv", b"id,artist,plays\na,x,1\nb,y,2\nc,z,3\n");

        let mut s = meta_spec(v.clone(), m.clone(), "track");
        has(
            &err(&s, Metric::L2),
            &[
                "m.csv",
                "\"track\"",
                "--id-column",
                "\"id\"",
                "\"artist\"",
                "\"plays\"",
            ],
        );
        s.id_column = Some("id".into());
        s.creator_column = Some("singer".into());
        has(
            &err(&s, Metric::L2),
            &["\"singer\"", "--creator-column", "\"artist\""],
        );
        s.creator_column = None;
        s.popularity_column = Some("pop".into());
        has(&err(&s, Metric::L2), &["\"pop\"", "--popularity-column"]);

        // Meta without --id-column lists the columns.
        let s = InputSpec {
            vectors: v.clone(),
            meta: Some(m.clone()),
            ..Default::default()
        };
        has(
            &err(&s, Metric::L2),
            &["--id-column", "\"id\", \"artist\", \"plays\""],
        );

        // Column options without --meta.
        let s = InputSpec {
            vectors: v.clone(),
            id_column: Some("id".into()),
            ..Default::default()
        };
        has(&err(&s, Metric::L2), &["--id-column", "without --meta"]);

        // Row count mismatch: both numbers.
        let m2 = write(&d, "short.csv", b"id\na\nb\n");
        has(
            &err(&meta_spec(v.clone(), m2, "id"), Metric::L2),
            &["short.csv", "2 data rows", "3 vectors", "v.npy"],
        );
        let m2 = write(&d, "long.csv", b"id\na\nb\nc\nd\n");
        has(
            &err(&meta_spec(v.clone(), m2, "id"), Metric::L2),
            &["4 data rows", "3 vectors"],
        );

        // Ragged row.
        let m2 = write(&d, "ragged.csv", b"id,artist\na,x\nb\nc,z\n");
        has(
            &err(&meta_spec(v.clone(), m2, "id"), Metric::L2),
            &["ragged.csv", "line 3", "1 fields", "header has 2"],
        );

        // Empty file.
        let m2 = write(&d, "empty.csv", b"");
        has(
            &err(&meta_spec(v.clone(), m2, "id"), Metric::L2),
            &["empty.csv", "header row"],
        );

        // Duplicate IDs name both rows.
        let m2 = write(&d, "dup.csv", b"id\nx\ny\nx\n");
        has(
            &err(&meta_spec(v.clone(), m2, "id"), Metric::L2),
            &["dup.csv", "\"x\"", "row 0 (line 2)", "row 2 (line 4)"],
        );

        // ID too long.
        let long = "a".repeat(1025);
        let m2 = write(&d, "long_id.csv", format!("id\nx\n{long}\nz\n").as_bytes());
        has(
            &err(&meta_spec(v.clone(), m2, "id"), Metric::L2),
            &["row 1 (line 3)", "1025 bytes", "1024"],
        );

        // Bad popularity values.
        for (bad, shown) in [("abc", "\"abc\""), ("NaN", "\"NaN\""), ("inf", "\"inf\"")] {
            let m2 = write(
                &d,
                "pop.csv",
                format!("id,plays\na,1\nb,\nc,{bad}\n").as_bytes(),
            );
            let mut s = meta_spec(v.clone(), m2, "id");
            s.popularity_column = Some("plays".into());
            has(
                &err(&s, Metric::L2),
                &["pop.csv", "row 2 (line 4)", "\"plays\"", shown],
            );
        }
    }

    #[test]
    fn fvecs_with_meta() {
        let d = TempDir::new().unwrap();
        let v = write(&d, "v.fvecs", &fvecs(&THREE));
        let m = write(&d, "m.csv", b"id,who\na,\nb,B\nc,C\n");
        let mut s = meta_spec(v, m, "id");
        s.creator_column = Some("who".into());
        let ds = load(&s, Metric::L2).unwrap();
        assert_eq!(ds.ids, vec!["a", "b", "c"]);
        assert_eq!(ds.creators.unwrap()[0], None);
        assert!(ds.popularity.is_none());
    }
}
