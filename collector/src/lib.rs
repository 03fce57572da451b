//! Collectors of fleetmind: they turn what a host's kernel exposes into the records of
//! [`fleetmind_schema`].
//!
//! The host collector ([`HostCollector`]) reads procfs and sysfs under roots it is given, never
//! under hard-wired `/proc` and `/sys`, so that every figure it produces can be checked
//! against a recorded tree (`tests/fixtures/`), including NUMA hosts we do not have. It is
//! synchronous and cheap (a handful of small pseudo-file reads); [`run_host_collector`] drives it
//! on a timer and hands the samples to the rest of the daemon over a channel.

#![forbid(unsafe_code)]

mod driver;
mod host;
pub mod vm;

pub use driver::{CollectorExit, run_host_collector};
pub use host::{HostCollector, HostCollectorConfig, SampleError, hostname};
