//! NAB's scorer (SCORING.md §1–6): the per-record sweep score, scoring at a threshold, the
//! exhaustive threshold sweep and the normalization against the null detector.

use std::collections::HashMap;

use super::NabError;
use super::corpus::{Corpus, CorpusFile, Profile};

/// Share of each file (at most 750 rows) that is probationary and never scored.
pub const PROBATION_PERCENT: f64 = 0.15;

/// `2·sigmoid(-5y) - 1`, and -1 beyond `y > 3` (§1).
#[must_use]
pub fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// Rows of a file of `n` rows that are probationary.
#[must_use]
pub fn probationary_length(n: usize) -> f64 {
    (PROBATION_PERCENT * n as f64)
        .floor()
        .min(PROBATION_PERCENT * 5000.0)
}

/// One scored record (§2): its anomaly score, the weighted score it earns if detected, and the
/// window it lies in (an id unique over the scored set).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SweepPoint {
    /// The detector's anomaly score (NaN is stored as -inf: never a detection).
    pub anomaly_score: f64,
    /// `s_i`: positive inside a window, the weighted false-positive cost outside.
    pub weight: f64,
    /// Window id, `None` outside every window.
    pub window: Option<u32>,
}

/// The sweep points of one file's non-probationary records (§2). Window ids start at
/// `first_window_id` and follow the file's window order.
///
/// # Errors
/// [`NabError::Length`] when `scores` does not have one entry per row.
pub fn sweep_points(
    file: &CorpusFile,
    scores: &[f64],
    profile: &Profile,
    first_window_id: u32,
) -> Result<Vec<SweepPoint>, NabError> {
    let n = file.values.len();
    if scores.len() != n {
        return Err(NabError::Length {
            file: file.rel_path.clone(),
            expected: n,
            found: scores.len(),
        });
    }
    let probation = probationary_length(n);
    let max_tp = scaled_sigmoid(-1.0);
    let mut points = Vec::with_capacity(n);
    let mut next_window = 0usize;
    // (start, end, id) of the window we are in, and (right index, width) of the last one left.
    let mut current: Option<(usize, usize, u32)> = None;
    let mut previous: Option<(usize, usize)> = None;
    for (i, &a) in scores.iter().enumerate() {
        if let Some(w) = file.windows.get(next_window)
            && w.start == i
        {
            let id = first_window_id + u32::try_from(next_window).expect("window count fits u32");
            current = Some((w.start, w.end, id));
            next_window += 1;
        }
        let (weight, window) = match current {
            Some((start, end, id)) => {
                let width = (end - start + 1) as f64;
                let pos = -((end - i + 1) as f64) / width;
                (scaled_sigmoid(pos) * profile.tp_weight / max_tp, Some(id))
            }
            None => match previous {
                None => (-profile.fp_weight, None),
                Some((prev_r, prev_w)) => {
                    let pos = (i - prev_r) as f64 / (prev_w as f64 - 1.0);
                    (scaled_sigmoid(pos) * profile.fp_weight, None)
                }
            },
        };
        if i as f64 >= probation {
            points.push(SweepPoint {
                anomaly_score: if a.is_nan() { f64::NEG_INFINITY } else { a },
                weight,
                window,
            });
        }
        if let Some((start, end, _)) = current
            && i == end
        {
            previous = Some((end, end - start + 1));
            current = None;
        }
    }
    Ok(points)
}

/// Score of a set of sweep points at threshold `threshold` (§3): detections are
/// `anomaly_score >= threshold`; each window scores its best detection or `-fnWeight`.
#[must_use]
pub fn score_at(points: &[SweepPoint], profile: &Profile, threshold: f64) -> f64 {
    let mut windows: HashMap<u32, f64> = HashMap::new();
    let mut fp = 0.0;
    for p in points {
        match p.window {
            Some(w) => {
                let best = windows.entry(w).or_insert(-profile.fn_weight);
                if p.anomaly_score >= threshold && p.weight > *best {
                    *best = p.weight;
                }
            }
            None if p.anomaly_score >= threshold => fp += p.weight,
            None => {}
        }
    }
    fp + windows.values().sum::<f64>()
}

