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
    /// Configuration file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
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
    /// Do not run the host collector (a server that only receives from agents).
    #[arg(long)]
    pub no_collect: bool,
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

/// `fleetmind bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Event log append and replay throughput against a plain buffered write of the same bytes.
    Log(BenchLogArgs),
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
