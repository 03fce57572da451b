//! `fleetmind audit ...`: tools for the remediation audit log.
//!
//! `verify` checks the hash chain of `<data dir>/audit/audit.jsonl` (or `--file`) and, with
//! `--tip`, that it ends at a tip noted earlier. Exit codes: 0 intact, 1 broken (the message
//! names the line), 2 no log or a malformed `--tip`.

use std::path::PathBuf;
use std::process::ExitCode;

use fleetmind_remediation::audit::{AUDIT_FILE, VerifyError, verify_file};

use crate::cli::AuditVerifyArgs;
use crate::config::Config;

/// The audit log's directory under the data directory.
const AUDIT_DIR: &str = "audit";

/// The log `verify` reads: `--file`, or the data directory resolved as the daemon and
/// `fleetmind vm` resolve it (config file, then `--data-dir`).
fn log_path(args: &AuditVerifyArgs) -> anyhow::Result<PathBuf> {
    if let Some(file) = &args.file {
        return Ok(file.clone());
    }
    let mut config = match &args.dirs.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &args.dirs.data_dir {
        config.data_dir = Some(dir.clone());
    }
    Ok(config.data_dir().join(AUDIT_DIR).join(AUDIT_FILE))
}

/// `fleetmind audit verify`.
pub fn verify(args: &AuditVerifyArgs) -> anyhow::Result<()> {
    let path = log_path(args)?;
    let report = verify_file(&path, args.tip.as_deref())?;
    println!(
        "audit log {}: {} records, chain intact, tip {}",
        path.display(),
        report.records,
        report.tip_hash
    );
    Ok(())
}

/// The exit code for errors that are not "the log is broken": 2 when there is no log to
/// verify or the expected tip is malformed.
pub fn exit_code(error: &anyhow::Error) -> Option<ExitCode> {
    match error.downcast_ref::<VerifyError>()? {
        VerifyError::Missing { .. } | VerifyError::BadTip(_) => Some(ExitCode::from(2)),
        _ => None,
    }
}
