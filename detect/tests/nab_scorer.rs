//! The NAB scorer against NAB's published results: scoring the committed outputs of the
//! `numenta` and `windowedGaussian` detectors at their stored thresholds must give the published
//! normalized scores (`results/final_results.json`), per-file scores (`*_scores.csv`) and the
//! per-record `S(t)_<profile>` contributions. Skips when the data folder is absent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use fleetmind_detect::nab::{
    Corpus, ThresholdRule, optimize, read_column, read_detector_scores, read_stored_scores,
    results_path, score_corpus, sweep_points,
};

const DETECTORS: [&str; 2] = ["numenta", "windowedGaussian"];

fn nab_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FLEETMIND_NAB_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/NAB"),
        PathBuf::from,
    );
    if dir.join("labels/combined_windows.json").exists() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: no NAB corpus at {} (set FLEETMIND_NAB_DIR)",
            dir.display()
        );
        None
    }
}

/// The committed detector outputs, untarred into a temporary directory.
fn detector_outputs(nab: &Path) -> Option<tempfile::TempDir> {
    let tgz = nab.join("detector_outputs/nab_results_windowedGaussian_numenta.tgz");
    if !tgz.exists() {
        eprintln!("SKIP: {} is missing", tgz.display());
        return None;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    match Command::new("tar")
        .arg("-xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(dir.path())
        .status()
    {
        Ok(status) if status.success() => Some(dir),
        Ok(status) => panic!("tar -xzf {} failed: {status}", tgz.display()),
        Err(e) => {
            eprintln!("SKIP: cannot run tar: {e}");
            None
        }
    }
}

fn published(nab: &Path) -> BTreeMap<String, BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(nab.join("results/final_results.json")).expect("read");
    serde_json::from_str(&text).expect("final_results.json parses")
}

#[test]
fn reproduces_published_scores_at_stored_thresholds() {
    let Some(nab) = nab_dir() else { return };
    let Some(outputs) = detector_outputs(&nab) else {
        return;
    };
    let corpus = Corpus::load(&nab).expect("corpus loads");
    assert_eq!(corpus.files.len(), 58);
    assert_eq!(corpus.window_count, 116);
    assert_eq!(corpus.rows(), 365_558);
    let published = published(&nab);
    for detector in DETECTORS {
        let scores = read_detector_scores(outputs.path(), detector, &corpus).expect("outputs");
        for profile in &corpus.profiles {
            let stored_path = nab.join(format!(
                "results/{detector}/{detector}_{}_scores.csv",
                profile.name
            ));
            let stored = read_stored_scores(&stored_path).expect("stored scores");
            let threshold = stored[0].threshold;
            let got = score_corpus(&corpus, &scores, profile, ThresholdRule::Fixed(threshold))
                .expect("scores");
            let want = published[detector][&profile.name];
            eprintln!(
                "{detector} {}: threshold {threshold} raw {:.6} normalized {:.6} (published {want:.6})",
                profile.name, got.raw, got.normalized
            );
            assert!(
                (got.normalized - want).abs() < 1e-6,
                "{detector} {}: {} != {want}",
                profile.name,
                got.normalized
            );
            for row in &stored {
                let score = if row.file == "Totals" {
                    got.raw
                } else {
                    got.files
                        .iter()
                        .find(|f| f.rel_path == row.file)
                        .expect("file in corpus")
                        .score
                };
                assert!(
                    (score - row.score).abs() < 1e-6,
                    "{detector} {} {}: {score} != {}",
                    profile.name,
                    row.file,
                    row.score
                );
            }
            // Each file's non-zero S(t) entries (window contributions and weighted FPs) sum to
            // its score.
            for (file, file_score) in corpus.files.iter().zip(&got.files) {
                let path = results_path(outputs.path(), detector, file);
                let column = format!("S(t)_{}", profile.name);
                let sum: f64 = read_column(&path, &column)
                    .expect("S(t) column")
                    .iter()
                    .sum();
                assert!(
                    (sum - file_score.score).abs() < 1e-6,
                    "{detector} {} {}: S(t) sum {sum} != {}",
                    profile.name,
                    file.rel_path,
                    file_score.score
                );
            }
        }
    }
}

#[test]
fn nyc_taxi_standard_matches_its_worked_example() {
    let Some(nab) = nab_dir() else { return };
    let Some(outputs) = detector_outputs(&nab) else {
        return;
    };
    let corpus = Corpus::load(&nab).expect("corpus loads");
    let index = corpus
        .files
        .iter()
        .position(|f| f.rel_path == "realKnownCause/nyc_taxi.csv")
        .expect("nyc_taxi");
    let file = &corpus.files[index];
    let scores = read_column(
        &results_path(outputs.path(), "numenta", file),
        "anomaly_score",
    )
    .expect("numenta nyc_taxi");
    let profile = &corpus.profiles[0];
    assert_eq!(profile.name, "standard");
    let points = sweep_points(file, &scores, profile, 0).expect("points");
    let got = fleetmind_detect::nab::score_at(&points, profile, 0.542_187_690_735);
    assert!((got - 2.43573).abs() < 1e-5, "{got}");
}

#[test]
fn sweep_finds_the_stored_threshold_or_better() {
    let Some(nab) = nab_dir() else { return };
    let Some(outputs) = detector_outputs(&nab) else {
        return;
    };
    let corpus = Corpus::load(&nab).expect("corpus loads");
    // Sweep optimum from an independent reimplementation (verification_results.json).
    let expected_best = [
        ("numenta", "standard", 70.1011),
        ("numenta", "reward_low_FP_rate", 63.2092),
        ("numenta", "reward_low_FN_rate", 74.3202),
        ("windowedGaussian", "standard", 39.6495),
        ("windowedGaussian", "reward_low_FP_rate", 20.868),
        ("windowedGaussian", "reward_low_FN_rate", 47.41),
    ];
    for (detector, profile_name, best_norm) in expected_best {
        let scores = read_detector_scores(outputs.path(), detector, &corpus).expect("outputs");
        let profile = corpus
            .profiles
            .iter()
            .find(|p| p.name == profile_name)
            .expect("profile");
        let stored_path = nab.join(format!(
            "results/{detector}/{detector}_{profile_name}_scores.csv"
        ));
        let stored_threshold = read_stored_scores(&stored_path).expect("stored")[0].threshold;
        let fixed = score_corpus(
            &corpus,
            &scores,
            profile,
            ThresholdRule::Fixed(stored_threshold),
        )
        .expect("fixed");
        let swept =
            score_corpus(&corpus, &scores, profile, ThresholdRule::Optimize).expect("sweep");
        eprintln!(
            "{detector} {profile_name}: sweep threshold {} normalized {:.4}; stored {stored_threshold} {:.4}",
            swept.threshold, swept.normalized, fixed.normalized
        );
        assert!(swept.raw >= fixed.raw - 1e-9);
        assert!(
            (swept.normalized - best_norm).abs() < 1e-4,
            "{}",
            swept.normalized
        );
        // The pooled optimum equals the sum of the per-file scores at that threshold.
        let mut pooled = Vec::new();
        let mut id = 0;
        for (file, s) in corpus.files.iter().zip(&scores) {
            pooled.extend(sweep_points(file, s, profile, id).expect("points"));
            id += u32::try_from(file.windows.len()).expect("small");
        }
        let (threshold, raw) = optimize(&pooled, profile);
        assert_eq!(threshold, swept.threshold);
        assert!((raw - swept.raw).abs() < 1e-6);
    }
}
