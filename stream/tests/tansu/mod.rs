//! A real Kafka-protocol broker for the Kafka backend's tests: tansu 0.6 on a free loopback
//! port with in-memory storage, killed when its guard is dropped.
//!
//! The binary comes from `$FLEETMIND_TANSU` or `/var/cache/fleetmind/tansu-0.6/bin/tansu`
//! (installed by `scripts/install-broker`); where it is missing the test records a skip.

#![allow(dead_code)] // each test crate uses a different subset

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetmind_stream::kafka::{KafkaConfig, ensure_topics};

/// Where the broker binary is looked for when `FLEETMIND_TANSU` is not set.
pub const DEFAULT_TANSU: &str = "/var/cache/fleetmind/tansu-0.6/bin/tansu";

/// Prints "SKIP <test>: <reason>" and appends "<test>: <reason>" to `$FLEETMIND_SKIP_LOG` (the
/// format of vmm-probe's `record_skip`, which this crate cannot depend on).
pub fn record_skip(test: &str, reason: &str) {
    eprintln!("SKIP {test}: {reason}");
    if let Some(path) = std::env::var_os("FLEETMIND_SKIP_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        // One write(2) per line, so that tests skipping in parallel do not interleave.
        let _ = file.write_all(format!("{test}: {reason}\n").as_bytes());
    }
}

/// The tansu binary, or `None` after recording the skip of `test`.
pub fn tansu_or_skip(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("FLEETMIND_TANSU")
        .map_or_else(|| PathBuf::from(DEFAULT_TANSU), PathBuf::from);
    if path.is_file() {
        Some(path)
    } else {
        record_skip(
            test,
            &format!(
                "no tansu broker at {} (run scripts/install-broker or set FLEETMIND_TANSU)",
                path.display()
            ),
        );
        None
    }
}

/// A running tansu broker; dropping it kills the process (and resumes it first if stopped).
#[derive(Debug)]
pub struct Broker {
    child: Child,
    /// `127.0.0.1:PORT`, for `KafkaConfig::brokers`.
    pub address: String,
    /// The broker's stdout and stderr.
    pub log_path: PathBuf,
}

impl Broker {
    /// Starts tansu on a free loopback port with memory storage and waits until it answers a
    /// metadata request (deadline 30 s).
    pub async fn start(binary: &Path, log_dir: &Path) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log_path = log_dir.join(format!("tansu-{port}.log"));
        let log = std::fs::File::create(&log_path).expect("broker log file");
        let child = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .expect("start tansu");
        let broker = Broker {
            child,
            address: format!("127.0.0.1:{port}"),
            log_path,
        };
        broker.wait_ready(Duration::from_secs(30)).await;
        broker
    }

    async fn wait_ready(&self, limit: Duration) {
        let mut config = KafkaConfig::new(&self.address);
        config.admin_timeout = Duration::from_secs(2);
        let deadline = Instant::now() + limit;
        loop {
            match ensure_topics(&config, &[]).await {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("waiting for tansu on {}: {e}", self.address);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!(
                    "tansu on {} did not answer within {limit:?}: {e}; log:\n{}",
                    self.address,
                    std::fs::read_to_string(&self.log_path).unwrap_or_default()
                ),
            }
        }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes the broker (SIGSTOP): connections stay open, requests go unanswered.
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen broker (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {} failed", self.pid());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
