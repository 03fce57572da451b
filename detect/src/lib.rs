//! Streaming anomaly detection for one series at a time, and the NAB scorer that measures it.
//!
//! * [`SeriesDetector`]: online, one record at a time, no look-ahead, a few KiB of state that
//!   round-trips through serde. Shape novelty (nearest earlier shape) at two time scales, range
//!   novelty and a daily seasonal comparison, each normalized by the decayed peak of its own
//!   earlier values, with alarm suppression. [`DetectorConfig::default`] is the one parameter
//!   set for every series; [`DetectorConfig::threshold`] the score that makes an anomaly.
//! * [`nab`]: the Numenta Anomaly Benchmark: corpus reader, scorer (reproduces NAB's published
//!   scores), and a runner under NAB's rules.
//!
//! On NAB v1.1 the default configuration scores **72.52** (standard), **67.89** (reward low
//! FP) and **76.22** (reward low FN), against 70.10 / 63.12 / 74.32 for Numenta HTM and
//! 74.85 / 65.15 / 80.36 for ARTime. The steps that got there, with the score of each, and
//! what did not help, are in the crate's `README.md`.
//!
//! ```
//! use fleetmind_detect::{DetectorConfig, SeriesDetector};
//!
//! let config = DetectorConfig::default();
//! let mut detector = SeriesDetector::new(&config, None);
//! for i in 0..100 {
//!     let value = if i == 80 { 95.0 } else { 20.0 + f64::from(i % 7) };
//!     let detection = detector.update(i64::from(i) * 5_000, value);
//!     if detection.score >= config.threshold() {
//!         assert_eq!(i, 80);
//!     }
//! }
//! let saved = serde_json::to_string(&detector).expect("serializes");
//! let restored: SeriesDetector = serde_json::from_str(&saved).expect("restores");
//! assert_eq!(restored.observations(), 100);
//! ```

#![forbid(unsafe_code)]

mod detector;
pub mod nab;

pub use detector::{Detection, DetectorConfig, SeriesDetector};

/// The detector's name: its NAB results folder and the `detector` of anomaly records.
pub const DETECTOR_NAME: &str = "fleetmind";
