//! The demo fleet's VMM hosts: `fleetmind run` starts one `fleetmind vmm --demo` child process
//! per host, restarts one that dies (with backoff), and stops them when it stops.
//!
//! Each child gets a pipe as its standard input and exits when the pipe closes, so the hosts
//! go away with the daemon even when it is killed with SIGKILL; on a normal shutdown the daemon
//! closes the pipe and waits for them to stop their VMs.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;

/// How long a host gets to stop its VMs before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Restart backoff bounds; a host that ran this long is considered healthy again.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// One host as the health endpoint shows it.
#[derive(Debug, Clone, Serialize)]
struct HostStatus {
    name: String,
    socket: PathBuf,
    state: &'static str,
    pid: Option<u32>,
    restarts: u32,
    last_exit: Option<String>,
}

/// The running supervisors.
#[derive(Debug)]
pub struct VmmHosts {
    hosts: Arc<Mutex<Vec<HostStatus>>>,
    tasks: JoinSet<()>,
}

impl VmmHosts {
    /// Starts the demo hosts of `config`.
    ///
    /// # Errors
    ///
    /// If this executable's path cannot be found.
    pub fn start(config: &Config, shutdown: &watch::Receiver<bool>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("cannot find this executable to start VMM hosts: {e}"))?;
        let dir = config.vmm_socket_dir();
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        for index in 0..config.vmm.demo_hosts {
            let name = format!("demo-host-{}", index + 1);
            let socket = crate::vmm_host::host_socket(&dir, &name);
            let mut command = Command::new(&exe);
            command
                .arg("vmm")
                .arg("--name")
                .arg(&name)
                .arg("--socket")
                .arg(&socket)
                .arg("--demo")
                .arg("--demo-index")
                .arg(index.to_string())
                .arg("--demo-vms")
                .arg(config.vmm.demo_vms_per_host.to_string())
                .arg("--day-length")
                .arg(humantime::format_duration(config.vmm.demo_day_length).to_string())
                .arg("--exit-with-stdin")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let slot = {
                let mut all = hosts.lock().unwrap_or_else(PoisonError::into_inner);
                all.push(HostStatus {
                    name: name.clone(),
                    socket,
                    state: "starting",
                    pid: None,
                    restarts: 0,
                    last_exit: None,
                });
                all.len() - 1
            };
            tasks.spawn(supervise(
                command,
                Arc::clone(&hosts),
                slot,
                shutdown.clone(),
            ));
        }
        Ok(Self { hosts, tasks })
    }

    /// A status closure for the health endpoint.
    pub fn status_fn(&self) -> impl Fn() -> Value + Send + Sync + 'static {
        let hosts = Arc::clone(&self.hosts);
        move || status_of(&hosts)
    }

    /// Waits for every host to stop (after shutdown was signalled).
    pub async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

fn status_of(hosts: &Mutex<Vec<HostStatus>>) -> Value {
    let hosts = hosts.lock().unwrap_or_else(PoisonError::into_inner);
    json!({ "demo": true, "hosts": &*hosts })
}

fn update(hosts: &Mutex<Vec<HostStatus>>, slot: usize, f: impl FnOnce(&mut HostStatus)) {
    if let Some(host) = hosts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(slot)
    {
        f(host);
    }
}

/// Runs one host, restarting it when it dies, until shutdown.
async fn supervise(
    mut command: Command,
    hosts: Arc<Mutex<Vec<HostStatus>>>,
    slot: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    let name = hosts.lock().unwrap_or_else(PoisonError::into_inner)[slot]
        .name
        .clone();
    while !*shutdown.borrow() {
        let started = Instant::now();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(host = %name, error = %e, "cannot start VMM host");
                update(&hosts, slot, |h| {
                    h.state = "restarting";
                    h.last_exit = Some(format!("spawn failed: {e}"));
                });
                if wait_or_shutdown(&mut shutdown, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        // Held, not left in `child`: `Child::wait` closes a stdin it still owns, which would
        // tell the host to stop at once.
        let stdin = child.stdin.take();
        let pid = child.id();
        tracing::info!(host = %name, pid, "VMM host started");
        update(&hosts, slot, |h| {
            h.state = "running";
            h.pid = pid;
        });
        let exit = tokio::select! {
            exit = child.wait() => Some(exit),
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let Some(exit) = exit else {
            // Closing stdin asks the host to stop its VMs and exit.
            drop(stdin);
            match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
                Ok(_) => tracing::info!(host = %name, "VMM host stopped"),
                Err(_) => {
                    tracing::warn!(host = %name, "VMM host did not stop in time; killing it");
                    let _ = child.kill().await;
                }
            }
            update(&hosts, slot, |h| {
                h.state = "stopped";
                h.pid = None;
            });
            break;
        };
        let why = match exit {
            Ok(status) => status.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        tracing::error!(host = %name, pid, exit = %why, "VMM host died; restarting");
        update(&hosts, slot, |h| {
            h.state = "restarting";
            h.pid = None;
            h.restarts += 1;
            h.last_exit = Some(why);
        });
        if started.elapsed() >= HEALTHY_AFTER {
            backoff = BACKOFF_MIN;
        }
        if wait_or_shutdown(&mut shutdown, backoff).await {
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Sleeps `delay` unless shutdown comes first; returns whether it did.
async fn wait_or_shutdown(shutdown: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        _ = shutdown.wait_for(|s| *s) => true,
    }
}
