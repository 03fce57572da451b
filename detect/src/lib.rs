//! Streaming anomaly detection for one series at a time, and the NAB scorer that measures it.

#![forbid(unsafe_code)]
