//! The Kafka backend against a real Kafka-protocol broker (tansu 0.6, in-memory storage).
//!
//! A broker "outage" is a SIGSTOP of the broker process, not a kill: tansu's storage engines
//! here are memory:// (lost at exit) and s3:// (needs an object store we do not run), so a
//! killed broker would come back empty. A frozen broker keeps its data while its clients see
//! exactly what an unreachable broker looks like: connections that stop answering and requests
//! that time out.

mod tansu;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetmind_stream::kafka::{
    ConsumeError, ConsumerStatus, KafkaConfig, ShipError, ShipperStatus, read_shipped_offset,
    run_consumer, run_shipper,
};
use fleetmind_stream::{EventLog, EventSink, EventSource, FsyncPolicy, LogConfig, Offset};
use tansu::{Broker, tansu_or_skip};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Hosts and VMs the synthetic records come from: 4 hosts with 3 VMs each.
const KEYS: u64 = 16;

/// The JSON envelope of record `seq`: a host sample or a VM sample, unique by `seq`/`ts`.
fn envelope(seq: u64) -> Vec<u8> {
    let k = seq % KEYS;
    let value = if k < 4 {
        serde_json::json!({
            "schema_version": 1, "kind": "host_sample", "host": format!("h{k}"),
            "ts": 1_763_892_000_000u64 + seq, "seq": seq,
        })
    } else {
        let host = (k - 4) / 3;
        serde_json::json!({
            "schema_version": 1, "kind": "vm_sample", "host": format!("h{host}"),
            "vm": format!("h{host}/vm-{}", (k - 4) % 3), "ts": 1_763_892_000_000u64 + seq,
            "seq": seq,
        })
    };
    serde_json::to_vec(&value).expect("serialize envelope")
}

/// The ordering key and sequence number of a received payload.
fn key_and_seq(payload: &[u8]) -> (String, u64) {
    let value: serde_json::Value = serde_json::from_slice(payload).expect("payload is JSON");
    let key = value
        .get("vm")
        .or_else(|| value.get("host"))
        .and_then(serde_json::Value::as_str)
        .expect("a host or vm")
        .to_owned();
    (key, value["seq"].as_u64().expect("a seq"))
}

fn test_config(broker: &Broker) -> KafkaConfig {
    let mut config = KafkaConfig::new(&broker.address);
    config.linger = Duration::from_millis(5);
    config.request_timeout = Duration::from_secs(5);
    config.max_backoff = Duration::from_secs(2);
    config.state_interval = Duration::from_millis(200);
    config
}

/// The engine side of a test: a consumer task collecting every payload its handler gets.
struct Engine {
    status: Arc<ConsumerStatus>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), ConsumeError>>,
}

impl Engine {
    fn start(config: &KafkaConfig) -> Engine {
        let status = ConsumerStatus::new();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (shutdown, rx) = watch::channel(false);
        let (config, task_status, sink) =
            (config.clone(), Arc::clone(&status), Arc::clone(&received));
        let task = tokio::spawn(async move {
            run_consumer(
                &config,
                &["host_sample", "vm_sample"],
                task_status,
                move |payload: &[u8]| {
                    sink.lock().expect("lock").push(payload.to_vec());
                    Ok::<(), Infallible>(())
                },
                rx,
            )
            .await
        });
        Engine {
            status,
            received,
            shutdown,
            task,
        }
    }

    fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }

    /// Waits (deadline) until the handler got `n` records.
    async fn wait_for(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "consumer got {} of {n} records within {limit:?}; {:?}",
                self.count(),
                self.status.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> Vec<Vec<u8>> {
        self.shutdown.send(true).expect("consumer runs");
        self.task
            .await
            .expect("consumer task")
            .expect("consumer ends cleanly");
        Arc::try_unwrap(self.received)
            .expect("handler dropped")
            .into_inner()
            .expect("lock")
    }
}

/// A shipper task over `log`.
struct Shipper {
    status: Arc<ShipperStatus>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), ShipError>>,
}

