//! Build progress: a bar on a terminal, plain log lines (every 10 %) otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: usize,
    last_decile: AtomicUsize,
}

impl Progress {
    pub fn new(label: &str, total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_message(label.to_string());
            b
        });
        Self {
            bar,
            label: label.to_string(),
            total: total.max(1),
            last_decile: AtomicUsize::new(0),
        }
    }

    pub fn set(&self, done: usize) {
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            return;
        }
        let decile = done * 10 / self.total;
        if decile > self.last_decile.swap(decile, Ordering::Relaxed) {
            tracing::info!("{}: {done}/{} ({}%)", self.label, self.total, decile * 10);
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
