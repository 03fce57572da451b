//! Tuning loop: runs the detector over a NAB corpus and prints the three profile scores.
//!
//! `cargo run --release -p fleetmind-detect --example nab -- DIR [key=value ...]`, where each
//! `key=value` overrides a field of the default `DetectorConfig` (value as JSON).

use std::path::PathBuf;
use std::time::Instant;

use fleetmind_detect::DetectorConfig;
use fleetmind_detect::nab::{Corpus, ThresholdRule, run_detector, score_all};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "../shared/data/NAB".into()));
    let mut config = serde_json::to_value(DetectorConfig::default())?;
    let mut per_category = false;
    let mut per_file = false;
    for arg in args {
        if arg == "--files" {
            per_file = true;
            continue;
        }
        if arg == "--cat" {
            per_category = true;
            continue;
        }
        let (key, value) = arg.split_once('=').ok_or("expected key=value")?;
        config[key] = serde_json::from_str(value)?;
    }
    let config: DetectorConfig = serde_json::from_value(config)?;
    let corpus = Corpus::load(&dir)?;
    let started = Instant::now();
    let run = run_detector(&corpus, &config);
    let scored = score_all(&corpus, &run.scores, ThresholdRule::Optimize)?;
    let rows = corpus.rows() as f64;
    let mut line = String::new();
    for p in &scored {
        line += &format!(
            "{}={:.2} (th {:.6}) ",
            p.profile.name, p.normalized, p.threshold
        );
    }
    let fixed = score_all(
        &corpus,
        &run.scores,
        ThresholdRule::Fixed(config.threshold()),
    )?;
    println!(
        "{line}| at config th {:.3}: std {:.2} | {:.2} us/rec (all {:.1}s)",
        config.threshold(),
        fixed[0].normalized,
        run.detector_time.as_secs_f64() * 1e6 / rows,
        started.elapsed().as_secs_f64()
    );
    if let Some(file) = corpus.files.iter().max_by_key(|f| f.values.len()) {
        let mut detector = fleetmind_detect::SeriesDetector::new(&config, Some(file.range()));
        for (&ts, &v) in file.timestamps_ms.iter().zip(&file.values) {
            detector.update(ts, v);
        }
        println!(
            "state after {} rows of {}: {} bytes in memory, {} bytes as JSON",
            file.values.len(),
            file.rel_path,
            detector.memory_bytes(),
            serde_json::to_string(&detector)?.len()
        );
    }
    if per_file {
        let std = &scored[0];
        for ((f, s), sc) in corpus.files.iter().zip(&std.files).zip(&run.scores) {
            let firsts: Vec<String> = f
                .windows
                .iter()
                .map(
                    |w| match (w.start..=w.end).find(|&i| sc[i] >= std.threshold) {
                        Some(i) => format!(
                            "{:+.2}",
                            (i - w.start) as f64 / (w.end - w.start + 1) as f64
                        ),
                        None => "miss".into(),
                    },
                )
                .collect();
            println!(
                "  {:55} n {:6} raw {:6.2} fp {:4} windows [{}]",
                f.rel_path,
                f.values.len(),
                s.score,
                s.fp_records,
                firsts.join(" ")
            );
        }
    }
    if per_category {
        let std = &scored[0];
        let mut cats: std::collections::BTreeMap<&str, (f64, usize, usize, usize)> =
            Default::default();
        for (f, s) in corpus.files.iter().zip(&std.files) {
            let e = cats.entry(&f.category).or_default();
            e.0 += s.score;
            e.1 += f.windows.len();
            e.2 += s.tp_records;
            e.3 += s.fp_records;
        }
        for (c, (s, w, tp, fp)) in cats {
            println!("  {c:24} raw {s:7.2} windows {w:3} tp_rec {tp:4} fp_rec {fp:4}");
        }
    }
    Ok(())
}
