//! `fleetmind audit verify` against a log written by the library: intact, one byte changed,
//! missing, and a tip that the log no longer ends at.

#![allow(clippy::unwrap_used)]

mod common;

use fleetmind_remediation::audit::{AuditEntry, AuditLog};

use common::cli;

/// Writes `n` records under `<data_dir>/audit` and returns the tip hash.
fn write_log(data_dir: &std::path::Path, n: i64) -> String {
    let mut log = AuditLog::open(&data_dir.join("audit")).unwrap();
    let mut tip = String::new();
    for i in 0..n {
        let record = log
            .append(AuditEntry {
                ts: 1_700_000_000_000 + i,
                actor: "policy:cpu-steal".to_owned(),
                event: "decision".to_owned(),
                action_id: Some(format!("act-{i}")),
                policy: Some("cpu-steal".to_owned()),
                policy_version: Some("v1".to_owned()),
                detail: serde_json::json!({"incident": {"vm": format!("web-{i}")}}),
            })
            .unwrap();
        tip = record.hash;
    }
    tip
}

#[test]
fn audit_verify_passes_on_the_log_and_fails_after_one_changed_byte() {
    let dir = tempfile::tempdir().unwrap();
    let tip = write_log(dir.path(), 5);
    let file = dir.path().join("audit/audit.jsonl");
    let file_arg = file.to_str().unwrap();

    let (code, out, err) = cli(&["audit", "verify", "--file", file_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("5 records, chain intact, tip {tip}")),
        "{out}"
    );

    // The default path: <data dir>/audit/audit.jsonl, with the tip checked.
    let data_dir = dir.path().to_str().unwrap();
    let (code, out, err) = cli(&["audit", "verify", "--data-dir", data_dir, "--tip", &tip]);
    assert_eq!(code, 0, "{out}{err}");

    // One byte of the fourth record's detail: `web-3` becomes `web-4`.
    let mut bytes = std::fs::read(&file).unwrap();
    let line_start = bytes
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'\n')
        .nth(2)
        .unwrap()
        .0
        + 1;
    let at = line_start
        + bytes[line_start..]
            .windows(5)
            .position(|w| w == b"web-3")
            .unwrap()
        + 4;
    bytes[at] = b'4';
    std::fs::write(&file, &bytes).unwrap();
    let (code, out, err) = cli(&["audit", "verify", "--file", file_arg]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("line 4: record seq 3: hash does not match its contents"),
        "{err}"
    );
}

#[test]
fn audit_verify_reports_a_missing_log_and_a_cut_tail() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (code, _, err) = cli(&["audit", "verify", "--data-dir", data_dir]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("audit.jsonl does not exist"), "{err}");

    let tip = write_log(dir.path(), 3);
    let file = dir.path().join("audit/audit.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    let first_two: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, first_two).unwrap();
    let (code, out, err) = cli(&["audit", "verify", "--data-dir", data_dir]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = cli(&["audit", "verify", "--data-dir", data_dir, "--tip", &tip]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not at the expected tip"), "{err}");
}
