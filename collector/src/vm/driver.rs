//! Runs the VM sources: one task per endpoint, found again every `rescan`, each read once per
//! interval with a timeout; readings become samples through a per-source [`RateTracker`].
//!
//! A source that fails writes a [`CollectorHealth`] record (unhealthy, with the message and
//! the retry delay), backs off exponentially from the interval up to [`MAX_BACKOFF`], writes
//! another record at each retry while it keeps failing, and one (healthy) when it recovers. It
//! never holds up another source: each has its own task, and a read that does not answer
//! within the timeout counts as a failure.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleetmind_schema::{CollectorHealth, Record};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::builtin::{self, BuiltinSource};
use super::debugfs::{CoveredPids, DebugfsConfig, DebugfsSource};
use super::libvirt;
use super::qmp::{QmpSource, QmpSourceConfig};
use super::{RateTracker, SourceError, VmSource};
use fleetmind_schema::VmmKind;

/// Longest wait between two attempts of a failing source.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Settings of the VM collector.
#[derive(Debug, Clone)]
pub struct VmCollectorConfig {
    /// The host this collector runs on (for health records).
    pub host: String,
    /// How often each source is read.
    pub interval: Duration,
    /// How long one read may take.
    pub timeout: Duration,
    /// How often endpoints are looked for again (new VMM hosts, vanished ones).
    pub rescan: Duration,
    /// Directory of the built-in VMM hosts' control sockets; `None` reads none.
    pub builtin_dir: Option<PathBuf>,
    /// KVM's debugfs directory, read as a fallback for any VMM when it exists; `None` never.
    pub debugfs_kvm_dir: Option<PathBuf>,
    /// Root of procfs (vCPU threads and memory of QEMU processes and of processes found
    /// through debugfs).
    pub proc_root: PathBuf,
    /// QMP sockets of QEMU VMs to read (each a monitor of its own, not libvirt's).
    pub qmp_sockets: Vec<PathBuf>,
    /// libvirt's QEMU run directory, scanned for domains with a QMP monitor for fleetmind.
    pub libvirt_run_dir: Option<PathBuf>,
    /// Ask QEMU balloon devices to refresh guest memory statistics this often (seconds).
    pub qmp_guest_stats_interval_s: Option<u32>,
}

/// One endpoint to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Endpoint {
    /// A built-in VMM host's control socket.
    Builtin(PathBuf),
    /// KVM's debugfs directory.
    Debugfs(PathBuf),
    /// A QEMU's QMP socket, configured or found through libvirt.
    Qmp(PathBuf, VmmKind),
}

impl Endpoint {
    fn source(
        &self,
        config: &VmCollectorConfig,
        covered: &Arc<CoveredPids>,
    ) -> Result<Box<dyn VmSource>, SourceError> {
        match self {
            Endpoint::Builtin(socket) => Ok(Box::new(BuiltinSource::new(
                socket.clone(),
                config.timeout,
            )?)),
            Endpoint::Qmp(socket, vmm) => {
                let mut qmp = QmpSourceConfig::new(socket.clone(), config.host.clone());
                qmp.proc_root = config.proc_root.clone();
                qmp.timeout_ms = u64::try_from(config.timeout.as_millis()).unwrap_or(u64::MAX);
                qmp.guest_stats_interval_s = config.qmp_guest_stats_interval_s;
                qmp.vmm = *vmm;
                Ok(Box::new(QmpSource::new(qmp)))
            }
            Endpoint::Debugfs(dir) => Ok(Box::new(DebugfsSource::new(DebugfsConfig {
                kvm_dir: dir.clone(),
                proc_root: config.proc_root.clone(),
                host: config.host.clone(),
                covered: Arc::clone(covered),
            }))),
        }
    }
}