impl Shipper {
    fn start(log: &EventLog, state: &Path, config: &KafkaConfig) -> Shipper {
        let status = ShipperStatus::new();
        let (shutdown, rx) = watch::channel(false);
        let source: Arc<dyn EventSource> = Arc::new(log.clone());
        let task = tokio::spawn(run_shipper(
            source,
            state.to_owned(),
            config.clone(),
            Arc::clone(&status),
            rx,
        ));
        Shipper {
            status,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.send(true).expect("shipper runs");
        self.task
            .await
            .expect("shipper task")
            .expect("shipper ends cleanly");
    }
}

/// Appends `steps` batches of `per_step` envelopes, one every `every`, numbering them from
/// `*next`. This paces the workload like collectors do; it does not wait for anything.
async fn append_steps(log: &EventLog, next: &mut u64, steps: u64, per_step: u64, every: Duration) {
    let mut tick = tokio::time::interval(every);
    for _ in 0..steps {
        tick.tick().await;
        let payloads: Vec<Vec<u8>> = (*next..*next + per_step).map(envelope).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        log.append(&refs).await.expect("append to the spill log");
        *next += per_step;
    }
}

/// Checks what the handler received: exactly the records `0..n`, none twice, and in `seq`
/// order for every host and VM.
fn assert_exactly_once_in_order(received: &[Vec<u8>], n: u64) {
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut seen = HashSet::new();
    for payload in received {
        let (key, seq) = key_and_seq(payload);
        assert!(seen.insert(seq), "record {seq} reached the handler twice");
        if let Some(previous) = last.insert(key.clone(), seq) {
            assert!(previous < seq, "{key}: record {seq} after {previous}");
        }
    }
    assert_eq!(received.len() as u64, n, "records handed to the engine");
    assert_eq!(seen, (0..n).collect::<HashSet<_>>(), "the records produced");
}

fn open_log(dir: &Path) -> EventLog {
    let config = LogConfig {
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    EventLog::open(dir.join("events"), config).expect("open the spill log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_frozen_30s_mid_run_loses_and_duplicates_nothing() {
    const TEST: &str = "broker_frozen_30s_mid_run_loses_and_duplicates_nothing";
    let Some(binary) = tansu_or_skip(TEST) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(&binary, dir.path()).await;
    let mut config = test_config(&broker);
    // A small window, so that most of the outage's records wait in the log, not in memory.
    config.max_in_flight = 500;
    let log = open_log(dir.path());
    let engine = Engine::start(&config);
    let shipper = Shipper::start(&log, &dir.path().join("shipper.offset"), &config);

    // 100 records/s: 5 s before the outage, 30 s during it, 5 s after.
    let every = Duration::from_millis(100);
    let per_step = 10;
    let mut next = 0;
    append_steps(&log, &mut next, 50, per_step, every).await;
    engine
        .wait_for(next as usize, Duration::from_secs(30))
        .await;
    let before_outage = next;

    broker.stop();
    let stopped_at = Instant::now();
    // The outage itself: the scenario's 30 s without a broker, not a wait for a condition.
    // Collectors keep appending all along; the records spill into the embedded log.
    append_steps(&log, &mut next, 300, per_step, every).await;
    tokio::time::sleep_until((stopped_at + Duration::from_secs(30)).into()).await;
    let during = shipper.status.snapshot();
    let outage = stopped_at.elapsed();
    broker.resume();
    let resumed_at = Instant::now();
    let spilled_at_resume = next;

    // Collectors go on while the shipper replays the spill.
    let mut shipper_caught_up = None;
    let mut engine_caught_up = None;
    let mut tick = tokio::time::interval(every);
    for _ in 0..50 {
        tick.tick().await;
        let payloads: Vec<Vec<u8>> = (next..next + per_step).map(envelope).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        log.append(&refs).await.expect("append");
        next += per_step;
        if shipper_caught_up.is_none()
            && shipper.status.snapshot().shipped_offset >= Offset(spilled_at_resume)
        {
            shipper_caught_up = Some(resumed_at.elapsed());
        }
        if engine_caught_up.is_none() && engine.count() as u64 >= spilled_at_resume {
            engine_caught_up = Some(resumed_at.elapsed());
        }
    }
    let n = next;
    engine.wait_for(n as usize, Duration::from_secs(120)).await;
    let shipper_caught_up = shipper_caught_up.unwrap_or_else(|| resumed_at.elapsed());
    let engine_caught_up = engine_caught_up.unwrap_or_else(|| resumed_at.elapsed());
    // Give late redeliveries a moment to show up as duplicates (or, wrongly, as records).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let shipped = shipper.status.snapshot();
    shipper.stop().await;
    let consumed = engine.status.snapshot();
    let received = engine.stop().await;
    eprintln!(
        "kafka outage: {n} records ({before_outage} before the outage, {} during it); broker \
         frozen {outage:.1?}; peak lag {} records (at resume: lag {}, in flight {}); shipper caught up \
         {shipper_caught_up:.1?} and engine {engine_caught_up:.1?} after SIGCONT; broker seen \
         unreachable during the outage: {}; shipper failures {}; duplicates dropped {}; \
         commits {}; test took {:.1?}",
        spilled_at_resume - before_outage,
        shipped.peak_lag,
        during.lag,
        during.in_flight,
        !during.broker_reachable,
        shipped.failures,
        consumed.duplicates_dropped,
        consumed.commits,
        started.elapsed(),
    );
    eprintln!("shipper's last error: {:?}", shipped.last_error);
    assert_exactly_once_in_order(&received, n);
    assert_eq!(shipped.shipped_offset, Offset(n));
    assert_eq!(shipped.lag, 0);
    assert!(
        shipped.peak_lag >= 250,
        "the outage spilled records: {shipped:?}"
    );
    assert!(
        during.in_flight <= 500 && during.lag > during.in_flight,
        "records beyond the window stayed in the log: {during:?}"
    );
    assert!(
        !during.broker_reachable,
        "the outage was noticed: {during:?}"
    );
    assert!(shipped.broker_reachable, "and the recovery: {shipped:?}");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_shipper_resumes_from_its_persisted_offset() {
    const TEST: &str = "a_restarted_shipper_resumes_from_its_persisted_offset";
    let Some(binary) = tansu_or_skip(TEST) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(&binary, dir.path()).await;
    let config = test_config(&broker);
    let log = open_log(dir.path());
    let state = dir.path().join("shipper.offset");
    let engine = Engine::start(&config);
    let every = Duration::from_millis(20);
    let mut next = 0;

    // First shipper: killed mid-run (task aborted, producer dropped with records in flight).
    let first = Shipper::start(&log, &state, &config);
    append_steps(&log, &mut next, 50, 20, every).await;
    first.task.abort();
    let _ = first.task.await;
    let persisted = read_shipped_offset(&state).expect("state file");
    eprintln!(
        "first shipper aborted at log end {next}, persisted offset {persisted}, reported {:?}",
        first.status.snapshot()
    );
    assert!(persisted <= Offset(next));

    // Records keep coming while no shipper runs; they wait in the log.
    append_steps(&log, &mut next, 25, 20, every).await;

    // Second shipper, same state file: picks up at the persisted offset.
    let second = Shipper::start(&log, &state, &config);
    append_steps(&log, &mut next, 25, 20, every).await;
    let n = next;
    engine.wait_for(n as usize, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let shipped = second.status.snapshot();
    second.stop().await;
    assert_eq!(read_shipped_offset(&state).expect("state file"), Offset(n));
    let consumed = engine.status.snapshot();
    let received = engine.stop().await;
    eprintln!(
        "shipper restart: {n} records, re-sent from {persisted}: second shipper delivered {}, \
         duplicates dropped by the consumer {}",
        shipped.delivered, consumed.duplicates_dropped
    );
    assert_eq!(shipped.delivered, n - persisted.get());
    assert_exactly_once_in_order(&received, n);
    drop(broker);
}
