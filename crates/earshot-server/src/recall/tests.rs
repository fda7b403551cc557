use std::sync::Arc;

use earshot_core::collection::Collection;
use earshot_core::format::Verify;
use earshot_recommend::constraints::HardFilter;

use super::worker::{Window, WINDOW};
use super::*;

/// The 20-item l2 collection of the registry's tests, opened.
fn collection(dir: &std::path::Path) -> Arc<Collection> {
    let out = dir.join("c");
    crate::registry::tests::build(&out, 4);
    Arc::new(Collection::open(&out, Verify::Full).unwrap())
}

/// Every row by exact distance to `query`, nearest first, leaving out `skip`.
fn ranked(c: &Collection, query: &[f32], skip: &[u32]) -> Vec<u32> {
    let mut rows: Vec<(f32, u32)> = (0..c.len() as u32)
        .filter(|r| !skip.contains(r))
        .map(|r| (c.dist().distance(query, c.vector(r)), r))
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    rows.into_iter().map(|(_, r)| r).collect()
}

fn sample(c: &Arc<Collection>, query: &[f32], served: Vec<u32>, exclude: Vec<u32>) -> Sample {
    Sample {
        collection: c.clone(),
        query: query.to_vec(),
        served,
        filter: HardFilter {
            exclude,
            ..Default::default()
        },
        k: 5,
    }
}

#[test]
fn recall_counts_served_rows_among_the_exact_top_k_under_the_filter() {
    let dir = tempfile::tempdir().unwrap();
    let c = collection(dir.path());
    let query = c.vector(3).to_vec();
    let all = ranked(&c, &query, &[]);
    let exact = &all[..5];
    let r = |served: &[u32], exclude: Vec<u32>| {
        check::recall(&sample(&c, &query, served.to_vec(), exclude))
    };
    assert_eq!(r(exact, vec![]), Some(1.0));
    // Order does not matter; the farthest rows are misses.
    let mut two_wrong = exact[..3].to_vec();
    two_wrong.extend(&all[all.len() - 2..]);
    two_wrong.reverse();
    assert_eq!(r(&two_wrong, vec![]), Some(0.6));
    // A short answer misses what it lacks.
    assert_eq!(r(&exact[..1], vec![]), Some(0.2));
    // `similar` leaves its own item out: the exact list does too.
    let without = ranked(&c, &query, &[3]);
    assert_eq!(r(&without[..5], vec![3]), Some(1.0));
    assert_eq!(r(&all[..5], vec![3]), Some(0.8));
    // Nothing admissible: nothing to measure.
    assert_eq!(r(&[], (0..c.len() as u32).collect()), None);
}

#[test]
fn window_keeps_the_latest_samples_and_their_standard_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = collection(dir.path());
    let mut w = Window::new(&c);
    w.push(1.0);
    assert_eq!(w.estimate(), (1.0, 0.0));
    w.push(0.0);
    let (mean, se) = w.estimate();
    assert_eq!(mean, 0.5);
    // Sample variance 0.5, over n = 2: 0.25, whose square root is 0.5.
    assert!((se - 0.5).abs() < 1e-12, "{se}");
    for _ in 0..WINDOW {
        w.push(0.25);
    }
    assert_eq!(w.estimate(), (0.25, 0.0));
}

#[test]
fn sampling_rate_is_honoured_and_off_means_no_checker() {
    let mut metrics = Metrics::new();
    let off = RecallOptions {
        sample_rate: 0.0,
        ..Default::default()
    };
    assert!(Checker::new(&off, &mut metrics).unwrap().is_none());
    assert!(!metrics.encode().contains("recall"));

    for rate in [1.0, 0.1] {
        let opts = RecallOptions {
            sample_rate: rate,
            ..Default::default()
        };
        let checker = Checker::new(&opts, &mut Metrics::new()).unwrap().unwrap();
        let s = checker.sampler();
        let n = 100_000;
        let picked = (0..n).filter(|_| s.pick()).count() as f64 / n as f64;
        // Binomial: 5 standard deviations of 0.1 over 100,000 draws is 0.005.
        assert!(
            (picked - rate).abs() < 0.005,
            "rate {rate}: picked {picked}"
        );
    }
}

#[test]
fn a_full_queue_drops_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let c = collection(dir.path());
    let mut metrics = Metrics::new();
    let opts = RecallOptions {
        sample_rate: 1.0,
        ..Default::default()
    };
    // Never started: nothing empties the queue.
    let checker = Checker::new(&opts, &mut metrics).unwrap().unwrap();
    let s = checker.sampler();
    for _ in 0..QUEUE + 7 {
        s.offer(
            &c,
            c.vector(0),
            [1, 2].into_iter(),
            &HardFilter::default(),
            5,
        );
    }
    let text = metrics.encode();
    let line = format!(
        "earshot_recall_samples_dropped_total{{collection=\"{}\"}} 7",
        c.name
    );
    assert!(text.contains(&line), "{line} not in:\n{text}");
}

#[test]
fn bad_options_are_refused_by_name() {
    let bad = [
        (f64::NAN, 0.9, 0.05, "--recall-sample-rate"),
        (1.5, 0.9, 0.05, "--recall-sample-rate"),
        (0.1, -0.1, 0.05, "--recall-floor"),
        (0.1, 0.9, 0.0, "--recall-cpu-budget"),
        (0.1, 0.9, f64::NAN, "--recall-cpu-budget"),
    ];
    for (sample_rate, floor, cpu_budget, flag) in bad {
        let opts = RecallOptions {
            sample_rate,
            floor,
            cpu_budget,
        };
        let err = opts.validate().unwrap_err().to_string();
        assert!(err.contains(flag), "{err}");
    }
    assert!(RecallOptions::default().validate().is_ok());
}
