//! `fleetmind bench nab`: the streaming detector on the Numenta Anomaly Benchmark (or any
//! corpus in NAB's layout), under NAB's rules: a fresh detector per file told the file's
//! minimum and maximum, one record at a time, one parameter set; scored by NAB v1.1's
//! exhaustive threshold sweep for the three cost profiles. The scorer lives in
//! `fleetmind_detect::nab` and is checked against NAB's published results by its tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use fleetmind_detect::nab::{
    Corpus, ThresholdRule, run_detector, score_all, write_detector_scores,
};
use fleetmind_detect::{DETECTOR_NAME, DetectorConfig};

/// Options of `fleetmind bench nab`.
#[derive(Debug, Args)]
pub struct BenchNabArgs {
    /// Corpus in NAB's layout: `data/<category>/<name>.csv` (`timestamp,value`) and
    /// `labels/combined_windows.json`; `config/profiles.json` is optional.
    #[arg(long, default_value = "../shared/data/NAB")]
    pub data: PathBuf,
    /// Also write the per-record results there, in NAB's layout
    /// (`<detector>/<category>/<detector>_<name>.csv`: `timestamp,value,anomaly_score,label`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the benchmark and prints the figures.
pub fn run(args: &BenchNabArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let corpus = Corpus::load(&args.data)
        .with_context(|| format!("cannot read a NAB corpus at {}", args.data.display()))?;
    let config = DetectorConfig::default();
    let run = run_detector(&corpus, &config);
    if let Some(out) = &args.out {
        write_detector_scores(out, DETECTOR_NAME, &corpus, &run.scores)
            .with_context(|| format!("cannot write results under {}", out.display()))?;
    }
    let swept = score_all(&corpus, &run.scores, ThresholdRule::Optimize)?;
    let fixed = score_all(
        &corpus,
        &run.scores,
        ThresholdRule::Fixed(config.threshold()),
    )?;
    let elapsed = started.elapsed();

    let rows = corpus.rows();
    let per_row = |secs: f64| secs * 1e6 / rows.max(1) as f64;
    println!(
        "NAB corpus {}: {} files, {rows} rows, {} windows",
        corpus.root.display(),
        corpus.files.len(),
        corpus.window_count
    );
    println!(
        "detector {DETECTOR_NAME}, {} build; threshold by exhaustive sweep (NAB v1.1)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "{:<20} {:>8} {:>12} {:>10}",
        "profile", "score", "raw total", "threshold"
    );
    for p in &swept {
        println!(
            "{:<20} {:>8.2} {:>12.4} {:>10.6}",
            p.profile.name, p.normalized, p.raw, p.threshold
        );
    }
    let at_config: Vec<String> = fixed
        .iter()
        .map(|p| format!("{} {:.2}", p.profile.name, p.normalized))
        .collect();
    println!(
        "at the configured threshold {}: {}",
        config.threshold(),
        at_config.join(", ")
    );
    println!(
        "time per record: detector {:.2} µs, total {:.2} µs (read, detect, score{})",
        per_row(run.detector_time.as_secs_f64()),
        per_row(elapsed.as_secs_f64()),
        if args.out.is_some() { ", write" } else { "" }
    );
    if let Some(out) = &args.out {
        println!(
            "results written under {}",
            out.join(DETECTOR_NAME).display()
        );
    }
    print_published(&corpus);
    Ok(())
}

/// Published reference scores from `results/final_results.json`, when the corpus has it.
fn print_published(corpus: &Corpus) {
    let path = corpus.root.join("results").join("final_results.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let Ok(table) = serde_json::from_str::<BTreeMap<String, BTreeMap<String, f64>>>(&text) else {
        eprintln!(
            "note: {} does not parse; no reference scores",
            path.display()
        );
        return;
    };
    println!("published ({}):", path.display());
    for detector in ["numenta", "ARTime"] {
        if let Some(scores) = table.get(detector) {
            let line: Vec<String> = corpus
                .profiles
                .iter()
                .filter_map(|p| scores.get(&p.name).map(|s| format!("{} {s:.2}", p.name)))
                .collect();
            println!("  {detector:<10} {}", line.join(", "));
        }
    }
}
