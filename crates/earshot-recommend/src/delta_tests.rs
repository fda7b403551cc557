//! The write log's delta seen through the selection code: upserted items are candidates like
//! rows, tombstoned rows never are, creators and popularity follow the delta.

use earshot_core::delta::{Delta, View};
use earshot_core::format::log::{LogItem, Ops, Segment};
use earshot_core::metric::Metric;

use crate::constraints::{Emerging, HardFilter, Shape};
use crate::select::{recommend, Probe};
use crate::testing::{at, collection};

fn seg(seq: u64, ops: Ops) -> Segment {
    Segment {
        seq,
        collection: "c".into(),
        written_at_ms: 1,
        ops,
    }
}

fn item(id: &str, x: f32, creator: &str, popularity: f32) -> LogItem {
    LogItem {
        id: id.into(),
        vector: vec![x, 1.0],
        creator: Some(creator.into()),
        popularity: Some(popularity),
    }
}

fn ids(v: View<'_>, x: f32, k: usize, filter: &HardFilter, shape: Option<Shape>) -> Vec<String> {
    let probe = Probe {
        query: vec![x, 1.0],
        weight: 1.0,
    };
    let shape = shape.unwrap_or(Shape {
        k,
        ..Default::default()
    });
    recommend(v, &[probe], filter, &shape, 16)
        .picks
        .iter()
        .map(|p| v.id(p.row).to_string())
        .collect()
}

#[test]
fn upserts_replace_and_deletes_hide_rows_in_every_answer() {
    // Rows i0…i9 at x = 0…9, creators "a" (even) and "b" (odd), popularity = x.
    let items = (0..10)
        .map(|x| at(x as f32, ["a", "b"][x % 2], x as f32))
        .collect();
    let (_dir, c) = collection(Metric::L2, items);
    let mut d = Delta::new(&c, "v1", 0);
    let up = Ops::Upsert {
        dim: 2,
        items: vec![item("n1", 4.4, "new", 1.0), item("i7", 2.2, "b", 7.0)],
    };
    d.apply(&c, &seg(1, up)).unwrap();
    d.apply(
        &c,
        &seg(
            2,
            Ops::Delete {
                ids: vec!["i4".into(), "nope".into()],
            },
        ),
    )
    .unwrap();
    // Applying out of order is refused.
    assert!(d.apply(&c, &seg(4, Ops::Delete { ids: vec![] })).is_err());
    d.seal(&c);
    let v = View::new(&c, Some(&d));
    assert_eq!((d.items(), d.tombstones(), d.applied), (2, 2, 2));
    let all = HardFilter::default();
    // i4 is gone, n1 sits where it was; i7 moved next to x = 2.
    assert_eq!(ids(v, 4.4, 3, &all, None), ["n1", "i5", "i3"]);
    assert_eq!(ids(v, 2.2, 2, &all, None), ["i7", "i2"]);
    assert!(!ids(v, 7.0, 10, &all, None).iter().any(|i| i == "i4"));
    assert_eq!(
        ids(v, 7.0, 10, &all, None)
            .iter()
            .filter(|i| *i == "i7")
            .count(),
        1
    );
    assert_eq!(v.row_of("i4"), None);
    assert_eq!(v.vector(v.row_of("i7").unwrap()), &[2.2, 1.0]);
    // A new creator is a filter key like any other, and its popularity counts.
    let new = v.creator_named("new").unwrap();
    let only_new = HardFilter {
        allow_creators: Some(vec![new]),
        ..Default::default()
    };
    assert_eq!(ids(v, 0.0, 5, &only_new, None), ["n1"]);
    assert_eq!(v.creator_popularity(new), Some(1.0));
    // "a" lost i4 (popularity 4): 0 + 2 + 6 + 8.
    let a = v.creator_named("a").unwrap();
    assert_eq!(v.creator_popularity(a), Some(16.0));
    // The emerging quota sees the newcomer.
    let shape = Shape {
        k: 2,
        max_per_creator: None,
        emerging: Some(Emerging {
            max_popularity: 1.5,
            min_share: 0.5,
            boost: 0.0,
        }),
    };
    assert_eq!(ids(v, 9.0, 2, &all, Some(shape)), ["i9", "n1"]);
    // Deleting an upserted item hides it; upserting it again brings it back once.
    d.apply(
        &c,
        &seg(
            3,
            Ops::Delete {
                ids: vec!["n1".into()],
            },
        ),
    )
    .unwrap();
    d.seal(&c);
    let v = View::new(&c, Some(&d));
    assert_eq!(ids(v, 4.4, 1, &all, None), ["i5"]);
    // A creator left without items has no popularity (not emerging, not popular).
    assert_eq!(
        v.creator_named("new").and_then(|n| v.creator_popularity(n)),
        None
    );
}
