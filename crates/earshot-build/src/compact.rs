//! Compaction: a built version's rows with write-log segments applied, built into the next
//! full version (`earshot build --base DIR --apply-log URL/NAME`; docs/format.md "Write log").
//!
//! This crate does not reach object storage: the binary lists and reads the segments (with
//! earshot-store) and hands each [`Segment`] to [`Compaction::apply`], in order. The rows
//! then go through the same [`crate::build`] as any input, so upserted vectors are prepared
//! exactly as `build` prepares input vectors (normalised under cosine; a zero vector under
//! cosine is refused), and the graph is built by the same code.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use earshot_core::collection::Collection;
use earshot_core::format::log::{Ops, Segment};
use earshot_core::format::{Manifest, Verify};
use earshot_core::metric::Metric;
use earshot_core::shard::ShardSpec;

use crate::input::MAX_ID_BYTES;
use crate::{known_sum, Dataset, Settings};

/// A base version being brought forward by the write log.
pub struct Compaction {
    metric: Metric,
    dim: usize,
    shard: Option<ShardSpec>,
    log_through: Option<u64>,
    taste_history: Option<String>,
    /// Every row seen: the base's first, then one per applied upsert.
    ids: Vec<String>,
    vectors: Vec<f32>,
    creators: Vec<Option<String>>,
    popularity: Vec<Option<f32>>,
    alive: Vec<bool>,
    /// Rows below this came from the base.
    base_rows: usize,
    /// ID → its live row.
    index: HashMap<String, usize>,
    has_creators: bool,
    has_popularity: bool,
    /// A shard's catalogue-wide creator popularity, as the base recorded it.
    base_creator_popularity: HashMap<String, f32>,
    stats: CompactionStats,
}

/// What the applied segments did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Segments applied.
    pub segments: usize,
    /// Items added (an ID the rows did not hold).
    pub added: usize,
    /// Items replaced (an ID the rows held).
    pub replaced: usize,
    /// Items deleted (deletes of unknown IDs are not counted).
    pub deleted: usize,
    /// Upserts left out because another shard owns their ID (shard bases only).
    pub other_shards: usize,
}

impl Compaction {
    /// Reads every row of the built collection in `dir` (a collection directory, or a
    /// versioned link), checking every checksum first.
    pub fn read_base(dir: &Path) -> anyhow::Result<Self> {
        let c = Collection::open(dir, Verify::Full)
            .with_context(|| format!("cannot read the base collection {}", dir.display()))?;
        let m: &Manifest = &c.manifest;
        let shard = match &m.shard {
            Some(info) => Some(
                info.spec()
                    .map_err(|problem| anyhow::anyhow!("{}: {problem}", dir.display()))?,
            ),
            None => None,
        };
        let n = c.len();
        let mut this = Self {
            metric: m.metric,
            dim: c.dim(),
            shard,
            log_through: m.log_through,
            taste_history: m.taste_history.clone(),
            ids: Vec::with_capacity(n),
            vectors: Vec::with_capacity(n * c.dim()),
            creators: Vec::with_capacity(n),
            popularity: Vec::with_capacity(n),
            alive: vec![true; n],
            base_rows: n,
            index: HashMap::with_capacity(n),
            has_creators: m.creators > 0,
            has_popularity: m.has_popularity,
            base_creator_popularity: HashMap::new(),
            stats: CompactionStats::default(),
        };
        for row in 0..n as u32 {
            let id = c.id(row).to_string();
            this.index.insert(id.clone(), row as usize);
            this.ids.push(id);
            this.vectors.extend_from_slice(c.vector(row));
            this.creators.push(c.creator(row).map(str::to_string));
            this.popularity.push(c.popularity(row));
        }
        if shard.is_some() {
            for ci in 0..c.creator_count() as u32 {
                let p = c.creator_popularity(ci).unwrap_or(f32::NAN);
                this.base_creator_popularity
                    .insert(c.creators.get(ci).to_string(), p);
            }
        }
        Ok(this)
    }

    /// The base's metric (the compacted version keeps it).
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The base's vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The shard the base is, if it is one (the compacted version is the same shard).
    pub fn shard(&self) -> Option<ShardSpec> {
        self.shard
    }