/// The endpoints to read now.
fn endpoints(config: &VmCollectorConfig) -> Vec<Endpoint> {
    let mut out = Vec::new();
    if let Some(dir) = &config.builtin_dir {
        out.extend(builtin::discover(dir).into_iter().map(Endpoint::Builtin));
    }
    out.extend(
        config
            .qmp_sockets
            .iter()
            .map(|s| Endpoint::Qmp(s.clone(), VmmKind::Qemu)),
    );
    if let Some(run_dir) = &config.libvirt_run_dir {
        match libvirt::discover(run_dir) {
            Ok(domains) => {
                for domain in domains {
                    match domain.qmp_socket() {
                        Some(socket) => {
                            out.push(Endpoint::Qmp(socket.to_path_buf(), VmmKind::Libvirt));
                        }
                        None => tracing::debug!(
                            domain = %domain.name,
                            "libvirt domain without a QMP monitor for fleetmind; not read"
                        ),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot scan libvirt's run directory"),
        }
    }
    if let Some(dir) = &config.debugfs_kvm_dir
        && DebugfsSource::available(dir)
    {
        out.push(Endpoint::Debugfs(dir.clone()));
    }
    out
}

/// Runs every source until `shutdown` turns true; records go to `out`.
pub async fn run_vm_collector(
    config: VmCollectorConfig,
    out: mpsc::Sender<Record>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: HashMap<Endpoint, (watch::Sender<bool>, JoinHandle<()>)> = HashMap::new();
    let covered = Arc::new(CoveredPids::default());
    tracing::info!(interval = ?config.interval, builtin_dir = ?config.builtin_dir, "VM collector started");
    loop {
        let desired: HashSet<Endpoint> = endpoints(&config).into_iter().collect();
        running.retain(|endpoint, (stop, _)| {
            let keep = desired.contains(endpoint);
            if !keep {
                tracing::info!(?endpoint, "VM source gone; no longer read");
                let _ = stop.send(true);
            }
            keep
        });
        for endpoint in desired {
            if running.contains_key(&endpoint) {
                continue;
            }
            // Every source but the debugfs fallback tells it which processes it covers.
            let marks = (!matches!(endpoint, Endpoint::Debugfs(_))).then(|| Arc::clone(&covered));
            match endpoint.source(&config, &covered) {
                Ok(source) => {
                    tracing::info!(source = %source.name(), "VM source found");
                    let (stop, stopped) = watch::channel(false);
                    let task = tokio::spawn(run_source(
                        source,
                        config.clone(),
                        out.clone(),
                        stopped,
                        marks,
                    ));
                    running.insert(endpoint, (stop, task));
                }
                Err(e) => tracing::error!(?endpoint, error = %e, "cannot set up VM source"),
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            () = tokio::time::sleep(config.rescan) => {}
        }
    }
    for (stop, _) in running.values() {
        let _ = stop.send(true);
    }
    for (_, (_, task)) in running {
        let _ = task.await;
    }
    tracing::info!("VM collector stopped");
}

fn health(
    config: &VmCollectorConfig,
    source: &str,
    failure: Option<(&SourceError, u32, Duration)>,
) -> Record {
    Record::CollectorHealth(CollectorHealth {
        ts: fleetmind_schema::now_ms(),
        host: config.host.clone(),
        collector: "vm".into(),
        source: source.to_owned(),
        healthy: failure.is_none(),
        message: failure.map(|(e, _, _)| e.message.clone()),
        consecutive_failures: failure.map_or(0, |(_, n, _)| n),
        retry_in_ms: failure.map(|(_, _, d)| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    })
}

/// Backoff after `failures` failures in a row: the interval, doubled each time, capped.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    interval.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Sends `record` unless stopped first; returns false when the collector should end.
async fn send(
    out: &mpsc::Sender<Record>,
    stop: &mut watch::Receiver<bool>,
    record: Record,
) -> bool {
    tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => false,
        sent = out.send(record) => sent.is_ok(),
    }
}

async fn run_source(
    mut source: Box<dyn VmSource>,
    config: VmCollectorConfig,
    out: mpsc::Sender<Record>,
    mut stop: watch::Receiver<bool>,
    covered: Option<Arc<CoveredPids>>,
) {
    let name = source.name();
    let mut tracker = RateTracker::new();
    let mut failures = 0u32;
    let mut ticker = tokio::time::interval(config.interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            _ = ticker.tick() => {}
        }
        let result = match tokio::time::timeout(config.timeout, source.read()).await {
            Ok(result) => result,
            Err(_) => Err(SourceError::new(format!(
                "{name}: no answer within {:?}",
                config.timeout
            ))),
        };
        match result {
            Ok(readings) => {
                if failures > 0 {
                    tracing::info!(source = %name, failures, "VM source recovered");
                    failures = 0;
                    if !send(&out, &mut stop, health(&config, &name, None)).await {
                        break;
                    }
                }
                let live: HashSet<String> = readings.iter().map(|r| r.vm.clone()).collect();
                if let Some(covered) = &covered {
                    for pid in readings.iter().filter_map(|r| r.vmm_pid) {
                        covered.mark(pid);
                    }
                }
                for reading in readings {
                    if let Some(sample) = tracker.update(reading)
                        && !send(&out, &mut stop, Record::VmSample(sample)).await
                    {
                        return;
                    }
                }
                tracker.retain(&live);
            }
            Err(error) => {
                failures += 1;
                let delay = backoff(config.interval, failures);
                if failures == 1 {
                    tracing::warn!(source = %name, error = %error, retry_in = ?delay, "VM source failing");
                } else {
                    tracing::debug!(source = %name, error = %error, failures, "VM source still failing");
                }
                let record = health(&config, &name, Some((&error, failures, delay)));
                if !send(&out, &mut stop, record).await {
                    break;
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    () = tokio::time::sleep(delay) => {}
                }
                ticker.reset_immediately();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_interval_and_is_capped() {
        let s = Duration::from_secs(1);
        assert_eq!(backoff(s, 1), s);
        assert_eq!(backoff(s, 2), 2 * s);
        assert_eq!(backoff(s, 4), 8 * s);
        assert_eq!(backoff(s, 6), MAX_BACKOFF);
        assert_eq!(backoff(s, 1000), MAX_BACKOFF);
    }

    #[test]
    fn health_records_say_what_failed_and_when_to_retry() {
        let config = VmCollectorConfig {
            host: "h".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rescan: Duration::from_secs(5),
            builtin_dir: None,
            debugfs_kvm_dir: None,
            proc_root: PathBuf::from("/proc"),
            qmp_sockets: Vec::new(),
            libvirt_run_dir: None,
            qmp_guest_stats_interval_s: None,
        };
        let e = SourceError::new("x.sock: connect: No such file");
        let Record::CollectorHealth(h) = health(
            &config,
            "builtin:x.sock",
            Some((&e, 3, Duration::from_secs(4))),
        ) else {
            panic!("not a health record");
        };
        assert!(!h.healthy);
        assert_eq!(h.consecutive_failures, 3);
        assert_eq!(h.retry_in_ms, Some(4000));
        assert_eq!(h.message.as_deref(), Some("x.sock: connect: No such file"));
        let Record::CollectorHealth(h) = health(&config, "builtin:x.sock", None) else {
            panic!("not a health record");
        };
        assert!(h.healthy && h.message.is_none() && h.retry_in_ms.is_none());
    }
}
