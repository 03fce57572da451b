//! The `fleetmind` binary: parses the command line, sets up logging, and hands over to the
//! role or tool asked for. All logic lives in the workspace crates.

#![forbid(unsafe_code)]

mod audit_cli;
mod bench;
mod bench_collect;
mod bench_nab;
mod bench_payload;
mod cli;
mod config;
mod daemon;
mod vm_cli;
mod vmm_host;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{AuditCommand, BenchCommand, Cli, Command, ConfigCommand, DaemonArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEETMIND_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli.command.unwrap_or(Command::Run(DaemonArgs::default()))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetmind: error: {e:#}");
            audit_cli::exit_code(&e).unwrap_or(ExitCode::FAILURE)
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => block_on(daemon::run(daemon::Role::Run, args)),
        Command::Agent(args) => block_on(daemon::run(daemon::Role::Agent, args)),
        Command::Server(args) => block_on(daemon::run(daemon::Role::Server, args)),
        Command::Vmm(args) => block_on(vmm_host::run(args)),
        Command::Vm(args) => block_on(vm_cli::run(args)),
        Command::Config(ConfigCommand::Check { file }) => {
            config::Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Config(ConfigCommand::Default) => {
            print!("{}", config::DEFAULT_CONFIG_TOML);
            Ok(())
        }
        Command::Bench(BenchCommand::Log(args)) => bench::log(&args),
        Command::Bench(BenchCommand::Payload(args)) => bench_payload::payload(&args),
        Command::Bench(BenchCommand::Collect(args)) => bench_collect::run(&args),
        Command::Bench(BenchCommand::Nab(args)) => bench_nab::run(&args),
        Command::Audit(AuditCommand::Verify(args)) => audit_cli::verify(&args),
    }
}

fn block_on<F: Future<Output = anyhow::Result<()>>>(future: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fleetmind")
        .build()?
        .block_on(future)
}
