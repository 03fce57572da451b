//! The daemon's TOML configuration: what the pipeline does. (Command-line flags say how this
//! process runs and override the few settings they share with the file.)
//!
//! Every struct denies unknown fields, so a misspelt key is an error that names it rather than
//! a setting silently ignored. Every field has a default: no file at all is a valid config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The documented example configuration: every key with its default value.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../fleetmind.example.toml");

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the event log and other state. Relative paths are relative to the
    /// working directory. Default: `fleetmind-data`.
    pub data_dir: Option<PathBuf>,
    /// HTTP API and dashboard.
    pub api: ApiConfig,
    /// Host collector.
    pub collector: CollectorConfig,
    /// Event stream.
    pub stream: StreamConfig,
    /// Analytics engine.
    pub engine: EngineConfig,
    /// Anomaly detection, correlation into incidents, recommendations.
    pub analytics: AnalyticsConfig,
    /// Settings of the `agent` role.
    pub agent: AgentConfig,
    /// Settings of the `server` role.
    pub server: ServerConfig,
    /// The built-in VMM and its demo fleet.
    pub vmm: VmmConfig,
}

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the API and dashboard listen on. Default `127.0.0.1:8080`. An address other
    /// than loopback needs `server.agent_tokens` (the API has no other protection yet).
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes. Default 4 MiB.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 4 << 20,
        }
    }
}

/// `[collector]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Sampling interval of the host collector, e.g. `"1s"`, `"500ms"`. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Name this host reports. Default: the kernel hostname.
    pub host_name: Option<String>,
    /// Root of procfs. Default `/proc`.
    pub proc_root: PathBuf,
    /// Root of sysfs. Default `/sys`.
    pub sys_root: PathBuf,
    /// Read the VMs of the built-in VMM hosts (their sockets in `vmm.socket_dir`). Default
    /// true.
    pub vm_builtin: bool,
    /// Sampling interval of the VM collector. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub vm_interval: Duration,
    /// Root of debugfs; KVM's directory there (`kvm/`) is read as a fallback for VMs of any
    /// VMM when it exists. Default `/sys/kernel/debug`.
    pub debugfs_root: PathBuf,
    /// QMP sockets of QEMU VMs to read (`-qmp unix:PATH,server=on,wait=off`; a monitor of
    /// their own). Default none.
    pub qmp_sockets: Vec<PathBuf>,
    /// libvirt's QEMU run directory, scanned for domains that declare a QMP monitor for
    /// fleetmind in `<qemu:commandline>`. Default none; usually `/run/libvirt/qemu`.
    pub libvirt_run_dir: Option<PathBuf>,
    /// How often QEMU balloon devices refresh the guest's memory statistics; `0s` leaves the
    /// VM's setting alone. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub qmp_guest_stats_interval: Duration,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            host_name: None,
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            vm_builtin: true,
            vm_interval: Duration::from_secs(1),
            debugfs_root: PathBuf::from("/sys/kernel/debug"),
            qmp_sockets: Vec::new(),
            libvirt_run_dir: None,
            qmp_guest_stats_interval: Duration::from_secs(10),
        }
    }
}

/// Which backend carries the event stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// Segment files under `data_dir/events` (the default; no external service).
    #[default]
    Embedded,
    /// A Kafka-protocol broker (`[stream.kafka]`): records are still written to the embedded
    /// log first (the spill while the broker is away), shipped to one topic per record kind,
    /// and the engine consumes them back as a consumer group.
    Kafka,
}

/// When the embedded log calls fsync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    /// Before acknowledging every append: survives power loss, slowest.
    Always,
    /// At most every `fsync_interval`: loses at most that much on power loss.
    #[default]
    Interval,
    /// Never explicitly; the kernel writes back when it likes.
    Never,
}

