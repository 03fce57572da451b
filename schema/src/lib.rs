//! The one event schema of fleetmind.
//!
//! Every record that crosses a crate or process boundary (collector -> stream -> engine ->
//! remediation, and the HTTP API) is defined here, once, with two forms:
//!
//! * a JSON form (serde), used on the event stream and by the HTTP API, wrapped in an
//!   [`Envelope`] that carries the [`SCHEMA_VERSION`] and the record kind;
//! * an Arrow form ([`ArrowRecord::arrow_schema`]), used by the engine's in-memory tables and
//!   Parquet files, built from the same serde form by [`to_record_batch`].
//!
//! Rules that keep old logs and old clients readable: fields are added, never renamed or
//! retyped; a new field is an `Option` or has a serde default; every change bumps
//! [`SCHEMA_VERSION`] and the golden files in `schema/tests/golden/`.
//!
//! Conventions: timestamps are `ts`, integer milliseconds since the Unix epoch (UTC) in JSON
//! and `Timestamp(Millisecond, "+00:00")` in Arrow; byte quantities end in `_bytes`; rates end
//! in `_per_s`; fractions of one CPU or of a whole end in `_frac` and lie in `0..=1` (a VM
//! with several vCPUs can exceed 1 in per-VM sums only where the field says so).

#![forbid(unsafe_code)]

mod arrow_form;
mod decode;
pub mod payload;
mod records;

pub use arrow_form::{ArrowRecord, ToBatchError, to_record_batch};
pub use decode::{DecodeError, decode_envelope};
pub use records::*;

/// Version of the record layouts in this crate. Bumped on every additive change.
pub const SCHEMA_VERSION: u32 = 1;
