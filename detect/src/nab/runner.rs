//! Running the detector over a corpus under NAB's rules: a fresh detector per file, told the
//! file's minimum and maximum, one record at a time; then scoring with the exhaustive sweep.

use std::time::{Duration, Instant};

use super::NabError;
use super::corpus::Corpus;
use super::score::{ProfileScore, ThresholdRule, score_corpus};
use crate::{DetectorConfig, SeriesDetector};

/// What a detector run over a corpus produced.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// One anomaly score per row, per file (corpus order).
    pub scores: Vec<Vec<f64>>,
    /// Time spent inside the detector (construction and `update` calls only).
    pub detector_time: Duration,
}

/// Runs a fresh [`SeriesDetector`] over every file of the corpus.
#[must_use]
pub fn run_detector(corpus: &Corpus, config: &DetectorConfig) -> RunReport {
    let mut detector_time = Duration::ZERO;
    let scores = corpus
        .files
        .iter()
        .map(|file| {
            let mut out = Vec::with_capacity(file.values.len());
            let started = Instant::now();
            let mut detector = SeriesDetector::new(config, Some(file.range()));
            for (&ts, &value) in file.timestamps_ms.iter().zip(&file.values) {
                out.push(detector.update(ts, value).score);
            }
            detector_time += started.elapsed();
            out
        })
        .collect();
    RunReport {
        scores,
        detector_time,
    }
}

/// Scores outputs under every profile of the corpus with the same threshold rule.
///
/// # Errors
/// [`NabError::Length`] when the outputs do not match the corpus.
pub fn score_all(
    corpus: &Corpus,
    scores: &[Vec<f64>],
    rule: ThresholdRule,
) -> Result<Vec<ProfileScore>, NabError> {
    corpus
        .profiles
        .iter()
        .map(|profile| score_corpus(corpus, scores, profile, rule))
        .collect()
}
