//! Helpers for the cross-crate tests: run the real `fleetmind` binary and talk to it over HTTP.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fleetmind")
}

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    pub base: String,
    pub data_dir: PathBuf,
}

impl Daemon {
    /// Starts `fleetmind run` without the demo fleet on a free loopback port with `data_dir`,
    /// and returns once the daemon has announced its address (it prints it after binding).
    pub fn start(data_dir: &Path, extra: &[&str]) -> Daemon {
        let mut args = extra.to_vec();
        args.push("--no-demo");
        Self::start_role("run", data_dir, &args)
    }

    /// Starts `fleetmind run` with whatever demo fleet its config asks for.
    pub fn start_with_demo(data_dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_role("run", data_dir, extra)
    }

    /// Starts `fleetmind <role>` (`run` or `server`) the same way.
    pub fn start_role(role: &str, data_dir: &Path, extra: &[&str]) -> Daemon {
        let mut child = Command::new(bin())
            .args([role, "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("FLEETMIND_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fleetmind");
        let base = announced_url(&mut child, "API and dashboard on ");
        Daemon {
            child,
            base,
            data_dir: data_dir.to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -TERM failed");
        self.child.wait().expect("wait for exit")
    }
}

/// Reads the child's stdout up to the line that announces its address after `marker`, then
/// keeps draining stdout in the background so the child never blocks on a full pipe.
fn announced_url(child: &mut Child, marker: &str) -> String {
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("process exited before announcing its address")
            .expect("read stdout");
        if let Some(rest) = line.split(marker).nth(1) {
            let url = rest
                .split(['/', ','].as_ref())
                .take(3)
                .collect::<Vec<_>>()
                .join("/");
            break url;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    url
}

/// A running `fleetmind agent`.
pub struct Agent {
    pub child: Child,
    pub base: String,
}

impl Agent {
    /// Starts an agent with `config` and returns once its action API is listening.
    pub fn start(config: &Path) -> Agent {
        let mut child = Command::new(bin())
            .args(["agent", "--config"])
            .arg(config)
            .env("FLEETMIND_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fleetmind agent");
        let base = announced_url(&mut child, "action API on ");
        Agent { child, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` until it returns `Some`, or panics with `what` after `limit`. Waiting on an
/// observable condition of the daemon, not on time.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `fleetmind vmm --exit-with-stdin` host; `stop` closes its stdin and waits, dropping it
/// kills it.
pub struct VmmHost {
    pub child: Child,
    /// The line it announced its socket with.
    pub announced: String,
}

impl VmmHost {
    /// Starts host `name` with its socket under `data_dir`; returns once it has announced it.
    pub fn start(name: &str, data_dir: &str) -> VmmHost {
        let mut child = Command::new(bin())
            .args([
                "vmm",
                "--name",
                name,
                "--data-dir",
                data_dir,
                "--exit-with-stdin",
            ])
            .env("FLEETMIND_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn fleetmind vmm");
        let stdout = child.stdout.take().expect("stdout piped");
        let announced = BufReader::new(stdout)
            .lines()
            .next()
            .expect("the host announces its socket")
            .expect("read stdout");
        VmmHost { child, announced }
    }

    /// Closes its stdin (its signal to stop its VMs and exit) and waits for the exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        drop(self.child.stdin.take());
        self.child.wait().expect("wait for the VMM host")
    }
}

impl Drop for VmmHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `fleetmind <args>` to completion: (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("FLEETMIND_LOG", "warn")
        .output()
        .expect("run fleetmind");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether process `pid` is gone (or a zombie nobody has reaped yet).
pub fn process_gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// The JSON envelope of a host sample of `host` at `ts` (ms), as agents post them.
pub fn host_sample_json(host: &str, ts: u64) -> Value {
    serde_json::json!({
        "schema_version": 1,
        "kind": "host_sample",
        "ts": ts,
        "host": host,
        "interval_ms": 1000,
        "cpus": 2,
        "cpu": {"user_frac": 0.1, "system_frac": 0.1, "iowait_frac": 0.0, "steal_frac": 0.0,
                "idle_frac": 0.8, "busy_frac": 0.2},
        "per_cpu": [],
        "load1": 0.5,
        "mem": {"total_bytes": 1000, "free_bytes": 500, "available_bytes": 600, "cached_bytes": 50,
                "used_frac": 0.4, "swap_total_bytes": 0, "swap_free_bytes": 0,
                "hugepages_total": 0, "hugepages_free": 0, "hugepage_size_bytes": 2097152},
        "psi": null,
        "vmstat": {"pgfault_per_s": 0.0, "pgmajfault_per_s": 0.0, "pswpin_per_s": 0.0,
                   "pswpout_per_s": 0.0, "numa_miss_per_s": 0.0},
        "numa": []
    })
}

/// GET returning (status, JSON body).
pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.expect("JSON body");
    (status, body)
}

/// Runs SQL through the API; panics unless it answers 200.
pub async fn sql(client: &reqwest::Client, daemon: &Daemon, query: &str) -> Value {
    let url = reqwest::Url::parse_with_params(&daemon.url("/api/v1/query"), &[("sql", query)])
        .expect("url");
    let (status, body) = get_json(client, url.as_str()).await;
    assert_eq!(status, 200, "{query}: {body}");
    body
}

/// The single number of a `select count(*) ...` query (rows are arrays in column order).
pub async fn count(client: &reqwest::Client, daemon: &Daemon, query: &str) -> u64 {
    let body = sql(client, daemon, query).await;
    body["rows"][0][0]
        .as_u64()
        .unwrap_or_else(|| panic!("no count in {body}"))
}

/// Waits until the engine has ingested everything the event log holds.
pub async fn wait_engine_caught_up(client: &reqwest::Client, daemon: &Daemon) {
    let url = daemon.url("/api/v1/health");
    wait_for(
        "engine to catch up with the event log",
        Duration::from_secs(60),
        || async {
            let (_, h) = get_json(client, &url).await;
            let end = h["stream"]["end_offset"].as_u64()?;
            let next = h["engine"]["next_offset"].as_u64()?;
            (next == end).then_some(())
        },
    )
    .await;
}
