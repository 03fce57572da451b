//! Acceptance tests of the foundation: the real binary, real host data, real files, real HTTP.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Daemon, count, get_json, sql, wait_engine_caught_up, wait_for};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// `fleetmind run`: this host appears with CPU and memory values, new samples keep arriving,
/// and the SQL table grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_this_host_with_live_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &["--collect-interval", "100ms"]);
    let client = client();
    let hosts_url = daemon.url("/api/v1/hosts");

    let first: Value = wait_for("a first host sample", Duration::from_secs(30), || async {
        let (status, body) = get_json(&client, &hosts_url).await;
        assert_eq!(status, 200);
        body["hosts"].as_array().and_then(|h| h.first()).cloned()
    })
    .await;
    assert!(first["cpus"].as_u64().unwrap_or(0) >= 1, "{first}");
    assert!(
        first["mem"]["total_bytes"].as_u64().unwrap_or(0) > 0,
        "{first}"
    );
    let busy = first["cpu"]["busy_frac"].as_f64().expect("busy_frac");
    assert!((0.0..=1.0).contains(&busy), "{first}");

    let n0 = count(&client, &daemon, "select count(*) as n from host_samples").await;
    let later: Value = wait_for("a newer host sample", Duration::from_secs(30), || async {
        let (_, body) = get_json(&client, &hosts_url).await;
        let h = body["hosts"][0].clone();
        (h["ts"].as_i64() > first["ts"].as_i64()).then_some(h)
    })
    .await;
    // The sample is a new reading, not the old one re-served: its interval-based values were
    // recomputed (free memory in bytes moves on any live host between two readings).
    assert_ne!(
        (
            later["mem"]["free_bytes"].clone(),
            later["cpu"].clone(),
            later["vmstat"].clone()
        ),
        (
            first["mem"]["free_bytes"].clone(),
            first["cpu"].clone(),
            first["vmstat"].clone()
        ),
    );
    let grown = wait_for("host_samples to grow", Duration::from_secs(30), || async {
        let n = count(&client, &daemon, "select count(*) as n from host_samples").await;
        (n > n0).then_some(n)
    })
    .await;
    assert!(grown > n0);

    let (status, health) = get_json(&client, &daemon.url("/api/v1/health")).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["role"], "run");
    assert!(health["hypervisor"]["state"].is_string(), "{health}");
    // Analytics scores the host's series; the Parquet tier ran its first pass at start.
    let health = wait_for(
        "analytics series and a compaction pass in health",
        Duration::from_secs(30),
        || async {
            let (_, h) = get_json(&client, &daemon.url("/api/v1/health")).await;
            let series = h["analytics"]["series"].as_u64()?;
            let passes = h["compaction"]["passes"].as_u64()?;
            (series > 0 && passes > 0).then_some(h)
        },
    )
    .await;
    assert_eq!(
        health["analytics"]["stopped"],
        serde_json::Value::Null,
        "{health}"
    );
    assert_eq!(
        health["compaction"]["last_error"],
        serde_json::Value::Null,
        "{health}"
    );

    let page = client.get(daemon.url("/")).send().await.expect("index");
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .expect("html")
            .contains("<h1>fleetmind</h1>")
    );
}

/// Malformed SQL is a 400 with the parser's message; writes and DDL are refused with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_endpoint_is_read_only_and_explains_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &["--no-collect"]);
    let client = client();
    let query = |sql: &str| {
        reqwest::Url::parse_with_params(&daemon.url("/api/v1/query"), &[("sql", sql)])
            .expect("url")
            .to_string()
    };

    let (status, body) = get_json(&client, &query("selec count(*) frm host_samples")).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("sql parser error"), "{message}");

    for statement in [
        "INSERT INTO host_samples SELECT * FROM host_samples",
        "CREATE TABLE t AS SELECT 1",
        "COPY (SELECT 1) TO '/tmp/fleetmind-copy-test.csv'",
        "DROP TABLE host_samples",
    ] {
        let (status, body) = get_json(&client, &query(statement)).await;
        assert_eq!(status, 400, "{statement}: {body}");
        assert!(body["error"]["message"].is_string(), "{statement}: {body}");
    }
    assert!(!std::path::Path::new("/tmp/fleetmind-copy-test.csv").exists());

    let (status, body) = get_json(&client, &daemon.url("/api/v1/query")).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get_json(&client, &daemon.url("/api/v1/nope")).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("/api/v1/nope")
    );

    // A table that exists but is empty still answers.
    let body = sql(&client, &daemon, "select count(*) as n from vm_samples").await;
    assert_eq!(body["columns"][0], "n");
    assert_eq!(body["rows"][0][0], 0);
}

/// A host sample of the fake host `kill-test` at `base_ms + seq`.
fn sample(base_ms: u64, seq: u64) -> Value {
    common::host_sample_json("kill-test", base_ms + seq)
}

