//! remediation: what fleetmind does about incidents.
//!
//! Policies (Rhai scripts in `policies/`) decide; executors act. This crate owns both sides;
//! the agent role runs the executors for its host's VMs and the server role runs the policies.
//! Today it holds the executor registry that the agent's action API dispatches into: one
//! registration point, one executor per [`ActionKind`], a timeout on every execution.

#![forbid(unsafe_code)]

pub mod audit;
pub mod executor;

pub use audit::{
    AuditEntry, AuditError, AuditLog, ChainProblem, VerifyError, VerifyReport, verify_file,
};
pub use executor::{ActionExecutor, ExecuteError, ExecutionReport, ExecutorRegistry};
