//! Runs a [`HostCollector`] on a timer and sends its samples down a channel.
//!
//! The daemon spawns [`run_host_collector`] as a task and reads the samples from the other end
//! of the channel. A failing read does not stop it: the error is logged and the next tick tries
//! again, because the usual causes (a file briefly unreadable, a kernel quirk) pass, and a
//! collector that exits silently is worse than one that complains. Reads are a few small
//! pseudo-files that never touch a disk, so they run on the async task directly.

use std::collections::HashMap;
use std::time::Duration;

use fleetmind_schema::HostSample;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::{HostCollector, SampleError};

/// Why [`run_host_collector`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectorExit {
    /// Shutdown was signalled (or its sender dropped).
    Shutdown,
    /// The receiver of the samples is gone.
    SinkClosed,
}

/// Samples `collector` every `interval` and sends each sample to `samples`, until `shutdown`
/// turns `true` (or its sender is dropped) or the receiver of `samples` is dropped.
///
/// Ticks that come late (a slow consumer, a paused process) are not made up for in a burst:
/// the schedule restarts from the late tick ([`MissedTickBehavior::Delay`]). The first tick
/// primes the counters and sends nothing. An `interval` of zero is taken as 1 ms.
///
/// A sampling error is logged at ERROR the first time it is seen and again at most every ten
/// minutes while it lasts; repeats in between are at DEBUG.
pub async fn run_host_collector(
    mut collector: HostCollector,
    interval: Duration,
    samples: mpsc::Sender<HostSample>,
    mut shutdown: watch::Receiver<bool>,
) -> CollectorExit {
    let host = collector.config().host.clone();
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut errors = ErrorLog::default();
    tracing::info!(%host, ?interval, "host collector started");
    let exit = loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break CollectorExit::Shutdown,
            _ = ticker.tick() => {}
        }
        match collector.sample(fleetmind_schema::now_ms()) {
            Ok(None) => {}
            Ok(Some(sample)) => {
                if let Some(failed) = errors.recovered() {
                    tracing::info!(%host, failed, "host sampling recovered");
                }
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => break CollectorExit::Shutdown,
                    sent = samples.send(sample) => if sent.is_err() {
                        break CollectorExit::SinkClosed;
                    },
                }
            }
            Err(error) => {
                if errors.should_escalate(&error, Instant::now()) {
                    tracing::error!(%host, error = %error, source = ?std::error::Error::source(&error), "host sampling failed");
                } else {
                    tracing::debug!(%host, error = %error, "host sampling failed again");
                }
            }
        }
    };
    tracing::info!(%host, ?exit, "host collector stopped");
    exit
}

/// Remembers which errors were logged loudly, and when.
#[derive(Debug, Default)]
struct ErrorLog {
    /// Error message -> when it was last logged at ERROR.
    escalated: HashMap<String, Instant>,
    /// Failed samples since the last success.
    failing: u64,
}

impl ErrorLog {
    /// An error repeats at ERROR no more often than this.
    const REPEAT_AFTER: Duration = Duration::from_secs(600);
    /// Distinct messages remembered; beyond it, new ones go to DEBUG (a file whose garbage
    /// changes each read must not flood the log either).
    const MAX_REMEMBERED: usize = 64;

    /// Records a failure and says whether to log it at ERROR.
    fn should_escalate(&mut self, error: &SampleError, now: Instant) -> bool {
        self.failing += 1;
        let key = error.to_string();
        if let Some(last) = self.escalated.get_mut(&key) {
            if now.saturating_duration_since(*last) < Self::REPEAT_AFTER {
                return false;
            }
            *last = now;
            return true;
        }
        if self.escalated.len() >= Self::MAX_REMEMBERED {
            return false;
        }
        self.escalated.insert(key, now);
        true
    }

    /// Records a success; returns the number of failures it ends, if any.
    fn recovered(&mut self) -> Option<u64> {
        (self.failing > 0).then(|| std::mem::take(&mut self.failing))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::HostCollectorConfig;

    fn missing(name: &str) -> SampleError {
        SampleError::Missing {
            path: PathBuf::from(name),
        }
    }

    #[test]
    fn each_distinct_error_is_escalated_once_then_again_after_a_while() {
        let mut log = ErrorLog::default();
        let t0 = Instant::now();
        assert!(log.should_escalate(&missing("/proc/stat"), t0));
        assert!(!log.should_escalate(&missing("/proc/stat"), t0 + Duration::from_secs(1)));
        assert!(log.should_escalate(&missing("/proc/meminfo"), t0 + Duration::from_secs(2)));
        assert!(!log.should_escalate(&missing("/proc/stat"), t0 + Duration::from_secs(3)));
        assert!(log.should_escalate(&missing("/proc/stat"), t0 + Duration::from_secs(601)));
        assert_eq!(log.recovered(), Some(5));
        assert_eq!(log.recovered(), None);
    }

    #[test]
    fn remembered_errors_are_bounded() {
        let mut log = ErrorLog::default();
        let now = Instant::now();
        for i in 0..ErrorLog::MAX_REMEMBERED {
            assert!(log.should_escalate(&missing(&i.to_string()), now));
        }
        assert!(!log.should_escalate(&missing("one more"), now));
        assert_eq!(log.escalated.len(), ErrorLog::MAX_REMEMBERED);
    }

    fn empty_root_collector(dir: &std::path::Path) -> HostCollector {
        HostCollector::new(HostCollectorConfig {
            host: "h".into(),
            proc_root: dir.join("proc"),
            sys_root: dir.join("sys"),
        })
    }

    #[tokio::test]
    async fn keeps_going_through_errors_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = mpsc::channel(4);
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(run_host_collector(
            empty_root_collector(dir.path()),
            Duration::from_millis(1),
            tx,
            shutdown,
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished(), "errors must not stop the collector");
        stop.send(true).expect("task listens");
        let exit = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops promptly")
            .expect("no panic");
        assert_eq!(exit, CollectorExit::Shutdown);
        assert!(rx.try_recv().is_err(), "no sample from an empty root");
    }

    #[tokio::test]
    async fn dropped_shutdown_sender_stops_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, _rx) = mpsc::channel(4);
        let (stop, shutdown) = watch::channel(false);
        drop(stop);
        let exit = run_host_collector(
            empty_root_collector(dir.path()),
            Duration::from_secs(3600),
            tx,
            shutdown,
        )
        .await;
        assert_eq!(exit, CollectorExit::Shutdown);
    }
}
