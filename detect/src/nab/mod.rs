//! The Numenta Anomaly Benchmark (NAB v1.1): reading a corpus in NAB's layout, scoring detector
//! outputs exactly as NAB does (`SCORING.md` in the data folder), and running fleetmind's
//! detector over a corpus under NAB's rules. This module does file I/O; the detector does not.
//!
//! The scorer reproduces the published scores of the `numenta` and `windowedGaussian`
//! detectors from their committed outputs (`tests/nab_scorer.rs`).

mod corpus;
mod results;
mod runner;
mod score;
pub mod time;

use std::io;
use std::path::{Path, PathBuf};

pub use corpus::{Corpus, CorpusFile, Profile, Window};
pub use results::{
    StoredScore, read_column, read_detector_scores, read_stored_scores, results_path,
    write_detector_scores,
};
pub use runner::{RunReport, run_detector, score_all};
pub use score::{
    FileScore, PROBATION_PERCENT, ProfileScore, SweepPoint, ThresholdRule, normalize, optimize,
    probationary_length, scaled_sigmoid, score_at, score_corpus, sweep, sweep_points,
};

/// Why a corpus, a results file or a score table could not be read or scored.
#[derive(Debug, thiserror::Error)]
pub enum NabError {
    /// A file or directory the layout requires does not exist.
    #[error("missing {}", path.display())]
    Missing {
        /// The path looked for.
        path: PathBuf,
    },
    /// Reading or writing failed.
    #[error("cannot access {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A JSON file does not have the expected shape.
    #[error("bad JSON in {}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A CSV row does not parse.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A data file has no entry in the labels.
    #[error("{file} has no entry in {}", labels.display())]
    Unlabelled {
        /// The labels file.
        labels: PathBuf,
        /// The data file (path under `data/`).
        file: String,
    },
    /// A window boundary is not one of its file's timestamps.
    #[error("window boundary {timestamp} is not a timestamp of {file}")]
    BadWindow {
        /// The data file (path under `data/`).
        file: String,
        /// The boundary as written in the labels.
        timestamp: String,
    },
    /// Detector outputs do not have one score per row (or one series per file).
    #[error("{file}: expected {expected} rows, found {found}")]
    Length {
        /// The file (or corpus) concerned.
        file: String,
        /// Rows expected.
        expected: usize,
        /// Rows found.
        found: usize,
    },
}

impl NabError {
    fn io(path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            Self::Missing {
                path: path.to_owned(),
            }
        } else {
            Self::Io {
                path: path.to_owned(),
                source,
            }
        }
    }

    fn parse(path: &Path, line: usize, message: impl Into<String>) -> Self {
        Self::Parse {
            path: path.to_owned(),
            line,
            message: message.into(),
        }
    }
}
