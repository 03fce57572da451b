//! fleetmind's analytics engine.
//!
//! The engine keeps the records of the last few hours (samples, anomalies, incidents, actions,
//! audit) in Arrow memory, one table per [`RecordKind`](fleetmind_schema::RecordKind), so that
//! detectors, the correlator and operators can ask questions of the recent past in SQL without
//! a database. It knows nothing of HTTP: the API layer calls [`Store::query`] and turns a
//! [`QueryError`] into a status with [`QueryError::is_client_error`].
//!
//! * [`store`] holds the tables, ingests records and keeps the latest sample per host;
//! * [`correlate`] groups anomalies and samples into incidents with ranked root-cause
//!   hypotheses and recommendations, and keeps the latest of them for the API in an
//!   [`IncidentFeed`];
//! * [`query`] runs one read-only SQL statement over a snapshot of the tables, with limits;
//! * `read_only` refuses statements that write, `depth` expressions too deep to plan safely,
//!   `executor` runs queries on threads of their own, and `render` turns results into JSON rows;
//! * `chunk` and `retention` are the storage unit and the time window that bounds memory;
//! * [`archive`] is the Parquet tier: the [`Compactor`] moves records older than a watermark
//!   from the event log into hourly Parquet files, and queries read both tiers as one table.

#![forbid(unsafe_code)]

pub mod analytics;
pub mod archive;
mod chunk;
pub mod correlate;
mod depth;
mod executor;
pub mod query;
mod read_only;
mod render;
mod retention;
pub mod store;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use archive::{Archive, ArchiveConfig, Compactor, PassReport};
pub use correlate::{Correlator, CorrelatorConfig, IncidentFeed, IncidentFeedConfig};
pub use query::{QueryError, QueryLimits, QueryResult};
pub use retention::RetentionError;
pub use store::{IngestError, Store, StoreConfig};
