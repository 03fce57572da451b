//! The API routers driven without a socket (`oneshot`): status codes, JSON error bodies,
//! ingest semantics and tokens.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use fleetmind_dashboards::{AgentApiState, ApiState, agent_app, app};
use fleetmind_engine::test_utils::host_sample;
use fleetmind_engine::{IncidentFeed, QueryLimits, Store};
use fleetmind_remediation::{ActionExecutor, ExecutorRegistry};
use fleetmind_schema::{ActionKind, ActionSpec, Envelope, Record};
use fleetmind_stream::{EventLog, EventSource, LogConfig, Offset};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const TOKEN: &str = "agent-token-0123456789";

struct Fixture {
    _dir: tempfile::TempDir,
    log: EventLog,
    store: Arc<Store>,
    feed: Arc<IncidentFeed>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::open(dir.path(), LogConfig::default()).expect("open log");
        Self {
            _dir: dir,
            log,
            store: Arc::new(Store::default()),
            feed: Arc::new(IncidentFeed::default()),
        }
    }

    fn app(&self, tokens: &[&str], max_body_bytes: usize) -> Router {
        app(ApiState {
            store: self.store.clone(),
            ingest: Arc::new(self.log.clone()),
            query_limits: QueryLimits::default(),
            agent_tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
            max_body_bytes,
            status: Arc::new(|| json!({"role": "test"})),
            feed: self.feed.clone(),
        })
    }
}

