//! Command-line interface: how this process runs. What the pipeline does lives in the config
//! file; the flags here override the few settings both have.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// fleetmind: AIOps for KVM virtual-machine fleets.
#[derive(Debug, Parser)]
#[command(name = "fleetmind", version, about, long_about = None)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Agent and server in one process: collect, store, analyse, serve (the default).
    Run(DaemonArgs),
    /// Per-host role: collectors and the action executor; sends records to a server.
    Agent(DaemonArgs),
    /// Central role: event log, engine, API and dashboard; receives records from agents.
    Server(DaemonArgs),
    /// One built-in VMM host: runs micro-VMs on /dev/kvm and serves their control API on a
    /// Unix socket (`fleetmind run` starts these for its demo fleet).
    Vmm(VmmArgs),
    /// Control the built-in VMM's VMs: list, create, delete, set levels, read stats, pin,
    /// move memory, balloon.
    Vm(VmArgs),
    /// Configuration file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// Flags shared by the daemon roles.
#[derive(Debug, Clone, Default, Args)]
pub struct DaemonArgs {
    /// TOML config file. Without it every setting has its default.
    #[arg(short, long, env = "FLEETMIND_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, env = "FLEETMIND_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// API listen address (overrides `api.listen`); port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Host collector interval, e.g. `1s`, `200ms` (overrides `collector.interval`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub collect_interval: Option<std::time::Duration>,
    /// Do not run the collectors, host or VM (a server that only receives from agents).
    #[arg(long)]
    pub no_collect: bool,
    /// Do not start the demo fleet (overrides `vmm.demo`).
    #[arg(long)]
    pub no_demo: bool,
}

/// Where the VMM hosts' sockets are: the same resolution as the daemon's.
#[derive(Debug, Clone, Default, Args)]
pub struct SocketDirArgs {
    /// TOML config file (for `data_dir` and `vmm.socket_dir`).
    #[arg(short, long, env = "FLEETMIND_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, env = "FLEETMIND_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Flags of `fleetmind vmm`.
#[derive(Debug, Clone, Args)]
pub struct VmmArgs {
    /// The host name this VMM plays; its socket is `<socket dir>/<name>.sock`.
    #[arg(long, default_value = "vmm-1")]
    pub name: String,
    /// Control socket path (overrides the socket directory).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Create the demo fleet on this host and drive its daily pattern.
    #[arg(long)]
    pub demo: bool,
    /// Demo: this host's index (shifts the pattern, names the VMs).
    #[arg(long, default_value_t = 0)]
    pub demo_index: u32,
    /// Demo: VMs on this host.
    #[arg(long, default_value_t = 4)]
    pub demo_vms: u32,
    /// Demo: wall time of one simulated day.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub day_length: std::time::Duration,
    /// Shut down when standard input closes (how `fleetmind run` ties its VMM hosts to
    /// itself, even when it is killed).
    #[arg(long)]
    pub exit_with_stdin: bool,
    /// Where the sockets live.
    #[command(flatten)]
    pub dirs: SocketDirArgs,
}

/// `fleetmind vm ...`
#[derive(Debug, Args)]
pub struct VmArgs {
    /// The VMM host to talk to, by name; by default every host in the socket directory (VM
    /// commands find the host that has the VM).
    #[arg(long, global = true)]
    pub host: Option<String>,
    /// A VMM host's control socket, instead of `--host`.
    #[arg(long, global = true, conflicts_with = "host")]
    pub socket: Option<PathBuf>,
    /// Where the sockets live.
    #[command(flatten)]
    pub dirs: SocketDirArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: VmCommand,
}

/// VM commands.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// The VMM hosts: name, hypervisor, VM count.
    Hosts,
    /// Every VM of every host (or of `--host`).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create and start a VM from a JSON spec: inline (`{...}`), a file, or `-` for stdin.
    /// Example: `{"name":"web-9","vcpus":1,"mem_mib":64,"workload":{"kind":"cpu"},"level":30}`.
    Create {
        /// The spec.
        spec: String,
    },
    /// One VM.
    Show {
        /// VM name.
        name: String,
    },
    /// Stop a VM and remove it.
    Delete {
        /// VM name.
        name: String,
    },
    /// Pause a VM.
    Pause {
        /// VM name.
        name: String,
    },
    /// Resume a paused VM.
    Resume {
        /// VM name.
        name: String,
    },
    /// Set a VM's load level, 0 to 100.
    Level {
        /// VM name.
        name: String,
        /// The level.
        level: u8,
    },
    /// Replace a VM's workload (JSON, e.g. `{"kind":"io","rate_per_s":2000}`).
    Workload {
        /// VM name.
        name: String,
        /// The workload.
        workload: String,
    },
    /// A VM's stats: exits, guest counters, KVM's counters, threads, memory, balloon.
    Stats {
        /// VM name.
        name: String,
    },
    /// Pin a vCPU to host CPUs (a list like `1` or `0-1,3`).
    Pin {
        /// VM name.
        name: String,
        /// vCPU index.
        vcpu: u32,
        /// Host CPUs.
        cpus: String,
    },
    /// Bind a VM's memory to a NUMA node and move what is resident.
    MoveMemory {
        /// VM name.
        name: String,
        /// Target node.
        node: u32,
    },
    /// Show a VM's balloon, or set its target in MiB.
    Balloon {
        /// VM name.
        name: String,
        /// New target, MiB.
        target_mib: Option<u32>,
    },
}

