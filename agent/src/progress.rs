//! Progress for long work: a bar on a terminal, periodic log lines elsewhere (services, CI).

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: AtomicU64,
    label: &'static str,
}

impl Progress {
    pub fn new(total: u64, label: &'static str) -> Self {
        let bar = (total > 0 && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) =
                ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} ({per_sec}, eta {eta})")
            {
                bar.set_style(style);
            }
            bar.set_message(label);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            total,
            done: AtomicU64::new(0),
            label,
        }
    }

    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None => {
                let step = (self.total / 10).max(1000);
                if done / step != (done - n) / step {
                    tracing::info!(done, total = self.total, "{}", self.label);
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
