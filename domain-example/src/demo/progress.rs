//! The live progress line (on stderr; hidden when stderr is not a terminal).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use inventory::ReadModels;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::counters::Counters;
use super::output::count;

const TICK: Duration = Duration::from_millis(250);

/// Redraws the progress line until [`finish`](Progress::finish) is called.
pub(crate) struct Progress {
    done: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts the line for a run of `duration`.
    pub(crate) fn start(duration: Duration, counters: Arc<Counters>, views: ReadModels) -> Self {
        let total_ms = duration.as_millis().max(1) as u64;
        let bar = ProgressBar::with_draw_target(Some(total_ms), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{elapsed:>3} [{bar:12}] {wide_msg}")
            .map(|style| style.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        let (done, mut finished) = oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut ticks = tokio::time::interval_at(started + TICK, TICK);
            let (mut last_commands, mut last_at, mut rate) = (0u64, started, 0.0f64);
            loop {
                tokio::select! {
                    _ = &mut finished => break,
                    _ = ticks.tick() => {}
                }
                let now = Instant::now();
                let commands = counters.commands.load(Ordering::Relaxed);
                let seconds = now.duration_since(last_at).as_secs_f64();
                if seconds > 0.0 {
                    // Smoothed, so the number is readable while it changes.
                    let current = (commands - last_commands) as f64 / seconds;
                    rate = if rate == 0.0 {
                        current
                    } else {
                        0.7 * rate + 0.3 * current
                    };
                }
                (last_commands, last_at) = (commands, now);
                let low = views.low_stock().len().unwrap_or(0);
                let lag = match views.lag().await {
                    Ok(lag) => count(lag),
                    Err(_) => "?".into(),
                };
                bar.set_position((now.duration_since(started).as_millis() as u64).min(total_ms));
                bar.set_message(format!(
                    "{} cmd/s │ committed {} │ rejected {} │ low {} │ lag {}",
                    count(rate as u64),
                    count(counters.committed.load(Ordering::Relaxed)),
                    count(counters.rejected.load(Ordering::Relaxed)),
                    count(low as u64),
                    lag,
                ));
            }
            bar.finish_and_clear();
        });
        Progress { done, task }
    }

    /// Stops and clears the line.
    pub(crate) async fn finish(self) {
        let _ = self.done.send(());
        let _ = self.task.await;
    }
}