/// `score(θ)` for θ = 1.1 and every distinct anomaly score, highest θ first (§3).
#[must_use]
pub fn sweep(points: &[SweepPoint], profile: &Profile) -> Vec<(f64, f64)> {
    let mut sorted: Vec<&SweepPoint> = points.iter().collect();
    sorted.sort_by(|a, b| b.anomaly_score.total_cmp(&a.anomaly_score));
    let mut best: HashMap<u32, f64> = HashMap::new();
    for p in points {
        if let Some(w) = p.window {
            best.insert(w, -profile.fn_weight);
        }
    }
    let mut window_sum: f64 = best.values().sum();
    let mut fp = 0.0;
    let mut threshold = 1.1;
    let mut table = Vec::new();
    for p in sorted {
        if p.anomaly_score != threshold {
            table.push((threshold, fp + window_sum));
            threshold = p.anomaly_score;
        }
        match p.window {
            None => fp += p.weight,
            Some(w) => {
                let b = best.get_mut(&w).expect("every window was entered above");
                if p.weight > *b {
                    window_sum += p.weight - *b;
                    *b = p.weight;
                }
            }
        }
    }
    table.push((threshold, fp + window_sum));
    table
}

/// The threshold with the highest score and that score (§4); ties go to the higher threshold.
#[must_use]
pub fn optimize(points: &[SweepPoint], profile: &Profile) -> (f64, f64) {
    sweep(points, profile)
        .into_iter()
        .fold((1.1, f64::NEG_INFINITY), |best, row| {
            if row.1 > best.1 { row } else { best }
        })
}

/// NAB's normalized score (§6): 0 for the null detector, 100 for a perfect one.
#[must_use]
pub fn normalize(raw: f64, window_count: usize, profile: &Profile) -> f64 {
    let windows = window_count as f64;
    let null = -profile.fn_weight * windows;
    let perfect = profile.tp_weight * windows;
    100.0 * (raw - null) / (perfect - null)
}

/// How the threshold of a corpus score is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ThresholdRule {
    /// The exhaustive sweep over the pooled corpus (NAB v1.1, for new detectors).
    Optimize,
    /// A given threshold, e.g. the stored one that reproduces a published score.
    Fixed(f64),
}

/// One file's score at the chosen threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct FileScore {
    /// Path under `data/`.
    pub rel_path: String,
    /// Raw score of the file (§5).
    pub score: f64,
    /// Non-probationary detections inside windows (records).
    pub tp_records: usize,
    /// Non-probationary detections outside windows (records).
    pub fp_records: usize,
}

/// A detector's score over a corpus for one profile.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileScore {
    /// The profile.
    pub profile: Profile,
    /// Threshold used.
    pub threshold: f64,
    /// Sum of the per-file scores (`Totals` row).
    pub raw: f64,
    /// Normalized NAB score.
    pub normalized: f64,
    /// Per-file scores, in corpus order.
    pub files: Vec<FileScore>,
}

