//! QEMU VMs through their QMP sockets: one [`QmpSource`] per socket, one VM per QEMU.
//!
//! QEMU tells most of what a [`VmReading`] needs over QMP, the host kernel the rest:
//!
//! | field | from |
//! |---|---|
//! | `name` | `query-name`; when QEMU has no `-name`: [`QmpSourceConfig::name`], else the socket's file stem |
//! | `instance` | QEMU's pid, from the socket's peer credentials (`SO_PEERCRED`; QMP has no `query-pid`) |
//! | `exits`, vCPU `exits` | `query-stats` targets `vm` and `vcpu`, provider `kvm` (QEMU 7.1+; see [`stats`] for which counters); empty under TCG |
//! | vCPU `tid` | `query-cpus-fast` (`thread-id`), matched to `query-stats` by `qom-path` |
//! | vCPU `run_ns`, `wait_ns`, `host_cpu`, `affinity` | procfs of that thread (`schedstat`, `stat`, `status`) |
//! | `mem_bytes` | `query-memory-size-summary`: `base-memory` + `plugged-memory` |
//! | `balloon_actual_bytes` | `query-balloon` (`None` when the VM has no balloon) |
//! | `balloon_target_bytes` | what the last [`QmpSource::balloon`] asked for; QEMU does not report the target, so when this source did not set it (or QEMU restarted since), the actual size |
//! | `guest_free_bytes` | `qom-get` of the balloon device's `guest-stats` (`stat-free-memory`); only when the guest has reported (`last-update` > 0), which needs `guest-stats-polling-interval` set ([`QmpSourceConfig::guest_stats_interval_s`] does that on connect) |
//! | `rss_bytes`, `numa_resident` | `/proc/<pid>/status` `VmRSS`; `numa_maps` of the guest RAM mapping (the read-write mapping of guest size, else the largest anonymous one; see the `host` module) |
//!
//! The source keeps its connection between reads. A failed connection is dropped and the next
//! read connects again, so a QEMU that starts after the collector is picked up by the same
//! source; when QEMU closed a kept connection (it restarted) the read reconnects at once. An
//! error answer to one command does not drop the connection. A QMP socket serves one
//! client at a time: the source must be the only client of the socket it reads (give QEMU a
//! second `-qmp` for it when something else, e.g. libvirt, holds the first; see
//! [`crate::vm::libvirt`]).

mod client;
mod host;
pub mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetmind_schema::VmmKind;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

pub use client::{QemuVersion, QmpClient, QmpError};
use stats::{CounterSchema, ExitStats};

use super::{SourceError, VmReading, VmSource};

/// Settings of one [`QmpSource`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QmpSourceConfig {
    /// The QMP socket of the QEMU to read (`-qmp unix:PATH,server=on,wait=off`).
    pub socket: PathBuf,
    /// The host the VM runs on: the `host` of its samples and the first part of its id.
    pub host: String,
    /// Where procfs is mounted (the host's `/proc`, seen from the collector). The QEMU pid
    /// comes from the socket, so this must be the procfs of the collector's pid namespace.
    #[serde(default = "default_proc_root")]
    pub proc_root: PathBuf,
    /// How long to wait for any one answer from QEMU, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The VM's name when QEMU has none (`-name` not given); default the socket's file stem.
    #[serde(default)]
    pub name: Option<String>,
    /// When set, on every connect the balloon device (if any) is asked to refresh the guest's
    /// memory statistics this often, in seconds; without it `guest_free_bytes` only appears
    /// when something else enabled the polling.
    #[serde(default)]
    pub guest_stats_interval_s: Option<u32>,
    /// Which VMM the samples name: `qemu`, or `libvirt` for domains found by
    /// [`crate::vm::libvirt`].
    #[serde(default = "default_vmm")]
    pub vmm: VmmKind,
}

fn default_proc_root() -> PathBuf {
    PathBuf::from("/proc")
}

fn default_timeout_ms() -> u64 {
    2000
}

fn default_vmm() -> VmmKind {
    VmmKind::Qemu
}

impl QmpSourceConfig {
    /// The settings for `socket` on `host` with every other field at its default.
    #[must_use]
    pub fn new(socket: impl Into<PathBuf>, host: impl Into<String>) -> Self {
        Self {
            socket: socket.into(),
            host: host.into(),
            proc_root: default_proc_root(),
            timeout_ms: default_timeout_ms(),
            name: None,
            guest_stats_interval_s: None,
            vmm: default_vmm(),
        }
    }
}

