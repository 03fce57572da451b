//! The API routers driven without a socket (`oneshot`): status codes, JSON error bodies,
//! ingest semantics and tokens.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use fleetmind_dashboards::{AgentApiState, ApiState, agent_app, app};
use fleetmind_engine::test_utils::host_sample;
use fleetmind_engine::{QueryLimits, Store};
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
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::open(dir.path(), LogConfig::default()).expect("open log");
        Self {
            _dir: dir,
            log,
            store: Arc::new(Store::default()),
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