/// `fleetmind config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file; names the bad key and exits non-zero on error.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print the default configuration as TOML.
    Default,
}

/// `fleetmind audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the audit log's hash chain: exit 0 when intact, 1 when a record was changed,
    /// removed or reordered (naming the line), 2 when there is no log.
    Verify(AuditVerifyArgs),
}

/// Options of `fleetmind audit verify`.
#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// The log file (wins over the data directory's `audit/audit.jsonl`).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The tip hash noted earlier: also fail unless the log ends there (detects records
    /// removed from the end).
    #[arg(long, value_name = "HEX")]
    pub tip: Option<String>,
    /// Where the data directory is.
    #[command(flatten)]
    pub dirs: SocketDirArgs,
}

/// `fleetmind bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Event log append and replay throughput against a plain buffered write of the same bytes.
    Log(BenchLogArgs),
    /// Collector CPU time per 1,000 values: the host and VM collectors for a while, this
    /// process's CPU and the VMM hosts' (reported apart).
    Collect(crate::bench_collect::BenchCollectArgs),
    /// Stream payload encodings: JSON envelope per record against Arrow IPC per record and
    /// per batch, in bytes and encode/decode time per record.
    Payload(BenchPayloadArgs),
    /// NAB: the streaming detector over a corpus in NAB's layout under NAB's rules; prints the
    /// three profile scores and the time per record.
    Nab(crate::bench_nab::BenchNabArgs),
}

/// Options of `fleetmind bench payload`.
#[derive(Debug, Args)]
pub struct BenchPayloadArgs {
    /// VM samples to encode.
    #[arg(long, default_value_t = 20_000)]
    pub records: usize,
    /// Records per Arrow IPC batch.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Rounds; the best time of each is kept.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// Options of `fleetmind bench log`.
#[derive(Debug, Args)]
pub struct BenchLogArgs {
    /// Directory to write in (a temporary directory under it is used and removed).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Records to append.
    #[arg(long, default_value_t = 500_000)]
    pub records: usize,
    /// Payload size of each record in bytes (a host sample is about 1.5 KB as JSON).
    #[arg(long, default_value_t = 512)]
    pub payload_bytes: usize,
    /// fsync policy to measure.
    #[arg(long, value_enum, default_value_t = BenchFsync::Never)]
    pub fsync: BenchFsync,
}

/// fsync policies selectable for the benchmark.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchFsync {
    /// fsync every append call.
    Always,
    /// fsync at most once a second.
    Interval,
    /// Never fsync.
    Never,
}