    /// The base's taste-history collection (`manifest.taste_history`), kept by the next version.
    pub fn taste_history(&self) -> Option<&str> {
        self.taste_history.as_deref()
    }

    /// The write log the base already includes (`manifest.log_through`).
    pub fn log_through(&self) -> Option<u64> {
        self.log_through
    }

    /// Live rows now.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no row is left.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// What the segments applied so far did.
    pub fn stats(&self) -> &CompactionStats {
        &self.stats
    }

    /// Applies one segment: an upsert adds or replaces items by ID (vector, creator and
    /// popularity), a delete removes IDs (unknown IDs are no-ops). A shard keeps only the
    /// upserts whose ID it owns. `source` names the segment in errors (its URL).
    pub fn apply(&mut self, segment: &Segment, source: &str) -> anyhow::Result<()> {
        match &segment.ops {
            Ops::Upsert { dim, items } => {
                anyhow::ensure!(
                    *dim == self.dim,
                    "{source}: upserts vectors of dimension {dim}, but the base collection has dimension {}",
                    self.dim
                );
                for (i, it) in items.iter().enumerate() {
                    if self.shard.is_some_and(|s| !s.owns(&it.id)) {
                        self.stats.other_shards += 1;
                        continue;
                    }
                    anyhow::ensure!(
                        !it.id.is_empty() && it.id.len() <= MAX_ID_BYTES,
                        "{source}: item {i} has an empty ID or one longer than {MAX_ID_BYTES} bytes"
                    );
                    anyhow::ensure!(
                        it.vector.len() == self.dim && it.vector.iter().all(|x| x.is_finite()),
                        "{source}: item {i} ({:?}) is not {} finite values",
                        it.id,
                        self.dim
                    );
                    // As `build` refuses a zero input row under cosine (it has no direction).
                    anyhow::ensure!(
                        self.metric != Metric::Cosine || it.vector.iter().any(|&x| x != 0.0),
                        "{source}: item {i} ({:?}) has a zero vector: cosine needs non-zero, finite vectors",
                        it.id
                    );
                    match self.index.get(&it.id) {
                        Some(&old) => {
                            self.alive[old] = false;
                            self.stats.replaced += 1;
                        }
                        None => self.stats.added += 1,
                    }
                    self.index.insert(it.id.clone(), self.ids.len());
                    self.ids.push(it.id.clone());
                    self.vectors.extend_from_slice(&it.vector);
                    self.has_creators |= it.creator.is_some();
                    self.has_popularity |= it.popularity.is_some();
                    self.creators.push(it.creator.clone());
                    self.popularity.push(it.popularity);
                    self.alive.push(true);
                }
            }
            Ops::Delete { ids } => {
                for id in ids {
                    if let Some(row) = self.index.remove(id) {
                        self.alive[row] = false;
                        self.stats.deleted += 1;
                    }
                }
            }
        }
        self.stats.segments += 1;
        Ok(())
    }

    /// Builds the rows into `out` as the next version, recording `log_through: through`.
    /// `settings.metric` must be the base's. Creator popularity is recomputed over the
    /// resulting rows; for a shard base it is the base's catalogue-wide value moved by this
    /// shard's own changes (the other shards' rows are not here to sum).
    pub fn build(self, through: u64, out: &Path, settings: &Settings) -> anyhow::Result<Manifest> {
        anyhow::ensure!(
            settings.metric == self.metric,
            "the base collection is {:?}; a compacted version keeps its metric",
            self.metric
        );
        anyhow::ensure!(
            !self.is_empty(),
            "no item is left once the write log through {through} is applied: a collection needs at least one"
        );
        let shard = self.shard.map(|s| (s, self.shard_creator_popularity()));
        let dim = self.dim;
        let keep: Vec<usize> = (0..self.ids.len()).filter(|&r| self.alive[r]).collect();
        let data = Dataset {
            dim,
            vectors: keep
                .iter()
                .flat_map(|&r| self.vectors[r * dim..(r + 1) * dim].iter().copied())
                .collect(),
            ids: keep.iter().map(|&r| self.ids[r].clone()).collect(),
            creators: self
                .has_creators
                .then(|| keep.iter().map(|&r| self.creators[r].clone()).collect()),
            popularity: self
                .has_popularity
                .then(|| keep.iter().map(|&r| self.popularity[r]).collect()),
        };
        drop(self);
        crate::build(data, out, settings, shard, Some(through))
    }

