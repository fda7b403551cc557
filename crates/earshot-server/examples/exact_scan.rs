//! The live recall check's exact scan (`Graph::scan_all`, through the 8-bit codes) against
//! the plain f32 scan of every row, on one thread (BENCHMARKS.md §6, "The recall sampler"):
//! milliseconds of thread CPU per check, f32 rows read, and whether both found the same rows.
//!
//!     cargo run --release -p earshot-server --example exact_scan -- \
//!         INDEX_DIR QUERY_ROWS.npy K        # rows: an int .npy of row numbers

use earshot_core::collection::Collection;
use earshot_core::format::Verify;
use earshot_core::search::with_scratch;

fn thread_cpu_s() -> f64 {
    earshot_server::background::thread_cpu().as_secs_f64()
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert!(a.len() == 3, "usage: INDEX_DIR QUERY_ROWS.npy K");
    let rows: Vec<u32> = earshot_build::npy::read_int(std::path::Path::new(&a[1]))
        .expect("query rows")
        .data
        .iter()
        .map(|&r| u32::try_from(r).expect("a row number"))
        .collect();
    let k: usize = a[2].parse().expect("K");
    let c = Collection::open(std::path::Path::new(&a[0]), Verify::Lazy).expect("open");
    let g = c.graph();
    let plain = earshot_core::search::Graph { quant: None, ..g };
    let (mut want, mut got) = (Vec::new(), Vec::new());
    let (mut f32_s, mut coded_s, mut read, mut same) = (0.0, 0.0, 0usize, 0usize);
    for &r in &rows {
        let q = c.vector(r);
        want.clear();
        got.clear();
        let t = thread_cpu_s();
        with_scratch(|s| plain.scan_all(q, k, |_| true, s, &mut want));
        let t1 = thread_cpu_s();
        read += with_scratch(|s| g.scan_all(q, k, |_| true, s, &mut got));
        let t2 = thread_cpu_s();
        f32_s += t1 - t;
        coded_s += t2 - t1;
        same += usize::from(got == want);
    }
    let n = rows.len() as f64;
    println!(
        "{{\"queries\": {}, \"rows\": {}, \"f32_ms\": {:.3}, \"coded_ms\": {:.3}, \"ratio\": {:.2}, \
         \"f32_rows_read\": {:.1}, \"same_rows\": {same}}}",
        rows.len(),
        c.len(),
        f32_s * 1e3 / n,
        coded_s * 1e3 / n,
        f32_s / coded_s,
        read as f64 / n
    );
}