/// One open connection and what was learnt on it (valid as long as the QEMU process is).
#[derive(Debug)]
struct Connection {
    client: QmpClient,
    pid: Option<i32>,
    /// Which `kvm` statistics are counters; `None` until asked.
    schema: Option<CounterSchema>,
    /// Whether this QEMU has `query-stats` (7.1+).
    has_stats: bool,
    /// The balloon device's QOM path: `None` until looked up, `Some(None)` when there is none.
    balloon_device: Option<Option<String>>,
}

/// One QEMU, read through its QMP socket. See the module docs for where each field comes
/// from.
#[derive(Debug)]
pub struct QmpSource {
    config: QmpSourceConfig,
    connection: Option<Connection>,
    /// The balloon target this source set last, with the QEMU pid it was set on.
    balloon_target: Option<(Option<i32>, u64)>,
}

impl QmpSource {
    /// A source for `config.socket`; it connects on the first read.
    #[must_use]
    pub fn new(config: QmpSourceConfig) -> Self {
        Self {
            config,
            connection: None,
            balloon_target: None,
        }
    }

    /// The socket read.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.config.socket
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms.max(1))
    }

    /// The open connection, connecting first when there is none.
    async fn connection(&mut self) -> Result<&mut Connection, QmpError> {
        if self.connection.is_none() {
            let client = QmpClient::connect(&self.config.socket, self.timeout()).await?;
            let pid = client.peer_pid();
            tracing::info!(
                socket = %self.config.socket.display(),
                pid,
                version = ?client.version(),
                "QMP connected"
            );
            let mut connection = Connection {
                client,
                pid,
                schema: None,
                has_stats: true,
                balloon_device: None,
            };
            if let Some(seconds) = self.config.guest_stats_interval_s
                && let Some(device) = balloon_device(&mut connection).await?
            {
                connection
                    .client
                    .set_guest_stats_polling_interval(&device, seconds)
                    .await?;
            }
            self.connection = Some(connection);
        }
        self.connection
            .as_mut()
            .ok_or_else(|| unreachable_state(&self.config.socket))
    }

    /// Runs one QMP command on this source's connection (connecting first if needed) and
    /// returns its `return` value. For tests and remediation, which cannot open a second
    /// connection to the same socket while this source holds it.
    ///
    /// # Errors
    ///
    /// As [`QmpClient::execute`]; a failed connection is dropped (the next call reconnects).
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let result = match self.connection().await {
            Ok(connection) => connection.client.execute(command, arguments).await,
            Err(e) => Err(e),
        };
        self.keep_if_usable(result)
    }

    /// Sets the balloon target to `bytes` (QMP `balloon`) and remembers it as the
    /// `balloon_target_bytes` of later readings.
    ///
    /// # Errors
    ///
    /// As [`QmpClient::balloon`] (`DeviceNotActive` without a balloon).
    pub async fn balloon(&mut self, bytes: u64) -> Result<(), QmpError> {
        let result = match self.connection().await {
            Ok(connection) => {
                let pid = connection.pid;
                connection.client.balloon(bytes).await.map(|()| pid)
            }
            Err(e) => Err(e),
        };
        let pid = self.keep_if_usable(result)?;
        self.balloon_target = Some((pid, bytes));
        Ok(())
    }

    /// Asks the balloon device to refresh the guest's memory statistics every `seconds`.
    /// Returns whether the VM has a balloon device.
    ///
    /// # Errors
    ///
    /// As [`QmpClient::set_guest_stats_polling_interval`].
    pub async fn set_guest_stats_polling_interval(
        &mut self,
        seconds: u32,
    ) -> Result<bool, QmpError> {
        let result = match self.connection().await {
            Ok(connection) => match balloon_device(connection).await {
                Ok(Some(device)) => connection
                    .client
                    .set_guest_stats_polling_interval(&device, seconds)
                    .await
                    .map(|()| true),
                Ok(None) => Ok(false),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.keep_if_usable(result)
    }

    /// Drops the connection after an error that leaves it in an unknown state.
    fn keep_if_usable<T>(&mut self, result: Result<T, QmpError>) -> Result<T, QmpError> {
        if let Err(e) = &result
            && !e.connection_usable()
            && self.connection.take().is_some()
        {
            tracing::info!(socket = %self.config.socket.display(), error = %e.chain(), "QMP connection dropped");
        }
        result
    }

    /// Reads the VM now.
    async fn read_vm(&mut self) -> Result<VmReading, QmpError> {
        let proc_root = self.config.proc_root.clone();
        let fallback_name = self.config.name.clone().unwrap_or_else(|| {
            self.config
                .socket
                .file_stem()
                .map_or_else(|| "qemu".to_string(), |s| s.to_string_lossy().into_owned())
        });
        let host = self.config.host.clone();
        let vmm = self.config.vmm;
        let socket = self.config.socket.clone();
        let remembered_target = self.balloon_target;
        let connection = self.connection().await?;
        let pid = connection.pid;

        let name = connection.client.execute("query-name", None).await?["name"]
            .as_str()
            .map_or(fallback_name, str::to_string);
        let cpus = stats::parse_cpus(&connection.client.execute("query-cpus-fast", None).await?)
            .map_err(|message| QmpError::Protocol {
                path: socket.clone(),
                message,
            })?;
        let (vm_stats, vcpu_stats) = read_stats(connection).await?;
        // The counters' moment: rates divide by differences of this.
        let at = Instant::now();
        let ts_ms = fleetmind_schema::now_ms();

        let memory = connection
            .client
            .execute("query-memory-size-summary", None)
            .await?;
        let mem_bytes = memory["base-memory"]
            .as_u64()
            .unwrap_or(0)
            .saturating_add(memory["plugged-memory"].as_u64().unwrap_or(0));

        let balloon_actual = match connection.client.execute("query-balloon", None).await {
            Ok(answer) => answer["actual"].as_u64(),
            // No balloon device, or its driver is not loaded in the guest yet.
            Err(e) if e.class() == Some("DeviceNotActive") => None,
            Err(e) => return Err(e),
        };
        let guest_free = match balloon_actual {
            Some(_) => guest_free_bytes(connection).await?,
            None => None,
        };
        let balloon_target = balloon_actual.map(|actual| match remembered_target {
            Some((set_on, bytes)) if set_on == pid => bytes,
            _ => actual,
        });

        let vcpus = cpus
            .iter()
            .map(|cpu| {
                host::vcpu_reading(
                    &proc_root,
                    pid,
                    cpu.index,
                    cpu.thread_id,
                    stats::vcpu_exits(&vcpu_stats, &cpu.qom_path),
                )
            })
            .collect();
        let (rss_bytes, numa_resident) = match pid {
            Some(pid) => (
                host::rss_bytes(&proc_root, pid),
                host::guest_numa_resident(
                    &proc_root,
                    pid,
                    memory["base-memory"].as_u64().unwrap_or(0),
                ),
            ),
            None => (0, Vec::new()),
        };
        Ok(VmReading {
            ts_ms,
            at,
            vm: format!("{host}/{name}"),
            host,
            name,
            vmm,
            instance: pid.and_then(|p| u64::try_from(p).ok()).unwrap_or(0),
            vmm_pid: pid.and_then(|p| u32::try_from(p).ok()),
            mem_bytes,
            rss_bytes,
            numa_resident,
            balloon_target_bytes: balloon_target,
            balloon_actual_bytes: balloon_actual,
            guest_free_bytes: guest_free,
            dirty_bytes: None,
            vcpus,
            exits: stats::vm_totals(&vm_stats, &vcpu_stats),
        })
    }
}

fn unreachable_state(socket: &Path) -> QmpError {
    QmpError::Protocol {
        path: socket.to_path_buf(),
        message: "no connection after connecting".into(),
    }
}

/// `query-stats` for the VM and its vCPUs (empty when this QEMU has none, or under TCG).
async fn read_stats(connection: &mut Connection) -> Result<(ExitStats, ExitStats), QmpError> {
    if !connection.has_stats {
        return Ok(Default::default());
    }
    if connection.schema.is_none() {
        connection.schema = Some(
            match connection
                .client
                .execute("query-stats-schemas", Some(json!({ "provider": "kvm" })))
                .await
            {
                Ok(answer) => CounterSchema::parse(&answer),
                Err(e) if e.connection_usable() => CounterSchema::unknown(),
                Err(e) => return Err(e),
            },
        );
    }
    let mut answers = Vec::with_capacity(2);
    for target in ["vm", "vcpu"] {
        match connection
            .client
            .execute("query-stats", Some(json!({ "target": target })))
            .await
        {
            Ok(answer) => answers.push(answer),
            Err(e) if e.class() == Some("CommandNotFound") => {
                connection.has_stats = false;
                return Ok(Default::default());
            }
            Err(e) => return Err(e),
        }
    }
    let schema = connection.schema.clone().unwrap_or_default();
    Ok((
        stats::parse_stats(&answers[0], "vm", &schema),
        stats::parse_stats(&answers[1], "vcpu", &schema),
    ))
}

/// The QOM path of the VM's balloon device, looked up once per connection among the user
/// created devices (`/machine/peripheral` with ids, `/machine/peripheral-anon` without).
/// `virtio-balloon-pci`, `-ccw` and the bare device all carry `guest-stats`.
async fn balloon_device(connection: &mut Connection) -> Result<Option<String>, QmpError> {
    if let Some(known) = &connection.balloon_device {
        return Ok(known.clone());
    }
    let mut found = None;
    for parent in ["/machine/peripheral", "/machine/peripheral-anon"] {
        let children = match connection
            .client
            .execute("qom-list", Some(json!({ "path": parent })))
            .await
        {
            Ok(children) => children,
            Err(e) if e.connection_usable() => continue,
            Err(e) => return Err(e),
        };
        found = children.as_array().into_iter().flatten().find_map(|child| {
            let kind = child["type"].as_str()?;
            (kind.starts_with("child<") && kind.contains("virtio-balloon"))
                .then(|| format!("{parent}/{}", child["name"].as_str().unwrap_or_default()))
        });
        if found.is_some() {
            break;
        }
    }
    connection.balloon_device = Some(found.clone());
    Ok(found)
}

/// Free memory the guest last reported through the balloon, if it has reported.
async fn guest_free_bytes(connection: &mut Connection) -> Result<Option<u64>, QmpError> {
    let Some(device) = balloon_device(connection).await? else {
        return Ok(None);
    };
    let answer = match connection
        .client
        .execute(
            "qom-get",
            Some(json!({ "path": device, "property": "guest-stats" })),
        )
        .await
    {
        Ok(answer) => answer,
        Err(e) if e.connection_usable() => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(parse_guest_free(&answer))
}

/// `stat-free-memory` of a `guest-stats` value; `None` before the guest's first report
/// (`last-update` 0) and for the "not reported" marker (all ones).
fn parse_guest_free(guest_stats: &Value) -> Option<u64> {
    if guest_stats["last-update"].as_u64().unwrap_or(0) == 0 {
        return None;
    }
    guest_stats["stats"]["stat-free-memory"]
        .as_u64()
        .filter(|&v| v != u64::MAX)
}

impl VmSource for QmpSource {
    fn name(&self) -> String {
        format!("qmp:{}", self.config.socket.display())
    }

    fn read(&mut self) -> BoxFuture<'_, Result<Vec<VmReading>, SourceError>> {
        Box::pin(async move {
            let reused = self.connection.is_some();
            let mut result = self.read_vm().await;
            // A kept connection that QEMU closed since the last read (it restarted): connect
            // again at once rather than miss this sample. Timeouts are not retried: they would
            // double the time a hung QEMU costs.
            if reused && let Err(QmpError::Closed { .. } | QmpError::Io { .. }) = &result {
                self.connection = None;
                result = self.read_vm().await;
            }
            self.keep_if_usable(result)
                .map(|reading| vec![reading])
                .map_err(|e| SourceError::new(e.chain()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_free_only_after_a_report() {
        assert_eq!(
            parse_guest_free(&json!({"stats": {"stat-free-memory": 5}, "last-update": 0})),
            None
        );
        assert_eq!(
            parse_guest_free(&json!({"stats": {"stat-free-memory": 5}, "last-update": 9})),
            Some(5)
        );
        assert_eq!(
            parse_guest_free(&json!({"stats": {"stat-free-memory": u64::MAX}, "last-update": 9})),
            None
        );
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let config: QmpSourceConfig =
            serde_json::from_value(json!({"socket": "/run/vm1.qmp", "host": "h1"}))
                .expect("parses");
        assert_eq!(config, QmpSourceConfig::new("/run/vm1.qmp", "h1"));
        assert!(
            serde_json::from_value::<QmpSourceConfig>(
                json!({"socket": "/x", "host": "h", "bogus": 1})
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("vm1.qmp");
        let mut source = QmpSource::new(QmpSourceConfig::new(&socket, "h1"));
        assert_eq!(source.name(), format!("qmp:{}", socket.display()));
        let err = source.read().await.unwrap_err();
        assert!(
            err.message.starts_with(&socket.display().to_string()),
            "{}",
            err.message
        );
    }
}
