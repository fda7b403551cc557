//! Tiny collections for the unit tests, written by the real builder into a temporary
//! directory.

use earshot_build::{build_collection, Dataset, Settings};
use earshot_core::collection::Collection;
use earshot_core::format::Verify;
use earshot_core::metric::Metric;

/// One item: its vector, creator and popularity. IDs are `i0`, `i1`, … by position.
pub struct Item {
    pub vector: Vec<f32>,
    pub creator: Option<&'static str>,
    pub popularity: Option<f32>,
}

/// An item at `x` on a 2-d line (`[x, 1]`: distinct under every metric).
pub fn at(x: f32, creator: &'static str, popularity: f32) -> Item {
    Item {
        vector: vec![x, 1.0],
        creator: Some(creator),
        popularity: Some(popularity),
    }
}

/// The collection of `items`; keep the directory alive as long as the collection.
pub fn collection(metric: Metric, items: Vec<Item>) -> (tempfile::TempDir, Collection) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c");
    let data = Dataset {
        dim: items[0].vector.len(),
        vectors: items
            .iter()
            .flat_map(|i| i.vector.iter().copied())
            .collect(),
        ids: (0..items.len()).map(|i| format!("i{i}")).collect(),
        creators: Some(items.iter().map(|i| i.creator.map(String::from)).collect()),
        popularity: Some(items.iter().map(|i| i.popularity).collect()),
    };
    let mut settings = Settings::small(metric);
    settings.params.ef_construction = 64;
    build_collection(data, &out, &settings).unwrap();
    let c = Collection::open(&out, Verify::Full).unwrap();
    (dir, c)
}