    /// A shard's creator popularity: the base's catalogue-wide sums, less this shard's
    /// removed rows, plus its added ones.
    fn shard_creator_popularity(&self) -> HashMap<String, f32> {
        let mut pop = self.base_creator_popularity.clone();
        let known = |r: usize| {
            let c = self.creators[r].as_deref().filter(|c| !c.is_empty())?;
            Some((c, self.popularity[r].filter(|p| !p.is_nan())?))
        };
        for r in 0..self.ids.len() {
            let from_base = r < self.base_rows;
            // Base rows that are gone are taken out; rows the log added are put in.
            if from_base == self.alive[r] {
                continue;
            }
            let Some((c, p)) = known(r) else { continue };
            let sum = pop.entry(c.to_string()).or_insert(f32::NAN);
            let sign = if from_base { -1.0 } else { 1.0 };
            *sum = known_sum([*sum, sign * p].into_iter());
        }
        pop
    }
}

/// Checks that the log holds every segment `from + 1 ..= through` (`listed`: the log's
/// segment numbers, ascending), before anything is read. `log` names the log in messages
/// (`URL/NAME/log`).
pub fn check_range(from: u64, through: u64, listed: &[u64], log: &str) -> anyhow::Result<()> {
    let head = listed.last().copied().unwrap_or(0);
    anyhow::ensure!(
        through >= from,
        "the base already includes the write log through {from}, past {through} (--through, or the head of {log}, {head}): nothing to go back to"
    );
    let present = listed.iter().filter(|&&s| s > from && s <= through).count() as u64;
    if present == through - from {
        return Ok(());
    }
    // The first missing number, and why it is missing.
    let missing = (from + 1..=through)
        .find(|s| listed.binary_search(s).is_err())
        .expect("a number is missing");
    let first = listed.first().copied();
    if missing > head {
        anyhow::bail!(
            "{log} has no segment {missing} yet (its newest is {head}): pass --through {head} or less"
        );
    }
    let fix = "the base version is too old to catch up from the log: compact from a newer \
               version (the store's CURRENT: --from-store URL/NAME) or rebuild the collection \
               from its full inputs";
    if first.is_some_and(|f| missing < f) {
        anyhow::bail!(
            "the write log from {missing} was pruned: {log} now starts at segment {}, but the \
             base includes it only through {from}; {fix}",
            first.unwrap_or(0)
        );
    }
    anyhow::bail!(
        "segment {missing} of {log} is missing (a gap between {} and later segments: it was \
         pruned or deleted), so the writes after {from} cannot be replayed; {fix}",
        missing - 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use earshot_core::format::log::LogItem;

    fn seg(seq: u64, ops: Ops) -> Segment {
        Segment {
            seq,
            collection: "t".into(),
            written_at_ms: 0,
            ops,
        }
    }

    fn item(id: &str, v: [f32; 2], creator: &str, pop: f32) -> LogItem {
        LogItem {
            id: id.into(),
            vector: v.to_vec(),
            creator: Some(creator.into()),
            popularity: Some(pop),
        }
    }

    fn base(dir: &Path, metric: Metric) -> std::path::PathBuf {
        let data = Dataset {
            dim: 2,
            vectors: vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            ids: vec!["a".into(), "b".into(), "c".into()],
            creators: Some(vec![Some("x".into()), Some("x".into()), None]),
            popularity: Some(vec![Some(1.0), Some(2.0), None]),
        };
        let out = dir.join("base");
        crate::build_collection(data, &out, &Settings::small(metric)).unwrap();
        out
    }

    #[test]
    fn the_base_taste_history_pair_is_read_for_the_next_version() {
        let dir = tempfile::tempdir().unwrap();
        let plain = Compaction::read_base(&base(dir.path(), Metric::Dot)).unwrap();
        assert_eq!(plain.taste_history(), None);
        let out = dir.path().join("paired");
        let data = Dataset {
            dim: 2,
            vectors: vec![1.0, 0.0, 0.0, 1.0],
            ids: vec!["a".into(), "b".into()],
            creators: None,
            popularity: None,
        };
        let settings = Settings {
            taste_history: Some("history".into()),
            ..Settings::small(Metric::Dot)
        };
        crate::build_collection(data, &out, &settings).unwrap();
        let c = Compaction::read_base(&out).unwrap();
        assert_eq!(c.taste_history(), Some("history"));
    }

    #[test]
    fn upserts_and_deletes_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Compaction::read_base(&base(dir.path(), Metric::L2)).unwrap();
        assert_eq!((c.len(), c.dim(), c.log_through()), (3, 2, None));
        let up = Ops::Upsert {
            dim: 2,
            items: vec![
                item("d", [3.0, 4.0], "y", 5.0),
                item("a", [0.5, 0.5], "y", 7.0),
            ],
        };
        c.apply(&seg(1, up), "s1").unwrap();
        let del = Ops::Delete {
            ids: vec!["b".into(), "nobody".into(), "d".into()],
        };
        c.apply(&seg(2, del), "s2").unwrap();
        assert_eq!(
            c.stats(),
            &CompactionStats {
                segments: 2,
                added: 1,
                replaced: 1,
                deleted: 2,
                other_shards: 0
            }
        );
        let out = dir.path().join("next");
        let m = c.build(2, &out, &Settings::small(Metric::L2)).unwrap();
        assert_eq!((m.count, m.log_through), (2, Some(2)));
        let col = Collection::open(&out, Verify::Full).unwrap();
        let a = col.row_of("a").unwrap();
        assert_eq!(col.vector(a), &[0.5, 0.5]);
        assert_eq!(col.creator(a), Some("y"));
        assert!(col.row_of("b").is_none() && col.row_of("d").is_none());
        // Creator popularity over the resulting rows: x lost both its items.
        let y = col.creators.find("y").unwrap();
        assert_eq!(col.creator_popularity(y), Some(7.0));
        assert!(col.creators.find("x").is_none());
    }

    #[test]
    fn bad_segments_are_refused_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Compaction::read_base(&base(dir.path(), Metric::Cosine)).unwrap();
        let wide = Ops::Upsert {
            dim: 3,
            items: vec![LogItem {
                id: "w".into(),
                vector: vec![1.0; 3],
                creator: None,
                popularity: None,
            }],
        };
        let e = c
            .apply(&seg(1, wide), "URL/t/log/1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("URL/t/log/1") && e.contains("dimension 3"),
            "{e}"
        );
        let zero = Ops::Upsert {
            dim: 2,
            items: vec![item("z", [0.0, -0.0], "y", 1.0)],
        };
        let e = c
            .apply(&seg(1, zero), "URL/t/log/1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("URL/t/log/1") && e.contains("zero vector"),
            "{e}"
        );
        // Deleting everything leaves nothing to build.
        let all = Ops::Delete {
            ids: vec!["a".into(), "b".into(), "c".into()],
        };
        c.apply(&seg(1, all), "s").unwrap();
        let e = c
            .build(1, &dir.path().join("n"), &Settings::small(Metric::Cosine))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no item is left"), "{e}");
    }

    #[test]
    fn ranges_with_missing_segments_are_refused() {
        let log = "file:///s/t/log";
        check_range(0, 3, &[1, 2, 3], log).unwrap();
        check_range(2, 3, &[2, 3, 4], log).unwrap();
        check_range(4, 4, &[4], log).unwrap();
        let e = |from, through, listed: &[u64]| {
            check_range(from, through, listed, log)
                .unwrap_err()
                .to_string()
        };
        let pruned = e(0, 5, &[4, 5]);
        assert!(
            pruned.contains("the write log from 1 was pruned")
                && pruned.contains("starts at segment 4"),
            "{pruned}"
        );
        let gap = e(0, 3, &[1, 3]);
        assert!(
            gap.contains("segment 2 of file:///s/t/log is missing"),
            "{gap}"
        );
        assert!(e(0, 9, &[1, 2]).contains("no segment 3 yet"));
        assert!(e(5, 3, &[3]).contains("already includes the write log through 5"));
    }
}