/// SIGKILL during ingest, restart: every record acknowledged before the kill is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(dir.path(), &["--collect-interval", "50ms"]);
    let client = client();
    let ingest_url = daemon.url("/api/v1/ingest");
    let acked: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    // Recent timestamps, so that the engine's memory window (6 h) keeps them all on replay;
    // each record is told apart by its millisecond offset from `base_ms`.
    let base_ms = u64::try_from(fleetmind_schema::now_ms()).expect("after 1970") - 3_600_000;

    // Two writers post batches as fast as the daemon acknowledges them, until it dies.
    let mut writers = Vec::new();
    for writer in 0..2u64 {
        let (client, url, acked) = (client.clone(), ingest_url.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for batch in 0u64.. {
                let seqs: Vec<u64> = (0..25)
                    .map(|i| writer * 1_000_000 + batch * 25 + i)
                    .collect();
                let body: Vec<Value> = seqs.iter().map(|&s| sample(base_ms, s)).collect();
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        acked.lock().expect("lock").extend(seqs);
                    }
                    Ok(r) => panic!("ingest refused: {}", r.status()),
                    Err(_) => return, // the daemon is gone
                }
            }
        }));
    }
    // Kill while both writers are mid-stream: once a good number of batches are in.
    wait_for("ingest under way", Duration::from_secs(60), || async {
        (acked.lock().expect("lock").len() >= 2_000).then_some(())
    })
    .await;
    daemon.kill9();
    for w in writers {
        w.await.expect("writer task");
    }
    let acked = acked.lock().expect("lock").clone();
    drop(daemon);

    let daemon = Daemon::start(dir.path(), &["--no-collect"]);
    wait_engine_caught_up(&client, &daemon).await;
    let body = sql(
        &client,
        &daemon,
        &format!("select cast(ts as bigint) - {base_ms} as seq from host_samples where host = 'kill-test'"),
    )
    .await;
    let stored: BTreeSet<u64> = body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r[0].as_u64().expect("seq"))
        .collect();
    assert!(
        !body["truncated"].as_bool().unwrap_or(true),
        "raise the row limit for this test"
    );
    assert!(
        acked.len() >= 2_000,
        "only {} records acknowledged",
        acked.len()
    );
    let missing: Vec<_> = acked.difference(&stored).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged records lost, e.g. {missing:?}",
        acked.difference(&stored).count(),
        acked.len()
    );
}

/// SIGTERM: the daemon flushes and exits 0; its data is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(dir.path(), &["--collect-interval", "50ms"]);
    let client = client();
    let before = wait_for("a few samples", Duration::from_secs(30), || async {
        let n = count(&client, &daemon, "select count(*) as n from host_samples").await;
        (n >= 3).then_some(n)
    })
    .await;
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status:?}");
    drop(daemon);

    let daemon = Daemon::start(dir.path(), &["--no-collect"]);
    wait_engine_caught_up(&client, &daemon).await;
    let after = count(&client, &daemon, "select count(*) as n from host_samples").await;
    assert!(after >= before, "{after} < {before}");
}

/// `fleetmind config check` names an unknown key and fails; a good file passes.
#[test]
fn config_check_names_the_unknown_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[engine]\nquery_timeout = \"5s\"\nquery_max_rowz = 10\n",
    )
    .expect("write");
    let out = std::process::Command::new(common::bin())
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("query_max_rowz"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");

    let good = dir.path().join("good.toml");
    let default = std::process::Command::new(common::bin())
        .args(["config", "default"])
        .output()
        .expect("run");
    assert!(default.status.success());
    std::fs::write(&good, &default.stdout).expect("write");
    let out = std::process::Command::new(common::bin())
        .args(["config", "check"])
        .arg(&good)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bad config stops start-up with the key named, before anything is written.
#[test]
fn daemon_refuses_to_start_on_bad_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[collector]\ninterval = \"1ms\"\n").expect("write");
    let out = std::process::Command::new(common::bin())
        .args(["run", "--config"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("collector.interval"), "{stderr}");
    assert!(!dir.path().join("data").exists());
}

/// The split roles: an agent collects this host and sends it up to a server (token checked);
/// the server stores it and answers for it. A wrong token gets nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sends_this_host_to_a_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "agent-token-for-tests-0123";
    let server_cfg = dir.path().join("server.toml");
    std::fs::write(
        &server_cfg,
        format!("[server]\nagent_tokens = [\"{token}\"]\n"),
    )
    .expect("write");
    let server = common::Daemon::start_role(
        "server",
        &dir.path().join("server-data"),
        &[
            "--no-collect",
            "--config",
            server_cfg.to_str().expect("utf-8 path"),
        ],
    );
    let client = client();

    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "[collector]\nhost_name = \"agent-host\"\ninterval = \"100ms\"\n\
             [agent]\nserver_url = \"{}\"\nserver_token = \"{token}\"\nlisten = \"127.0.0.1:0\"\n",
            server.base
        ),
    )
    .expect("write");
    let agent = common::Agent::start(&agent_cfg);

    let hosts_url = server.url("/api/v1/hosts");
    let host = wait_for(
        "the agent's host on the server",
        Duration::from_secs(30),
        || async {
            let (_, body) = get_json(&client, &hosts_url).await;
            body["hosts"]
                .as_array()?
                .iter()
                .find(|h| h["host"] == "agent-host")
                .cloned()
        },
    )
    .await;
    assert!(
        host["mem"]["total_bytes"].as_u64().unwrap_or(0) > 0,
        "{host}"
    );

    // The agent's own action API answers health, and refuses actions: no action token is set.
    let (status, health) = get_json(&client, &agent.url("/agent/v1/health")).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["role"], "agent");
    let refused = client
        .post(agent.url("/agent/v1/actions"))
        .json(&json!({"action": "notify", "target": {"host": "agent-host", "vm": null}}))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 403);

    // A wrong token is refused and nothing of it is stored.
    let refused = client
        .post(server.url("/api/v1/ingest"))
        .bearer_auth("not-the-agent-token-0123")
        .json(&vec![sample(1, 1)])
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 401);
    let n = count(
        &client,
        &server,
        "select count(*) as n from host_samples where host = 'kill-test'",
    )
    .await;
    assert_eq!(n, 0);
}
