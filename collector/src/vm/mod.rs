//! VM collectors: every VM on a host, whoever runs it, read into one [`VmSample`] schema.
//!
//! A [`VmSource`] is one endpoint that knows some VMs: a built-in VMM host's control socket
//! ([`builtin`]), a QEMU's QMP socket ([`qmp`]), the QMP sockets libvirt keeps for its
//! domains ([`libvirt`] discovers them), or, for any VMM, KVM's debugfs ([`debugfs`]). A source only reads ([`VmReading`]: cumulative
//! counters, current values); the [`RateTracker`] turns readings into samples with rates, and
//! the driver ([`run_vm_collector`]) runs each source in its own task with timeouts, health
//! records and retry backoff, so a failing source never stalls the others.
//!
//! [`VmSample`]: fleetmind_schema::VmSample

pub mod builtin;
pub mod debugfs;
mod driver;
pub mod libvirt;
pub mod qmp;
mod reading;

use futures::future::BoxFuture;

pub use driver::{VmCollectorConfig, run_vm_collector};
pub use reading::{RateTracker, VcpuReading, VmReading, counter_delta};

/// Why a source could not be read. The message is for operators: it names the endpoint and
/// what failed (`/run/vm1.qmp: connect: No such file or directory`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// What failed.
    pub message: String,
}

impl SourceError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// One endpoint that knows some VMs.
pub trait VmSource: Send {
    /// A short, stable name for logs and health records, e.g. `builtin:demo-host-1` or
    /// `qmp:/run/vm1.qmp`.
    fn name(&self) -> String;

    /// Reads every VM this endpoint knows, now. Called once per interval; an implementation
    /// keeps its connection between calls and reconnects after an error.
    fn read(&mut self) -> BoxFuture<'_, Result<Vec<VmReading>, SourceError>>;
}
