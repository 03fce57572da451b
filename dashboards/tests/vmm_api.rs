//! The VMM control API driven without a socket: the routes agree with the OpenAPI file, errors
//! are JSON with the field named, a host without KVM answers 503, and on the real `/dev/kvm`
//! every operation works end to end.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode};
use fleetmind_dashboards::{VMM_ROUTES, vmm_app};
use fleetmind_vmm_probe::control::VmmControl;
use fleetmind_vmm_probe::test_utils::kvm_or_skip;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const OPENAPI: &str = include_str!("../openapi/vmm-v1.json");

async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            request = request.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 22).await.expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "non-JSON body for {status}: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, value)
}

fn message(body: &Value) -> &str {
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error body: {body}"))
}

/// A control whose `/dev/kvm` does not exist: works on every machine.
fn no_kvm() -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = VmmControl::with_roots("nokvm", "/proc", "/sys", dir.path().join("kvm"));
    (dir, vmm_app(Arc::new(control)))
}

#[test]
fn routes_and_openapi_agree() {
    let spec: Value = serde_json::from_str(OPENAPI).expect("openapi is JSON");
    let mut in_spec = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                in_spec.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let in_code: BTreeSet<_> = VMM_ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(in_spec, in_code);
}

#[tokio::test]
async fn every_listed_route_is_served() {
    let (_dir, app) = no_kvm();
    for (method, path) in VMM_ROUTES {
        let uri = path.replace("{name}", "nosuchvm").replace("{vcpu}", "0");
        let method: Method = method.parse().expect("method");
        let body = matches!(method, Method::PUT | Method::POST).then(|| json!({}));
        let (status, body) = call(&app, method.clone(), &uri, body).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        if status == StatusCode::NOT_FOUND {
            assert!(
                message(&body).contains("no VM named"),
                "{method} {uri} fell through to the fallback: {body}"
            );
        }
    }
    let (status, body) = call(&app, Method::GET, "/vmm/v1/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(message(&body).contains("no route"));
    let (status, _) = call(&app, Method::PATCH, "/vmm/v1/vms", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn without_kvm_the_host_reports_absent_and_refuses_vms() {
    let (_dir, app) = no_kvm();
    let (status, health) = call(&app, Method::GET, "/vmm/v1/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["role"], "vmm");
    assert_eq!(health["hypervisor"]["state"], "absent");
    assert!(
        health["hypervisor"]["reason"]
            .as_str()
            .unwrap()
            .contains("kvm")
    );
    let spec = json!({"name": "a", "vcpus": 1, "mem_mib": 16, "workload": {"kind": "cpu"}});
    let (status, body) = call(&app, Method::POST, "/vmm/v1/vms", Some(spec)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(message(&body).contains("cannot run VMs"), "{body}");
    let (status, body) = call(&app, Method::GET, "/vmm/v1/vms", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"vms": []})));
}

#[tokio::test]
async fn malformed_bodies_name_the_field() {
    let (_dir, app) = no_kvm();
    for (body, field) in [
        (
            json!({"name": "a", "vcpus": "two", "mem_mib": 16, "workload": {"kind": "cpu"}}),
            "vcpus",
        ),
        (
            json!({"name": "a", "vcpus": 1, "workload": {"kind": "cpu"}}),
            "mem_mib",
        ),
        (
            json!({"name": "a", "vcpus": 1, "mem_mib": 16, "workload": {"kind": "cpu"}, "cpus": 2}),
            "cpus",
        ),
        (
            json!({"name": "a", "vcpus": 1, "mem_mib": 16, "workload": {"kind": "warp"}}),
            "warp",
        ),
    ] {
        let (status, reply) = call(&app, Method::POST, "/vmm/v1/vms", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        assert!(message(&reply).contains(field), "{field}: {reply}");
    }
    let (status, reply) = call(
        &app,
        Method::PUT,
        "/vmm/v1/vms/a/vcpus/x/affinity",
        Some(json!({"cpus": [0]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&reply).contains("vcpu"), "{reply}");
}

#[tokio::test]
async fn a_vm_through_the_api_on_real_kvm() {
    if !kvm_or_skip("a_vm_through_the_api_on_real_kvm") {
        return;
    }
    let app = vmm_app(Arc::new(VmmControl::new("api-host")));
    let spec = json!({"name": "api-1", "vcpus": 1, "mem_mib": 32,
                      "workload": {"kind": "phased", "mix": {"io": 100}, "io_per_s": 1000,
                                   "mmio_per_s": 0, "pages_per_s": 0, "working_set_mib": 0},
                      "level": 20});
    let (status, vm) = call(&app, Method::POST, "/vmm/v1/vms", Some(spec.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["spec"]["level"], 20);
    let (status, body) = call(&app, Method::POST, "/vmm/v1/vms", Some(spec)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Invalid specs name the field, with the host's limit.
    for (spec, field) in [
        (
            json!({"name": "z", "vcpus": 0, "mem_mib": 16, "workload": {"kind": "cpu"}}),
            "vcpus must be between 1 and",
        ),
        (
            json!({"name": "z", "vcpus": 1, "mem_mib": 9_000_000, "workload": {"kind": "cpu"}}),
            "mem_mib must be between 1 and",
        ),
        (
            json!({"name": "z", "vcpus": 1, "mem_mib": 8, "workload": {"kind": "memory", "working_set_mib": 64, "pages_per_s": 1}}),
            "working_set_mib must be at most 7",
        ),
        (
            json!({"name": "z/1", "vcpus": 1, "mem_mib": 8, "workload": {"kind": "cpu"}}),
            "name must be",
        ),
    ] {
        let (status, body) = call(&app, Method::POST, "/vmm/v1/vms", Some(spec)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(message(&body).contains(field), "{field}: {body}");
    }

    let (status, body) = call(
        &app,
        Method::PUT,
        "/vmm/v1/vms/api-1/level",
        Some(json!({"level": 300})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("level"), "{body}");
    let (status, body) = call(
        &app,
        Method::PUT,
        "/vmm/v1/vms/api-1/level",
        Some(json!({"level": 80})),
    )
    .await;
    assert_eq!(
        (status, &body["spec"]["level"]),
        (StatusCode::OK, &json!(80))
    );
    let (status, body) = call(
        &app,
        Method::PUT,
        "/vmm/v1/vms/api-1/mix",
        Some(json!({"io": 50, "cpu": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["spec"]["workload"]["mix"]["io"], 50);
    let (status, body) = call(
        &app,
        Method::PUT,
        "/vmm/v1/vms/api-1/workload",
        Some(json!({"kind": "io", "rate_per_s": 500})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["spec"]["workload"]["kind"], "io");

    let (status, stats) = call(&app, Method::GET, "/vmm/v1/vms/api-1/stats", None).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert!(
        stats["kvm"]["vcpus"][0]["exits"].as_u64().is_some(),
        "{stats}"
    );
    assert!(stats["threads"][0]["tid"].as_i64().unwrap() > 0);

    let (status, host) = call(&app, Method::GET, "/vmm/v1/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(host["hypervisor"]["state"], "available");
    let cpu = host["cpus"].as_array().unwrap().last().unwrap().clone();
    let (status, thread) = call(
        &app,
        Method::PUT,
        "/vmm/v1/vms/api-1/vcpus/0/affinity",
        Some(json!({"cpus": [cpu]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{thread}");
    assert_eq!(thread["allowed_cpus"], json!([cpu]));
    let (status, body) = call(
        &app,
        Method::PUT,
        "/vmm/v1/vms/api-1/vcpus/5/affinity",
        Some(json!({"cpus": [0]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("vcpu must be below 1"), "{body}");

    let (status, body) = call(
        &app,
        Method::PUT,
        "/vmm/v1/vms/api-1/balloon",
        Some(json!({"target_mib": 8})),
    )
    .await;
    assert_eq!(
        (status, &body["target_mib"]),
        (StatusCode::OK, &json!(8)),
        "{body}"
    );
    let (status, body) = call(
        &app,
        Method::PUT,
        "/vmm/v1/vms/api-1/balloon",
        Some(json!({"target_mib": 32})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message(&body).contains("target_mib must be at most 31"),
        "{body}"
    );

    if host["nodes"].as_array().unwrap().contains(&json!(0)) {
        let (status, body) = call(
            &app,
            Method::PUT,
            "/vmm/v1/vms/api-1/memory/node",
            Some(json!({"node": 0})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call(
            &app,
            Method::PUT,
            "/vmm/v1/vms/api-1/memory/node",
            Some(json!({"node": 9})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message(&body).contains("node 9"), "{body}");
    }

    let (status, body) = call(&app, Method::POST, "/vmm/v1/vms/api-1/pause", None).await;
    assert_eq!((status, &body["state"]), (StatusCode::OK, &json!("paused")));
    let (status, _) = call(&app, Method::POST, "/vmm/v1/vms/api-1/pause", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = call(&app, Method::POST, "/vmm/v1/vms/api-1/resume", None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = call(&app, Method::DELETE, "/vmm/v1/vms/api-1", None).await;
    assert_eq!(
        (status, &body["state"]),
        (StatusCode::OK, &json!("stopped"))
    );
    let (status, _) = call(&app, Method::GET, "/vmm/v1/vms/api-1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
