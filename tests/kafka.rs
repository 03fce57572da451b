//! The Kafka stream end to end through a real Kafka-protocol broker (tansu): records posted to
//! the daemon go to its embedded log, the shipper sends them to the broker, the engine's
//! consumer group reads them back. The broker is frozen for 30 s mid-run (SIGSTOP; tansu's
//! memory storage would lose everything on a restart, see stream/tests/kafka_tansu.rs): every
//! acknowledged record still reaches the engine, exactly once. Skips with a printed reason
//! where tansu is not installed (scripts/install-broker).

mod common;
#[path = "../stream/tests/tansu/mod.rs"]
mod tansu;

use std::time::{Duration, Instant};

use common::{Daemon, count, get_json, host_sample_json, wait_for};
use serde_json::Value;

const TEST: &str = "kafka::a_30s_broker_stop_loses_and_duplicates_nothing";
/// Records per POST, and POSTs per second.
const BATCH: u64 = 20;
const PERIOD: Duration = Duration::from_millis(200);

#[tokio::test]
async fn a_30s_broker_stop_loses_and_duplicates_nothing() {
    let Some(tansu_bin) = tansu::tansu_or_skip(TEST) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = tansu::Broker::start(&tansu_bin, dir.path()).await;
    let config = dir.path().join("fleetmind.toml");
    std::fs::write(
        &config,
        format!(
            "[stream]\nkind = \"kafka\"\n[stream.kafka]\nbrokers = \"{}\"\nrequest_timeout = \"5s\"\n",
            broker.address
        ),
    )
    .expect("write config");
    let daemon = Daemon::start(
        dir.path(),
        &["--config", config.to_str().unwrap(), "--no-collect"],
    );
    let client = reqwest::Client::new();
    let ingest = daemon.url("/api/v1/ingest");
    let base = u64::try_from(fleetmind_schema::now_ms()).expect("positive time");

    // 10 s of records, then the broker frozen for 30 s while records keep coming (that is the
    // outage under test, not a wait), then 5 s more after it resumes.
    let mut sent = 0u64;
    let started = Instant::now();
    let post_until = async |until: Duration, sent: &mut u64| {
        while started.elapsed() < until {
            let batch: Vec<Value> = (0..BATCH)
                .map(|i| host_sample_json("kafka-test", base + *sent + i))
                .collect();
            let response = client
                .post(&ingest)
                .json(&batch)
                .send()
                .await
                .expect("post");
            assert_eq!(response.status(), 200, "ingest refused");
            *sent += BATCH;
            tokio::time::sleep(PERIOD).await;
        }
    };
    post_until(Duration::from_secs(10), &mut sent).await;
    broker.stop();
    let stopped_at = sent;
    post_until(Duration::from_secs(40), &mut sent).await;
    let (_, during) = get_json(&client, &daemon.url("/api/v1/health")).await;
    let during_stop = sent - stopped_at;
    broker.resume();
    let resumed = Instant::now();
    let at_resume = sent;
    // How long the spill takes to reach the engine once the broker is back.
    let query = "select count(*) from host_samples where host = 'kafka-test'";
    wait_for(
        "the engine to catch up after the resume",
        Duration::from_secs(120),
        || async { (count(&client, &daemon, query).await >= at_resume).then_some(()) },
    )
    .await;
    let replay = resumed.elapsed();
    let until = started.elapsed() + Duration::from_secs(5);
    post_until(until, &mut sent).await;

    // Everything acknowledged reaches the engine, once.
    wait_for(
        "the engine to hold every record",
        Duration::from_secs(120),
        || async { (count(&client, &daemon, query).await >= sent).then_some(()) },
    )
    .await;
    let total = count(&client, &daemon, query).await;
    let distinct = count(
        &client,
        &daemon,
        "select count(distinct ts) from host_samples where host = 'kafka-test'",
    )
    .await;
    let (_, health) = get_json(&client, &daemon.url("/api/v1/health")).await;
    eprintln!(
        "kafka: {sent} records, {during_stop} during the 30 s stop; spill peak lag {}; engine \
         caught up {:.1} s after the resume and holds all {}; duplicates dropped {}; broker seen \
         unreachable during the stop: {}",
        health["stream"]["shipper"]["peak_lag"],
        replay.as_secs_f64(),
        total,
        health["stream"]["consumer"]["duplicates_dropped"],
        during["stream"]["shipper"]["broker_reachable"] == false,
    );
    assert_eq!(total, sent, "every acknowledged record, no more");
    assert_eq!(distinct, sent, "no duplicates");
    assert_eq!(health["stream"]["kind"], "kafka");
    assert_eq!(health["stream"]["shipper"]["lost"], 0);
    assert!(
        sent - stopped_at >= 100,
        "records kept coming during the stop"
    );
}