async fn call(app: Router, request: Request<Body>) -> (StatusCode, Value, header::HeaderMap) {
    let response = app.oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "non-JSON body for {status}: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body, headers)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

fn post_json(uri: &str, body: &Value, token: Option<&str>) -> Request<Body> {
    let mut builder = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(Body::from(body.to_string())).expect("request")
}

fn envelope(host: &str, ts: i64) -> Value {
    serde_json::to_value(Envelope::new(Record::HostSample(host_sample(host, ts)))).expect("json")
}

fn assert_error_body(status: StatusCode, body: &Value) {
    assert_eq!(body["error"]["status"], status.as_u16(), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let f = Fixture::new();
    let (status, body, _) = call(f.app(&[], 1 << 20), get("/api/v1/vms-that-do-not-exist")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error_body(status, &body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("/api/v1/vms-that-do-not-exist")
    );

    let request = Request::builder()
        .method(Method::DELETE)
        .uri("/api/v1/hosts")
        .body(Body::empty())
        .expect("request");
    let (status, body, _) = call(f.app(&[], 1 << 20), request).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error_body(status, &body);
}

#[tokio::test]
async fn ingest_appends_the_whole_batch_and_acknowledges_offsets() {
    let f = Fixture::new();
    let batch = json!([
        envelope("h1", 1_000),
        envelope("h2", 2_000),
        envelope("h1", 3_000)
    ]);
    let (status, body, _) = call(
        f.app(&[], 1 << 20),
        post_json("/api/v1/ingest", &batch, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"count": 3, "first_offset": 0, "last_offset": 2})
    );
    assert_eq!(f.log.end_offset(), Offset(3));
    let stored: Vec<Envelope> = f
        .log
        .replay(Offset(0))
        .expect("replay")
        .map(|r| serde_json::from_slice(&r.expect("record").payload).expect("envelope"))
        .collect();
    let hosts: Vec<_> = stored
        .iter()
        .map(|e| match &e.record {
            Record::HostSample(s) => (s.host.as_str(), s.ts),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(hosts, [("h1", 1_000), ("h2", 2_000), ("h1", 3_000)]);
}

#[tokio::test]
async fn a_bad_record_rejects_the_whole_batch_and_names_it() {
    let f = Fixture::new();
    let mut bad = envelope("h1", 2_000);
    bad["cpus"] = json!("two");
    let batch = json!([envelope("h1", 1_000), bad]);
    let (status, body, _) = call(
        f.app(&[], 1 << 20),
        post_json("/api/v1/ingest", &batch, None),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_body(status, &body);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("[1]") && message.contains("cpus"),
        "{message}"
    );
    assert_eq!(
        f.log.end_offset(),
        Offset(0),
        "nothing of a refused batch is stored"
    );

    let (status, body, _) = call(
        f.app(&[], 1 << 20),
        post_json("/api/v1/ingest", &json!([]), None),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_body(status, &body);

    let mut future = envelope("h1", 1_000);
    future["schema_version"] = json!(999);
    let (status, body, _) = call(
        f.app(&[], 1 << 20),
        post_json("/api/v1/ingest", &json!([future]), None),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("999"),
        "{body}"
    );
    assert_eq!(f.log.end_offset(), Offset(0));
}

#[tokio::test]
async fn ingest_needs_an_accepted_token_when_tokens_are_configured() {
    let f = Fixture::new();
    let batch = json!([envelope("h1", 1_000)]);
    for token in [None, Some("wrong-token-0123456789")] {
        let (status, body, headers) = call(
            f.app(&[TOKEN], 1 << 20),
            post_json("/api/v1/ingest", &batch, token),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_error_body(status, &body);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    assert_eq!(f.log.end_offset(), Offset(0));
    let (status, _, _) = call(
        f.app(&[TOKEN], 1 << 20),
        post_json("/api/v1/ingest", &batch, Some(TOKEN)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.log.end_offset(), Offset(1));
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_json() {
    let f = Fixture::new();
    let batch = json!((0..50).map(|i| envelope("h1", i)).collect::<Vec<_>>());
    let (status, body, _) = call(f.app(&[], 4096), post_json("/api/v1/ingest", &batch, None)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_body(status, &body);
    assert_eq!(f.log.end_offset(), Offset(0));
}

#[tokio::test]
async fn hosts_and_query_read_the_store() {
    let f = Fixture::new();
    let now = fleetmind_schema::now_ms();
    f.store
        .ingest([
            Record::HostSample(host_sample("b-host", now - 2_000)),
            Record::HostSample(host_sample("a-host", now - 1_000)),
            Record::HostSample(host_sample("a-host", now)),
        ])
        .expect("ingest");
    let (status, body, _) = call(f.app(&[], 1 << 20), get("/api/v1/hosts")).await;
    assert_eq!(status, StatusCode::OK);
    let hosts = body["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0]["host"], "a-host");
    assert_eq!(hosts[0]["ts"], now);
    assert!(
        hosts[0]["age_ms"].as_i64().is_some_and(|a| a >= 0),
        "{body}"
    );

    let (status, body, _) = call(
        f.app(&[], 1 << 20),
        get("/api/v1/query?sql=select%20count(*)%20as%20n%20from%20host_samples"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["rows"], json!([[3]]));

    for uri in [
        "/api/v1/query",
        "/api/v1/query?sql=",
        "/api/v1/query?sql=drop%20table%20x",
        "/api/v1/query?sql=select%20*%20from%20nowhere",
    ] {
        let (status, body, _) = call(f.app(&[], 1 << 20), get(uri)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_error_body(status, &body);
    }
}

#[tokio::test]
async fn health_merges_the_daemon_status() {
    let f = Fixture::new();
    let (status, body, _) = call(f.app(&[], 1 << 20), get("/api/v1/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["role"], "test");
    assert_eq!(body["engine"]["rows"]["host_samples"], 0);
}

#[derive(Debug)]
struct Echo;

impl ActionExecutor for Echo {
    fn kind(&self) -> ActionKind {
        ActionKind::Notify
    }
    fn execute<'a>(&'a self, spec: &'a ActionSpec) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move { Ok(format!("notified about {}", spec.target.host)) })
    }
}

fn agent(token: Option<&str>) -> Router {
    let mut registry = ExecutorRegistry::new(std::time::Duration::from_secs(5));
    registry.register(Arc::new(Echo));
    agent_app(AgentApiState {
        registry: Arc::new(registry),
        action_token: token.map(Arc::from),
        status: Arc::new(|| json!({})),
    })
}

fn spec(kind: &str) -> Value {
    json!({"action": kind, "target": {"host": "h1", "vm": "h1/vm-1"}, "params": {}})
}

#[tokio::test]
async fn agent_actions_need_the_token_and_a_matching_executor() {
    let (status, body, _) = call(
        agent(None),
        post_json("/agent/v1/actions", &spec("notify"), Some(TOKEN)),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "no token configured refuses everything"
    );
    assert_error_body(status, &body);

    for token in [None, Some("not-the-token-0123456789")] {
        let (status, body, _) = call(
            agent(Some(TOKEN)),
            post_json("/agent/v1/actions", &spec("notify"), token),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_error_body(status, &body);
    }

    let (status, body, _) = call(
        agent(Some(TOKEN)),
        post_json("/agent/v1/actions", &spec("notify"), Some(TOKEN)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["detail"], "notified about h1");

    let (status, body, _) = call(
        agent(Some(TOKEN)),
        post_json("/agent/v1/actions", &spec("migrate"), Some(TOKEN)),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Migrate") && message.contains("Notify"),
        "{message}"
    );

    let (status, body, _) = call(
        agent(Some(TOKEN)),
        post_json("/agent/v1/actions", &spec("reboot"), Some(TOKEN)),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "an unknown action kind is bad input: {body}"
    );
    assert_error_body(status, &body);

    let (status, body, _) = call(agent(Some(TOKEN)), get("/agent/v1/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["executors"], json!(["notify"]));
}

fn subject(host: &str, vm: Option<&str>) -> fleetmind_schema::Subject {
    fleetmind_schema::Subject {
        host: host.to_owned(),
        vm: vm.map(str::to_owned),
    }
}

fn incident(
    id: &str,
    ts: i64,
    class: fleetmind_schema::IncidentClass,
    status: fleetmind_schema::IncidentStatus,
    host: &str,
    vm: &str,
) -> fleetmind_schema::Incident {
    use fleetmind_schema::{Evidence, Hypothesis, Incident, IncidentStatus, Severity};
    let vm_id = format!("{host}/{vm}");
    Incident {
        id: id.to_owned(),
        ts,
        opened_ts: ts - 10_000,
        resolved_ts: (status == IncidentStatus::Resolved).then_some(ts),
        status,
        class,
        severity: Severity::Warning,
        title: format!("{class:?} on {host}"),
        subjects: vec![subject(host, Some(&vm_id))],
        anomaly_ids: vec![format!("an-{id}")],
        hypotheses: vec![Hypothesis {
            class,
            culprit: subject(host, Some(&vm_id)),
            confidence: 0.8,
            evidence: vec![Evidence {
                subject: subject(host, Some(&vm_id)),
                series: "vcpu.0.wait_frac".into(),
                ts: ts - 10_000,
                value: 0.4,
                expected: 0.02,
            }],
        }],
    }
}

fn recommendation(
    incident: &str,
    ts: i64,
    rank: u32,
    action: ActionKind,
    host: &str,
    vm: &str,
) -> fleetmind_schema::Recommendation {
    fleetmind_schema::Recommendation {
        id: format!("{incident}-r{ts}-{rank}"),
        ts,
        incident_id: incident.to_owned(),
        spec: ActionSpec {
            action,
            target: subject(host, Some(&format!("{host}/{vm}"))),
            params: [
                ("cpus".to_owned(), "0".to_owned()),
                ("vcpu".to_owned(), "0".to_owned()),
            ]
            .into_iter()
            .collect(),
        },
        rationale: "why".into(),
        expected_benefit: 0.7,
        rank,
        expected_effect: "delay under 10%".into(),
        cost: fleetmind_schema::ActionCost {
            duration_s: 0.001,
            bytes: 0,
            score: 0.05,
            summary: "one call".into(),
        },
    }
}

/// i-nn (open noisy neighbour on h1, two recommendations) and i-mem (resolved memory pressure
/// on h2, one), fed twice: a replay changes nothing.
fn fed() -> Fixture {
    use fleetmind_schema::{IncidentClass, IncidentStatus};
    let f = Fixture::new();
    let records = [
        Record::Incident(incident(
            "i-nn",
            5_000,
            IncidentClass::NoisyNeighbour,
            IncidentStatus::Open,
            "h1",
            "victim",
        )),
        Record::Recommendation(recommendation(
            "i-nn",
            5_000,
            2,
            ActionKind::PinVcpus,
            "h1",
            "noisy",
        )),
        Record::Recommendation(recommendation(
            "i-nn",
            5_000,
            1,
            ActionKind::PinVcpus,
            "h1",
            "victim",
        )),
        Record::Incident(incident(
            "i-mem",
            3_000,
            IncidentClass::MemoryPressure,
            IncidentStatus::Resolved,
            "h2",
            "hog",
        )),
        Record::Recommendation(recommendation(
            "i-mem",
            2_000,
            1,
            ActionKind::Balloon,
            "h2",
            "hog",
        )),
    ];
    for _ in 0..2 {
        for r in &records {
            f.feed.observe(r);
        }
    }
    f
}

fn ids(body: &Value, field: &str) -> Vec<String> {
    body[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
        .iter()
        .map(|v| v["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn incidents_are_listed_newest_first_and_filtered() {
    let f = fed();
    let (status, body, _) = call(f.app(&[], 1 << 20), get("/api/v1/incidents")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body, "incidents"), ["i-nn", "i-mem"]);
    let first: fleetmind_schema::Incident =
        serde_json::from_value(body["incidents"][0].clone()).expect("the schema's JSON form");
    assert_eq!(first.hypotheses[0].evidence[0].series, "vcpu.0.wait_frac");

    for (query, expected) in [
        ("status=open", &["i-nn"][..]),
        ("status=resolved", &["i-mem"]),
        ("status=all", &["i-nn", "i-mem"]),
        ("class=memory_pressure", &["i-mem"]),
        ("class=numa_imbalance", &[]),
        ("host=h1", &["i-nn"]),
        ("vm=hog", &["i-mem"]),
        ("vm=h1%2Fvictim", &["i-nn"]),
        ("since=4000", &["i-nn"]),
        ("limit=1", &["i-nn"]),
        ("status=resolved&host=h1", &[]),
        ("status=&class=", &["i-nn", "i-mem"]),
    ] {
        let (status, body, _) = call(
            f.app(&[], 1 << 20),
            get(&format!("/api/v1/incidents?{query}")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(ids(&body, "incidents"), expected, "{query}");
    }
}

#[tokio::test]
async fn one_incident_comes_with_its_recommendations() {
    let f = fed();
    let (status, body, _) = call(f.app(&[], 1 << 20), get("/api/v1/incidents/i-nn")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["incident"]["id"], "i-nn");
    assert_eq!(body["incident"]["class"], "noisy_neighbour");
    let ranks: Vec<u64> = body["recommendations"]
        .as_array()
        .expect("recommendations")
        .iter()
        .map(|r| r["rank"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(ranks, [1, 2], "best first, no duplicates from the replay");
    assert_eq!(body["recommendations"][0]["spec"]["params"]["cpus"], "0");

    let (status, body, _) = call(f.app(&[], 1 << 20), get("/api/v1/incidents/inc-nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error_body(status, &body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("inc-nope"),
        "{body}"
    );
}

#[tokio::test]
async fn recommendations_are_listed_and_filtered() {
    let f = fed();
    let (status, body, _) = call(f.app(&[], 1 << 20), get("/api/v1/recommendations")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        ids(&body, "recommendations"),
        ["i-nn-r5000-1", "i-nn-r5000-2", "i-mem-r2000-1"]
    );
    for (query, expected) in [
        ("incident=i-mem", &["i-mem-r2000-1"][..]),
        ("incident=i-none", &[]),
        ("action=balloon", &["i-mem-r2000-1"]),
        ("action=migrate", &[]),
        ("host=h1", &["i-nn-r5000-1", "i-nn-r5000-2"]),
        ("vm=noisy", &["i-nn-r5000-2"]),
        ("vm=h2%2Fhog", &["i-mem-r2000-1"]),
        ("limit=2", &["i-nn-r5000-1", "i-nn-r5000-2"]),
    ] {
        let (status, body, _) = call(
            f.app(&[], 1 << 20),
            get(&format!("/api/v1/recommendations?{query}")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(ids(&body, "recommendations"), expected, "{query}");
    }
}

#[tokio::test]
async fn bad_incident_and_recommendation_parameters_are_named() {
    let f = fed();
    for (uri, param) in [
        ("/api/v1/incidents?status=bogus", "status"),
        ("/api/v1/incidents?class=noisy", "class"),
        ("/api/v1/incidents?since=yesterday", "since"),
        ("/api/v1/incidents?limit=0", "limit"),
        ("/api/v1/incidents?limit=1001", "limit"),
        ("/api/v1/incidents?limit=ten", "limit"),
        ("/api/v1/incidents?colour=red", "colour"),
        ("/api/v1/recommendations?action=reboot", "action"),
        ("/api/v1/recommendations?limit=-1", "limit"),
        ("/api/v1/recommendations?status=open", "status"),
    ] {
        let (status, body, _) = call(f.app(&[], 1 << 20), get(uri)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_error_body(status, &body);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(param), "{uri}: {message}");
    }
    let request = Request::post("/api/v1/incidents")
        .body(Body::empty())
        .expect("request");
    let (status, body, _) = call(f.app(&[], 1 << 20), request).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error_body(status, &body);
}

#[tokio::test]
async fn an_empty_feed_answers_empty_lists() {
    let f = Fixture::new();
    for (uri, field) in [
        ("/api/v1/incidents", "incidents"),
        ("/api/v1/recommendations", "recommendations"),
    ] {
        let (status, body, _) = call(f.app(&[], 1 << 20), get(uri)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body[field], json!([]), "{uri}");
    }
}
