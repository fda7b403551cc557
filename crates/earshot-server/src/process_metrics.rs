//! The standard `process_*` metrics of Prometheus client libraries (CPU seconds, resident and
//! virtual memory, open and maximum file descriptors, start time), read from `/proc/self` at
//! each scrape. prometheus-client has no process collector; the names follow the other client
//! libraries' so that existing dashboards and alerts work unchanged. Linux only: elsewhere
//! the collector reports nothing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of `/proc/self`.
#[derive(Debug, Default, PartialEq)]
struct Reading {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    start_time_seconds: f64,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(r) = read() else { return Ok(()) };
        let cpu = ConstCounter::new(r.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                Some(r.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                Some(r.virtual_bytes),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                Some(r.start_time_seconds),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                r.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                r.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(v) = value else { continue };
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn read() -> Option<Reading> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let btime = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<f64>()
        .ok()?;
    // SAFETY: sysconf only reads configuration values.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let mut r = parse_stat(&stat, ticks as f64, page as f64, btime)?;
    r.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        r.max_fds = Some(limit.rlim_cur as f64);
    }
    Some(r)
}

#[cfg(not(target_os = "linux"))]
fn read() -> Option<Reading> {
    None
}

/// Fields of `/proc/self/stat` (proc(5)): after the parenthesised command name (which may
/// itself hold spaces and parentheses), utime 14 and stime 15 in clock ticks, starttime 22
/// in ticks since boot, vsize 23 in bytes and rss 24 in pages.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_stat(stat: &str, ticks: f64, page: f64, btime: f64) -> Option<Reading> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3)?.parse::<f64>().ok();
    if ticks <= 0.0 || page <= 0.0 {
        return None;
    }
    Some(Reading {
        cpu_seconds: (field(14)? + field(15)?) / ticks,
        resident_bytes: field(24)? * page,
        virtual_bytes: field(23)?,
        start_time_seconds: btime + field(22)? / ticks,
        open_fds: None,
        max_fds: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with a space and a parenthesis, as proc(5) warns.
        let stat = "4242 (ear shot) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 50 0 0 20 0 9 0 12345 1048576000 2560 18446744073709551615";
        let r = parse_stat(stat, 100.0, 4096.0, 1_700_000_000.0).unwrap();
        assert_eq!(r.cpu_seconds, 3.0);
        assert_eq!(r.start_time_seconds, 1_700_000_000.0 + 123.45);
        assert_eq!(r.virtual_bytes, 1_048_576_000.0);
        assert_eq!(r.resident_bytes, 2560.0 * 4096.0);
        assert!(parse_stat("garbage", 100.0, 4096.0, 0.0).is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read() {
        let r = read().expect("/proc/self");
        assert!(r.resident_bytes > 0.0 && r.start_time_seconds > 1e9);
        assert!(r.open_fds.unwrap() >= 3.0 && r.max_fds.unwrap() >= r.open_fds.unwrap());
    }
}
