//! Configuration of the embedded event log.
//!
//! Kept apart from the log so the daemon's config file can embed [`LogConfig`] (serde, unknown
//! fields rejected, durations in humantime form such as `"1s"` or `"7days"`), e.g. in TOML:
//!
//! ```toml
//! segment_bytes = 67108864
//! fsync = { interval = "1s" }   # or "always" / "never"
//! retention = { max_bytes = 10737418240, max_age = "7days" }
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default size at which the active segment is rolled: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Smallest accepted `segment_bytes`: small segments are for tests, not production.
pub const MIN_SEGMENT_BYTES: u64 = 1024;

/// How the embedded log is laid out and how durable it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Roll the active segment before an append would take it past this many bytes (default
    /// 64 MiB). A single append larger than this still goes whole into one segment.
    pub segment_bytes: u64,
    /// When appended records are forced to stable storage (default: every second).
    pub fsync: FsyncPolicy,
    /// Which old segments are deleted (default: none).
    pub retention: RetentionPolicy,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fsync: FsyncPolicy::default(),
            retention: RetentionPolicy::default(),
        }
    }
}

/// When the log calls fsync.
///
/// Whatever the policy, an acknowledged append has been written to the segment file with
/// write(2), so it survives the process being killed; the policy only decides what survives a
/// power loss or kernel crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fsync before acknowledging every append call: acknowledged means durable.
    Always,
    /// A background thread fsyncs, once per interval, every segment written since its last pass
    /// (rolled ones included) and the directory after a roll; flush and close also fsync. A
    /// power loss loses at most about one interval of acknowledged records.
    Interval(#[serde(with = "humantime_serde")] Duration),
    /// Never fsync on the write path; the kernel writes back when it likes. Explicit
    /// [`EventSink::flush`](crate::EventSink::flush) calls still fsync.
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_secs(1))
    }
}

/// Which segments the log deletes. Deletion always starts at the oldest segment, never touches
/// the active (last) one, and runs on every roll, at open and on
/// [`EventLog::enforce_retention`](crate::EventLog::enforce_retention).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionPolicy {
    /// Delete the oldest segments while all segments together are larger than this. Retention
    /// runs when a segment is rolled, so the log may exceed this by up to one segment.
    pub max_bytes: Option<u64>,
    /// Delete the oldest segments whose last record (the file's modification time) is older than
    /// this.
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_humantime_durations() {
        let json = r#"{"fsync":{"interval":"250ms"},"retention":{"max_age":"2h"}}"#;
        let config: LogConfig = serde_json::from_str(json).expect("valid config");
        assert_eq!(
            config.fsync,
            FsyncPolicy::Interval(Duration::from_millis(250))
        );
        assert_eq!(config.retention.max_age, Some(Duration::from_secs(7200)));
        assert_eq!(config.retention.max_bytes, None);
        assert_eq!(config.segment_bytes, DEFAULT_SEGMENT_BYTES);
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let json = r#"{"segment_size":1}"#;
        assert!(serde_json::from_str::<LogConfig>(json).is_err());
    }

    #[test]
    fn fsync_policy_unit_variants_are_strings() {
        let config: LogConfig = serde_json::from_str(r#"{"fsync":"always"}"#).expect("valid");
        assert_eq!(config.fsync, FsyncPolicy::Always);
        let never = serde_json::to_string(&FsyncPolicy::Never).expect("serialize");
        assert_eq!(never, r#""never""#);
    }
}
