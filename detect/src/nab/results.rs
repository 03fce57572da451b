//! Detector outputs in NAB's results layout: `<dir>/<detector>/<category>/<detector>_<name>.csv`
//! with `timestamp,value,anomaly_score,label`, and the published `*_scores.csv` tables.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::NabError;
use super::corpus::{Corpus, CorpusFile};
use super::time;

/// Where NAB keeps a detector's output for one file.
#[must_use]
pub fn results_path(dir: &Path, detector: &str, file: &CorpusFile) -> PathBuf {
    dir.join(detector)
        .join(&file.category)
        .join(format!("{detector}_{}.csv", file.name))
}

/// One numeric column of a CSV file with a header row, by column name.
///
/// # Errors
/// [`NabError`] when the file is missing, has no such column or a value does not parse.
pub fn read_column(path: &Path, column: &str) -> Result<Vec<f64>, NabError> {
    let text = super::corpus::read_text(path)?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let index = header
        .split(',')
        .position(|c| c.trim() == column)
        .ok_or_else(|| NabError::parse(path, 1, format!("no `{column}` column")))?;
    lines
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            line.split(',')
                .nth(index)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .ok_or_else(|| NabError::parse(path, i + 2, format!("bad `{column}`")))
        })
        .collect()
}

/// A detector's `anomaly_score` columns for every file of the corpus, in corpus order.
///
/// # Errors
/// [`NabError`] when a file is missing or unreadable, or its row count differs from the data.
pub fn read_detector_scores(
    dir: &Path,
    detector: &str,
    corpus: &Corpus,
) -> Result<Vec<Vec<f64>>, NabError> {
    corpus
        .files
        .iter()
        .map(|file| {
            let path = results_path(dir, detector, file);
            let scores = read_column(&path, "anomaly_score")?;
            if scores.len() != file.values.len() {
                return Err(NabError::Length {
                    file: path.display().to_string(),
                    expected: file.values.len(),
                    found: scores.len(),
                });
            }
            Ok(scores)
        })
        .collect()
}

/// Writes a detector's scores in NAB's results layout, one CSV per file
/// (`timestamp,value,anomaly_score,label`; label 1 inside a window).
///
/// # Errors
/// [`NabError::Io`] when a directory or file cannot be written.
pub fn write_detector_scores(
    dir: &Path,
    detector: &str,
    corpus: &Corpus,
    scores: &[Vec<f64>],
) -> Result<(), NabError> {
    for (file, file_scores) in corpus.files.iter().zip(scores) {
        let path = results_path(dir, detector, file);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| NabError::io(parent, source))?;
        }
        let mut out = String::with_capacity(file.values.len() * 48);
        out.push_str("timestamp,value,anomaly_score,label\n");
        for (i, ((&ts, &value), &score)) in file
            .timestamps_ms
            .iter()
            .zip(&file.values)
            .zip(file_scores)
            .enumerate()
        {
            let label = u8::from(file.in_window(i));
            writeln!(out, "{},{value},{score},{label}", time::format_ms(ts))
                .expect("writing to a String cannot fail");
        }
        fs::write(&path, out).map_err(|source| NabError::io(&path, source))?;
    }
    Ok(())
}

/// One row of a published `<det>_<profile>_scores.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredScore {
    /// `File` column (path under `data/`), or `Totals`.
    pub file: String,
    /// `Threshold` column (empty on the `Totals` row: NaN).
    pub threshold: f64,
    /// `Score` column.
    pub score: f64,
}

/// Reads a published `*_scores.csv` (`Detector,Profile,File,Threshold,Score,...`), the `Totals`
/// row included (its `file` is `Totals`).
///
/// # Errors
/// [`NabError`] when the file is missing or a row does not parse.
pub fn read_stored_scores(path: &Path) -> Result<Vec<StoredScore>, NabError> {
    let text = super::corpus::read_text(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let bad = || {
            NabError::parse(
                path,
                i + 1,
                "expected Detector,Profile,File,Threshold,Score",
            )
        };
        let (first, file, threshold, score) = match fields.as_slice() {
            [first, _, file, threshold, score, ..] => (*first, *file, *threshold, *score),
            _ => return Err(bad()),
        };
        rows.push(StoredScore {
            file: if first == "Totals" { first } else { file }.to_owned(),
            threshold: threshold.trim().parse().unwrap_or(f64::NAN),
            score: score.trim().parse().map_err(|_| bad())?,
        });
    }
    Ok(rows)
}