/// Scores a detector's outputs (`scores[f]` for `corpus.files[f]`) under one profile.
///
/// # Errors
/// [`NabError::Length`] when the outputs do not match the corpus.
pub fn score_corpus(
    corpus: &Corpus,
    scores: &[Vec<f64>],
    profile: &Profile,
    rule: ThresholdRule,
) -> Result<ProfileScore, NabError> {
    if scores.len() != corpus.files.len() {
        return Err(NabError::Length {
            file: corpus.root.display().to_string(),
            expected: corpus.files.len(),
            found: scores.len(),
        });
    }
    let mut per_file = Vec::with_capacity(scores.len());
    let mut next_id = 0u32;
    for (file, s) in corpus.files.iter().zip(scores) {
        per_file.push(sweep_points(file, s, profile, next_id)?);
        next_id += u32::try_from(file.windows.len()).expect("window count fits u32");
    }
    let threshold = match rule {
        ThresholdRule::Fixed(t) => t,
        ThresholdRule::Optimize => optimize(&per_file.concat(), profile).0,
    };
    let files: Vec<FileScore> = corpus
        .files
        .iter()
        .zip(&per_file)
        .map(|(file, points)| {
            let detected = |inside: bool| {
                points
                    .iter()
                    .filter(|p| p.anomaly_score >= threshold && p.window.is_some() == inside)
                    .count()
            };
            FileScore {
                rel_path: file.rel_path.clone(),
                score: score_at(points, profile, threshold),
                tp_records: detected(true),
                fp_records: detected(false),
            }
        })
        .collect();
    let raw = files.iter().map(|f| f.score).sum();
    Ok(ProfileScore {
        profile: profile.clone(),
        threshold,
        raw,
        normalized: normalize(raw, corpus.window_count, profile),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nab::corpus::Window;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 5e-6
    }

    #[test]
    fn scaled_sigmoid_matches_scoring_md() {
        assert!(close(scaled_sigmoid(-1.0), 0.98661));
        assert!(close(scaled_sigmoid(-0.5), 0.84828));
        assert!(close(scaled_sigmoid(0.0), 0.0));
        assert!(close(scaled_sigmoid(1.0), -0.98661));
        assert!((scaled_sigmoid(3.0) - -1.0).abs() < 1e-6);
        assert_eq!(scaled_sigmoid(3.000_001), -1.0);
    }

    #[test]
    fn probation_is_fifteen_percent_capped_at_750() {
        assert_eq!(probationary_length(1000), 150.0);
        assert_eq!(probationary_length(4032), 604.0);
        assert_eq!(probationary_length(22_695), 750.0);
    }

    fn toy_file() -> CorpusFile {
        // 100 rows, one window over rows 40..=49; probation = 15 rows.
        CorpusFile {
            rel_path: "toy/toy.csv".into(),
            category: "toy".into(),
            name: "toy".into(),
            timestamps_ms: (0..100).map(|i| i * 60_000).collect(),
            values: vec![0.0; 100],
            windows: vec![Window {
                start_ms: 40 * 60_000,
                end_ms: 49 * 60_000,
                start: 40,
                end: 49,
            }],
        }
    }

    #[test]
    fn window_edges_and_false_positives_score_as_specified() {
        let profile = &Profile::builtin()[0];
        let file = toy_file();
        let points = sweep_points(&file, &[0.0; 100], profile, 0).expect("lengths match");
        assert_eq!(points.len(), 85);
        // Row 40 is the left edge: full tpWeight.
        assert!(close(points[40 - 15].weight, 1.0));
        // Before any window: -fpWeight. Right after: almost free.
        assert!(close(points[0].weight, -0.11));
        assert!(points[50 - 15].weight > -0.11 * 0.5);
        // Three widths on: full cost.
        assert!(close(points[99 - 15].weight, -0.11));
        // No detections: the window is missed.
        assert!(close(score_at(&points, profile, 0.5), -1.0));
    }

    #[test]
    fn sweep_agrees_with_score_at_and_prefers_the_higher_threshold() {
        let profile = &Profile::builtin()[0];
        let file = toy_file();
        let mut scores = vec![0.1; 100];
        scores[20] = 0.6; // a false positive
        scores[42] = 0.7; // early in the window
        scores[45] = 0.9; // later in the window
        let points = sweep_points(&file, &scores, profile, 0).expect("lengths match");
        for (th, s) in sweep(&points, profile) {
            assert!(close(s, score_at(&points, profile, th)), "{th}");
        }
        let (th, best) = optimize(&points, profile);
        assert_eq!(th, 0.7);
        assert!(close(best, score_at(&points, profile, 0.7)));
    }
}
