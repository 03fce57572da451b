//! Reading a corpus in NAB's layout: `data/<category>/<name>.csv` (`timestamp,value`),
//! `labels/combined_windows.json` and, if present, `config/profiles.json`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::NabError;
use super::time;

/// The weights of one NAB cost profile (`config/profiles.json`, `CostMatrix`).
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Profile name, e.g. `standard`.
    pub name: String,
    /// Reward for a detection at the very start of a window (`tpWeight`).
    pub tp_weight: f64,
    /// Cost of a false positive far from any window (`fpWeight`).
    pub fp_weight: f64,
    /// Cost of a window without detection (`fnWeight`).
    pub fn_weight: f64,
}

impl Profile {
    fn new(name: &str, tp_weight: f64, fp_weight: f64, fn_weight: f64) -> Self {
        Self {
            name: name.to_owned(),
            tp_weight,
            fp_weight,
            fn_weight,
        }
    }

    /// NAB's three profiles as published (`standard`, `reward_low_FP_rate`,
    /// `reward_low_FN_rate`), used when a corpus has no `config/profiles.json`.
    #[must_use]
    pub fn builtin() -> Vec<Self> {
        vec![
            Self::new("standard", 1.0, 0.11, 1.0),
            Self::new("reward_low_FP_rate", 1.0, 0.22, 1.0),
            Self::new("reward_low_FN_rate", 1.0, 0.11, 2.0),
        ]
    }
}

/// One labelled anomaly window, by timestamp and by row index in its file (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First timestamp of the window (Unix ms).
    pub start_ms: i64,
    /// Last timestamp of the window (Unix ms).
    pub end_ms: i64,
    /// Row index of the first timestamp.
    pub start: usize,
    /// Row index of the last timestamp.
    pub end: usize,
}

/// One series of the corpus with its windows.
#[derive(Clone, Debug)]
pub struct CorpusFile {
    /// Path under `data/`, as keyed in `combined_windows.json` (`realKnownCause/nyc_taxi.csv`).
    pub rel_path: String,
    /// The folder under `data/` (`realKnownCause`).
    pub category: String,
    /// The file name without `.csv` (`nyc_taxi`).
    pub name: String,
    /// Row timestamps, Unix ms.
    pub timestamps_ms: Vec<i64>,
    /// Row values.
    pub values: Vec<f64>,
    /// Windows in time order, never overlapping.
    pub windows: Vec<Window>,
}

impl CorpusFile {
    /// The smallest and largest value (NAB's `inputMin`/`inputMax`).
    #[must_use]
    pub fn range(&self) -> (f64, f64) {
        self.values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            })
    }

    /// Whether row `i` lies inside a window (NAB's `label` column).
    #[must_use]
    pub fn in_window(&self, i: usize) -> bool {
        self.windows.iter().any(|w| w.start <= i && i <= w.end)
    }
}

/// A whole corpus: every file of `data/`, their windows and the cost profiles.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// The directory it was read from.
    pub root: PathBuf,
    /// Files sorted by relative path.
    pub files: Vec<CorpusFile>,
    /// Windows in `combined_windows.json`: the normalization counts every one.
    pub window_count: usize,
    /// Cost profiles, `standard` first when present.
    pub profiles: Vec<Profile>,
}

impl Corpus {
    /// Reads a corpus in NAB's layout.
    ///
    /// # Errors
    /// [`NabError`] naming the path when a file is missing or unreadable, a row does not parse,
    /// a data file has no entry in the labels (or the reverse), or a window boundary is not a
    /// timestamp of its file.
    pub fn load(root: &Path) -> Result<Self, NabError> {
        let labels_path = root.join("labels").join("combined_windows.json");
        let labels: BTreeMap<String, Vec<[String; 2]>> = read_json(&labels_path)?;
        let profiles = read_profiles(root)?;
        let data_dir = root.join("data");
        let mut rel_paths = Vec::new();
        for category in list_dir(&data_dir)? {
            if !category.is_dir() {
                continue;
            }
            for file in list_dir(&category)? {
                if file.extension().is_some_and(|e| e == "csv") {
                    let rel = file
                        .strip_prefix(&data_dir)
                        .expect("listed under data_dir")
                        .to_string_lossy()
                        .replace('\\', "/");
                    rel_paths.push(rel);
                }
            }
        }
        rel_paths.sort();
        if rel_paths.is_empty() {
            return Err(NabError::Missing {
                path: data_dir.join("<category>/<name>.csv"),
            });
        }
        if let Some(extra) = labels.keys().find(|k| rel_paths.binary_search(k).is_err()) {
            return Err(NabError::Missing {
                path: data_dir.join(extra),
            });
        }
        let mut files = Vec::with_capacity(rel_paths.len());
        for rel in rel_paths {
            let Some(raw_windows) = labels.get(&rel) else {
                return Err(NabError::Unlabelled {
                    labels: labels_path,
                    file: rel,
                });
            };
            files.push(read_file(&data_dir, &rel, raw_windows)?);
        }
        Ok(Self {
            root: root.to_owned(),
            window_count: labels.values().map(Vec::len).sum(),
            files,
            profiles,
        })
    }