/// `[stream]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Backend: `"embedded"` or `"kafka"` (then `[stream.kafka]` is required).
    pub kind: StreamKind,
    /// The broker and topics for `kind = "kafka"`: `brokers` (required), `topic_prefix`,
    /// `group_id`, and tuning keys documented in `fleetmind_stream::KafkaConfig`.
    pub kafka: Option<fleetmind_stream::KafkaConfig>,
    /// Size at which a segment file is closed and a new one started, in bytes. Default 64 MiB.
    pub segment_bytes: u64,
    /// fsync policy. Records acknowledged by an append survive a crash of the process
    /// (kill -9) under every policy; this chooses what survives a power loss.
    pub fsync: FsyncMode,
    /// Period for `fsync = "interval"`. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Oldest segments are deleted once the log exceeds this many bytes. Default 1 GiB.
    pub retention_bytes: u64,
    /// Segments whose newest record is older than this are deleted. Default 7 days.
    #[serde(with = "humantime_serde")]
    pub retention_age: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            kind: StreamKind::Embedded,
            kafka: None,
            segment_bytes: 64 << 20,
            fsync: FsyncMode::Interval,
            fsync_interval: Duration::from_secs(1),
            retention_bytes: 1 << 30,
            retention_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// `[engine]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// How much recent history is kept in memory for queries. Default 6 h.
    #[serde(with = "humantime_serde")]
    pub memory_window: Duration,
    /// Most rows one `/api/v1/query` returns; more are cut and flagged. Default 10,000.
    pub query_max_rows: usize,
    /// Longest a query may run. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Age after which records are served from the Parquet files under `data_dir/parquet`
    /// instead of memory: the cut-over is the start of the hour this long ago. At most
    /// `memory_window`. Default 1 h.
    #[serde(with = "humantime_serde")]
    pub compact_after: Duration,
    /// How often records are compacted from the event log into Parquet and the Parquet
    /// retention applied. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub compact_interval: Duration,
    /// Hours of Parquet files older than this are deleted. Default 30 days.
    #[serde(with = "humantime_serde")]
    pub parquet_retention: Duration,
    /// Largest total size of the Parquet files, in bytes; the oldest hours are deleted beyond
    /// it. Default 10 GiB.
    pub parquet_max_bytes: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            memory_window: Duration::from_secs(6 * 3600),
            query_max_rows: 10_000,
            query_timeout: Duration::from_secs(10),
            compact_after: Duration::from_secs(3600),
            compact_interval: Duration::from_secs(300),
            parquet_retention: Duration::from_secs(30 * 86_400),
            parquet_max_bytes: 10 << 30,
        }
    }
}

/// `[analytics]`: anomaly detection, incidents and recommendations (roles `run` and `server`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// Score every series and correlate. Default true.
    pub enabled: bool,
    /// An incident resolves once all its signals have been normal this long. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub quiet_period: Duration,
    /// Run-queue delay (fraction of the interval a vCPU waited for a CPU) that is a problem
    /// whatever its history. Default 0.2.
    pub wait_guard: f64,
    /// Guest free memory, as a fraction of the VM's memory, below which the guest is short.
    /// Default 0.05.
    pub guest_free_low: f64,
    /// A VM's exits per second this many times its own median are an exit storm. Default 10.
    pub exit_storm_ratio: f64,
    /// Bandwidth between hosts for live migration, in bytes per second: the basis of a
    /// migration's cost and of whether it can converge. Default 1.25e9 (10 Gbit/s).
    pub migration_bandwidth: f64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        let correlator = fleetmind_engine::CorrelatorConfig::default();
        Self {
            enabled: true,
            quiet_period: correlator.quiet_period,
            wait_guard: correlator.wait_guard,
            guest_free_low: correlator.guest_free_low_frac,
            exit_storm_ratio: correlator.exit_storm_ratio,
            migration_bandwidth: correlator.migration_bandwidth_bytes_per_s,
        }
    }
}

impl AnalyticsConfig {
    /// The engine's analytics settings: these keys over the built-in defaults.
    #[must_use]
    pub fn engine_config(&self) -> fleetmind_engine::analytics::AnalyticsConfig {
        let mut config = fleetmind_engine::analytics::AnalyticsConfig::default();
        config.correlator.quiet_period = self.quiet_period;
        config.correlator.wait_guard = self.wait_guard;
        config.correlator.guest_free_low_frac = self.guest_free_low;
        config.correlator.exit_storm_ratio = self.exit_storm_ratio;
        config.correlator.migration_bandwidth_bytes_per_s = self.migration_bandwidth;
        config
    }
}

/// `[agent]`: the per-host role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Base URL of the server the agent sends records to. Default `http://127.0.0.1:8080`.
    pub server_url: String,
    /// Bearer token the agent presents to the server; must be in the server's `agent_tokens`.
    pub server_token: Option<String>,
    /// Address of the agent's action API (actions come down from the server). Default
    /// `127.0.0.1:8081`.
    pub listen: SocketAddr,
    /// Bearer token the server must present to the agent's action API. Required by the
    /// action API; without it every action request is refused.
    pub action_token: Option<String>,
    /// Most records the agent holds in memory while the server is unreachable; the oldest
    /// are dropped beyond it (and counted). Default 100,000.
    pub max_buffered_records: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            server_url: "http://127.0.0.1:8080".into(),
            server_token: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            action_token: None,
            max_buffered_records: 100_000,
        }
    }
}

