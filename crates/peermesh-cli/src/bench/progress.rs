//! Progress display on stderr (hidden when stderr is not a terminal or with `--quiet`).

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The overall bar (one tick per measured step) and one bar for the current phase.
#[derive(Clone)]
pub(crate) struct Progress {
    multi: MultiProgress,
    overall: ProgressBar,
}

impl Progress {
    /// A display for `steps` measured steps.
    pub(crate) fn new(steps: u64, quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(steps));
        overall.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] steps {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        overall.enable_steady_tick(Duration::from_millis(200));
        Self { multi, overall }
    }

    /// Names what runs now.
    pub(crate) fn set_step(&self, what: &str) {
        self.overall.set_message(what.to_owned());
    }

    /// One measured step finished.
    pub(crate) fn step_done(&self) {
        self.overall.inc(1);
    }

    /// A bar counting `n` connections being opened.
    pub(crate) fn counter(&self, what: &str, n: u64) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(n));
        bar.set_style(
            ProgressStyle::with_template("  {msg} {bar:30} {pos}/{len} ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(what.to_owned());
        bar
    }

    /// A bar that fills over `total`; it stops by itself at `total` or when finished.
    pub(crate) fn timed(&self, what: &str, total: Duration) -> ProgressBar {
        let ms = u64::try_from(total.as_millis()).unwrap_or(u64::MAX).max(1);
        let bar = self.multi.add(ProgressBar::new(ms));
        bar.set_style(
            ProgressStyle::with_template("  {msg} {bar:30} {elapsed}/{duration}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(what.to_owned());
        let ticker = bar.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            while !ticker.is_finished() && start.elapsed() < total {
                interval.tick().await;
                ticker.set_position(
                    u64::try_from(start.elapsed().as_millis())
                        .unwrap_or(u64::MAX)
                        .min(ms),
                );
            }
        });
        bar
    }

    /// Prints a line above the bars.
    pub(crate) fn println(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// Removes the bars.
    pub(crate) fn finish(&self) {
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }
}

/// Removes a phase bar.
pub(crate) fn done(bar: &ProgressBar) {
    bar.finish_and_clear();
}