    /// Rows over all files.
    #[must_use]
    pub fn rows(&self) -> usize {
        self.files.iter().map(|f| f.values.len()).sum()
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, NabError> {
    let entries = fs::read_dir(dir).map_err(|source| NabError::io(dir, source))?;
    let mut out = Vec::new();
    for entry in entries {
        out.push(entry.map_err(|source| NabError::io(dir, source))?.path());
    }
    out.sort();
    Ok(out)
}

pub(super) fn read_text(path: &Path) -> Result<String, NabError> {
    fs::read_to_string(path).map_err(|source| NabError::io(path, source))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, NabError> {
    serde_json::from_str(&read_text(path)?).map_err(|source| NabError::Json {
        path: path.to_owned(),
        source,
    })
}

#[derive(Deserialize)]
struct ProfileEntry {
    #[serde(rename = "CostMatrix")]
    cost_matrix: CostMatrixEntry,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CostMatrixEntry {
    tp_weight: f64,
    fp_weight: f64,
    fn_weight: f64,
}

fn read_profiles(root: &Path) -> Result<Vec<Profile>, NabError> {
    let path = root.join("config").join("profiles.json");
    if !path.exists() {
        return Ok(Profile::builtin());
    }
    let entries: BTreeMap<String, ProfileEntry> = read_json(&path)?;
    let mut profiles: Vec<Profile> = entries
        .into_iter()
        .map(|(name, e)| {
            let m = e.cost_matrix;
            Profile::new(&name, m.tp_weight, m.fp_weight, m.fn_weight)
        })
        .collect();
    // Published order: standard, then the rest by name.
    profiles.sort_by_key(|p| (p.name != "standard", p.name.clone()));
    Ok(profiles)
}

fn read_file(
    data_dir: &Path,
    rel: &str,
    raw_windows: &[[String; 2]],
) -> Result<CorpusFile, NabError> {
    let path = data_dir.join(rel);
    let text = read_text(&path)?;
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, h)| h).unwrap_or_default();
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let find = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| NabError::parse(&path, 1, format!("no `{name}` column")))
    };
    let (ts_col, value_col) = (find("timestamp")?, find("value")?);
    let mut timestamps_ms = Vec::new();
    let mut values = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let ts = fields
            .get(ts_col)
            .and_then(|t| time::parse_ms(t))
            .ok_or_else(|| NabError::parse(&path, i + 1, "bad timestamp"))?;
        let value = fields
            .get(value_col)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| NabError::parse(&path, i + 1, "bad value"))?;
        timestamps_ms.push(ts);
        values.push(value);
    }
    let index_of = |text: &str| -> Result<(i64, usize), NabError> {
        let ms = time::parse_ms(text).ok_or_else(|| NabError::BadWindow {
            file: rel.to_owned(),
            timestamp: text.to_owned(),
        })?;
        let idx =
            timestamps_ms
                .iter()
                .position(|&t| t == ms)
                .ok_or_else(|| NabError::BadWindow {
                    file: rel.to_owned(),
                    timestamp: text.to_owned(),
                })?;
        Ok((ms, idx))
    };
    let mut windows = Vec::with_capacity(raw_windows.len());
    for [start, end] in raw_windows {
        let (start_ms, start) = index_of(start)?;
        let (end_ms, end) = index_of(end)?;
        windows.push(Window {
            start_ms,
            end_ms,
            start,
            end,
        });
    }
    windows.sort_by_key(|w| w.start);
    let (category, file_name) = rel.split_once('/').unwrap_or(("", rel));
    Ok(CorpusFile {
        rel_path: rel.to_owned(),
        category: category.to_owned(),
        name: file_name.trim_end_matches(".csv").to_owned(),
        timestamps_ms,
        values,
        windows,
    })
}