/// `[server]`: the central role.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Bearer tokens accepted from agents on `POST /api/v1/ingest`. Empty: ingest is open,
    /// which is only allowed while the API listens on loopback.
    pub agent_tokens: Vec<String>,
}

/// `[vmm]`: the built-in VMM hosts and the demo fleet `fleetmind run` starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmmConfig {
    /// Start the demo fleet with `fleetmind run` (needs `/dev/kvm`; `--no-demo` overrides).
    /// Default true.
    pub demo: bool,
    /// VMM host processes of the demo fleet. Default 2.
    pub demo_hosts: u32,
    /// VMs on each demo host. Default 4.
    pub demo_vms_per_host: u32,
    /// Wall time of one simulated day of the demo's load pattern. Default 10 min.
    #[serde(with = "humantime_serde")]
    pub demo_day_length: Duration,
    /// Directory of the VMM hosts' control sockets. Default `data_dir/vmm`.
    pub socket_dir: Option<PathBuf>,
}

impl Default for VmmConfig {
    fn default() -> Self {
        Self {
            demo: true,
            demo_hosts: 2,
            demo_vms_per_host: 4,
            demo_day_length: Duration::from_secs(600),
            socket_dir: None,
        }
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a bad key or value; the message names the key.
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// toml's message, with line, column and the offending key.
        message: String,
    },
    /// The values parse but do not make sense together.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// File (or `<defaults>`).
        path: PathBuf,
        /// Dotted key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file and, for bad content, the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] or [`ConfigError::Invalid`], naming the key.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the rules that serde cannot express.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                key,
                message: message.to_owned(),
            })
        };
        let fraction = |v: f64| v.is_finite() && v > 0.0 && v < 1.0;
        if !fraction(self.analytics.wait_guard) {
            return invalid(
                "analytics.wait_guard",
                "must be between 0 and 1 (exclusive)",
            );
        }
        if !fraction(self.analytics.guest_free_low) {
            return invalid(
                "analytics.guest_free_low",
                "must be between 0 and 1 (exclusive)",
            );
        }
        if !(self.analytics.exit_storm_ratio.is_finite() && self.analytics.exit_storm_ratio > 1.0) {
            return invalid("analytics.exit_storm_ratio", "must be a number above 1");
        }
        if !(self.analytics.migration_bandwidth.is_finite()
            && self.analytics.migration_bandwidth > 0.0)
        {
            return invalid(
                "analytics.migration_bandwidth",
                "must be a positive number of bytes per second",
            );
        }
        if self.analytics.quiet_period < Duration::from_secs(1) {
            return invalid("analytics.quiet_period", "must be at least 1s");
        }
        if self.collector.interval < Duration::from_millis(10) {
            return invalid("collector.interval", "must be at least 10ms");
        }
        if self.collector.vm_interval < Duration::from_millis(100) {
            return invalid("collector.vm_interval", "must be at least 100ms");
        }
        if self.stream.kind == StreamKind::Kafka {
            match &self.stream.kafka {
                None => {
                    return invalid(
                        "stream.kafka",
                        "kind = \"kafka\" needs a [stream.kafka] table with brokers",
                    );
                }
                Some(k) if k.brokers.trim().is_empty() => {
                    return invalid("stream.kafka.brokers", "must list at least one broker");
                }
                Some(_) => {}
            }
        }
        if self.stream.segment_bytes < 4096 {
            return invalid("stream.segment_bytes", "must be at least 4096");
        }
        if self.stream.fsync == FsyncMode::Interval && self.stream.fsync_interval.is_zero() {
            return invalid("stream.fsync_interval", "must be above zero");
        }
        if self.engine.query_max_rows == 0 {
            return invalid("engine.query_max_rows", "must be at least 1");
        }
        if self.engine.query_timeout.is_zero() {
            return invalid("engine.query_timeout", "must be above zero");
        }
        if self.engine.compact_after > self.engine.memory_window {
            return invalid(
                "engine.compact_after",
                "must be at most engine.memory_window: records wait in memory until they are \
                 compacted",
            );
        }
        // The event log must still hold a record when the compactor comes for it: up to
        // compact_after + 1 h (the cut-over moves by hours) + one interval after it arrived.
        let handover = self
            .engine
            .compact_after
            .saturating_add(Duration::from_secs(3600))
            .saturating_add(self.engine.compact_interval);
        if self.stream.retention_age <= handover {
            return invalid(
                "engine.compact_after",
                "with engine.compact_interval and the hour the cut-over moves by, must be \
                 shorter than stream.retention_age, or the event log deletes records before \
                 they are compacted",
            );
        }
        if self.engine.compact_interval < Duration::from_secs(1) {
            return invalid("engine.compact_interval", "must be at least 1s");
        }
        if self.engine.compact_interval > Duration::from_secs(3600) {
            return invalid(
                "engine.compact_interval",
                "must be at most 1h (late records wait this long to be queryable)",
            );
        }
        if self.engine.parquet_retention < Duration::from_secs(3600) {
            return invalid("engine.parquet_retention", "must be at least 1h");
        }
        if self.engine.parquet_max_bytes < 1 << 20 {
            return invalid(
                "engine.parquet_max_bytes",
                "must be at least 1 MiB (1048576)",
            );
        }
        if self.api.max_body_bytes < 1024 {
            return invalid("api.max_body_bytes", "must be at least 1024");
        }
        if !self.api.listen.ip().is_loopback() && self.server.agent_tokens.is_empty() {
            return invalid(
                "api.listen",
                "a non-loopback address needs server.agent_tokens: without tokens the API is open \
                 and may only listen on loopback",
            );
        }
        if self.server.agent_tokens.iter().any(|t| t.len() < 16) {
            return invalid(
                "server.agent_tokens",
                "every token must be at least 16 characters",
            );
        }
        if !self.agent.server_url.starts_with("http://")
            && !self.agent.server_url.starts_with("https://")
        {
            return invalid("agent.server_url", "must start with http:// or https://");
        }
        if !(1..=16).contains(&self.vmm.demo_hosts) {
            return invalid("vmm.demo_hosts", "must be between 1 and 16");
        }
        if self.vmm.demo_vms_per_host > 64 {
            return invalid("vmm.demo_vms_per_host", "must be at most 64");
        }
        if self.vmm.demo_day_length < Duration::from_secs(10) {
            return invalid("vmm.demo_day_length", "must be at least 10s");
        }
        // sun_path holds 108 bytes with the terminating NUL; leave room for a host's file name.
        let longest = self.vmm_socket_dir().join("demo-host-16.sock");
        if longest.as_os_str().len() > 107 {
            return invalid(
                "vmm.socket_dir",
                "is too long for a Unix socket path (at most about 90 bytes); set a shorter one",
            );
        }
        Ok(())
    }

    /// Where the VMM hosts' control sockets live.
    #[must_use]
    pub fn vmm_socket_dir(&self) -> PathBuf {
        self.vmm
            .socket_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("vmm"))
    }

    /// The data directory, with its default.
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("fleetmind-data"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let config = parse("").expect("empty config is valid");
        assert_eq!(config.api.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(config.collector.interval, Duration::from_secs(1));
        assert_eq!(config.data_dir(), PathBuf::from("fleetmind-data"));
    }

    #[test]
    fn example_file_is_exactly_the_defaults() {
        let example = parse(DEFAULT_CONFIG_TOML).expect("example config is valid");
        let defaults = Config {
            data_dir: Some(PathBuf::from("fleetmind-data")),
            ..Config::default()
        };
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn full_file_parses() {
        let config = parse(
            r#"
            data_dir = "/var/lib/fleetmind"
            [api]
            listen = "127.0.0.1:9090"
            [collector]
            interval = "250ms"
            host_name = "rack1-h7"
            [stream]
            fsync = "always"
            retention_age = "2days"
            [engine]
            memory_window = "2h"
            query_max_rows = 50
            query_timeout = "3s"
            compact_after = "30m"
            compact_interval = "1m"
            parquet_retention = "90days"
            parquet_max_bytes = 1073741824
            [agent]
            server_url = "http://10.0.0.1:8080"
            [server]
            agent_tokens = ["0123456789abcdef0123"]
            "#,
        )
        .expect("valid");
        assert_eq!(config.collector.interval, Duration::from_millis(250));
        assert_eq!(config.stream.fsync, FsyncMode::Always);
        assert_eq!(config.stream.retention_age, Duration::from_secs(2 * 86400));
        assert_eq!(config.engine.query_max_rows, 50);
        assert_eq!(config.engine.compact_after, Duration::from_secs(1800));
        assert_eq!(
            config.engine.parquet_retention,
            Duration::from_secs(90 * 86400)
        );
        assert_eq!(config.engine.parquet_max_bytes, 1 << 30);
    }

    #[test]
    fn analytics_keys_reach_the_correlator_and_bad_ones_are_named() {
        let config = parse(
            "[analytics]\nquiet_period = \"2m\"\nwait_guard = 0.3\nmigration_bandwidth = 1e8\n",
        )
        .expect("valid");
        let engine = config.analytics.engine_config();
        assert_eq!(engine.correlator.quiet_period, Duration::from_secs(120));
        assert!((engine.correlator.wait_guard - 0.3).abs() < 1e-12);
        assert!((engine.correlator.migration_bandwidth_bytes_per_s - 1e8).abs() < 1e-3);
        for (toml, key) in [
            ("[analytics]\nwait_guard = 1.5\n", "analytics.wait_guard"),
            (
                "[analytics]\nguest_free_low = 0.0\n",
                "analytics.guest_free_low",
            ),
            (
                "[analytics]\nexit_storm_ratio = 0.5\n",
                "analytics.exit_storm_ratio",
            ),
            (
                "[analytics]\nmigration_bandwidth = -1.0\n",
                "analytics.migration_bandwidth",
            ),
            (
                "[analytics]\nquiet_period = \"10ms\"\n",
                "analytics.quiet_period",
            ),
        ] {
            let err = parse(toml).expect_err(key);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err =
            parse("[collector]\ninterval = \"1s\"\nintervall = \"2s\"\n").expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("intervall"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn unknown_top_level_section_is_named() {
        let err = parse("[colector]\n").expect_err("unknown section");
        assert!(err.to_string().contains("colector"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = parse("[collector]\ninterval = \"soon\"\n").expect_err("bad duration");
        let msg = err.to_string();
        assert!(msg.contains("interval"), "{msg}");
        let err = parse("[stream]\nfsync = \"sometimes\"\n").expect_err("bad enum");
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let err = parse("[collector]\ninterval = \"1ms\"\n").expect_err("too short");
        assert!(err.to_string().contains("collector.interval"), "{err}");
        let err = parse("[api]\nlisten = \"0.0.0.0:8080\"\n").expect_err("open non-loopback");
        assert!(err.to_string().contains("api.listen"), "{err}");
        let err = parse("[server]\nagent_tokens = [\"short\"]\n").expect_err("short token");
        assert!(err.to_string().contains("server.agent_tokens"), "{err}");
        let err = parse("[stream]\nkind = \"kafka\"\n").expect_err("kafka without brokers");
        assert!(err.to_string().contains("stream.kafka"), "{err}");
        let config = parse("[stream]\nkind = \"kafka\"\n[stream.kafka]\nbrokers = \"b1:9092\"\n")
            .expect("kafka with brokers");
        assert_eq!(
            config.stream.kafka.map(|k| k.topic_prefix).as_deref(),
            Some("fleetmind")
        );
        let err = parse("[stream.kafka]\nbrokers = \"b\"\nbrokerz = 1\n").expect_err("typo");
        assert!(err.to_string().contains("brokerz"), "{err}");
        let err = parse("[vmm]\ndemo_hosts = 0\n").expect_err("no hosts");
        assert!(err.to_string().contains("vmm.demo_hosts"), "{err}");
        let err = parse("[vmm]\ndemo_day_length = \"1s\"\n").expect_err("short day");
        assert!(err.to_string().contains("vmm.demo_day_length"), "{err}");
        let err = parse("[engine]\nmemory_window = \"1h\"\ncompact_after = \"2h\"\n")
            .expect_err("compact_after past the window");
        assert!(err.to_string().contains("engine.compact_after"), "{err}");
        let err = parse("[stream]\nretention_age = \"2h\"\n").expect_err("log too short");
        assert!(err.to_string().contains("engine.compact_after"), "{err}");
        let err = parse("[engine]\ncompact_interval = \"0s\"\n").expect_err("zero interval");
        assert!(err.to_string().contains("engine.compact_interval"), "{err}");
        let err = parse("[engine]\nparquet_retention = \"10m\"\n").expect_err("short retention");
        assert!(
            err.to_string().contains("engine.parquet_retention"),
            "{err}"
        );
        let err = parse("[engine]\nparquet_max_bytes = 10\n").expect_err("tiny cap");
        assert!(
            err.to_string().contains("engine.parquet_max_bytes"),
            "{err}"
        );
        let err = parse("[engine]\ncompact_after = \"soon\"\n").expect_err("bad duration");
        assert!(err.to_string().contains("compact_after"), "{err}");
        let long = format!("[vmm]\nsocket_dir = \"/{}\"\n", "d".repeat(120));
        let err = parse(&long).expect_err("long socket dir");
        assert!(err.to_string().contains("vmm.socket_dir"), "{err}");
    }
}
