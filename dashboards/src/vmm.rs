//! The built-in VMM's control API: JSON over HTTP, served by each VMM host process on a Unix
//! socket (the socket's file mode is the access control).
//!
//! Every route maps onto one [`VmmControl`] operation; the operations block (stopping a VM
//! joins its threads), so they run on tokio's blocking pool. Failures keep the control's
//! meaning: invalid requests 400 with the field named, unknown VMs 404, name clashes and wrong
//! states 409, a host without KVM 503. The routes and `openapi/vmm-v1.json` are checked
//! against each other by the tests.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use fleetmind_vmm_probe::control::{ControlError, ControlErrorKind, VmmControl};
use fleetmind_vmm_probe::guest::{Mix, Workload};
use fleetmind_vmm_probe::vmm::VmSpec;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{ApiError, routes};

/// Every route of the VMM API as (method, path), in the order the OpenAPI file lists them.
pub const VMM_ROUTES: &[(&str, &str)] = &[
    ("GET", "/vmm/v1/health"),
    ("GET", "/vmm/v1/stats"),
    ("GET", "/vmm/v1/vms"),
    ("POST", "/vmm/v1/vms"),
    ("GET", "/vmm/v1/vms/{name}"),
    ("DELETE", "/vmm/v1/vms/{name}"),
    ("POST", "/vmm/v1/vms/{name}/pause"),
    ("POST", "/vmm/v1/vms/{name}/resume"),
    ("PUT", "/vmm/v1/vms/{name}/level"),
    ("PUT", "/vmm/v1/vms/{name}/workload"),
    ("PUT", "/vmm/v1/vms/{name}/mix"),
    ("GET", "/vmm/v1/vms/{name}/stats"),
    ("PUT", "/vmm/v1/vms/{name}/vcpus/{vcpu}/affinity"),
    ("PUT", "/vmm/v1/vms/{name}/memory/node"),
    ("GET", "/vmm/v1/vms/{name}/balloon"),
    ("PUT", "/vmm/v1/vms/{name}/balloon"),
];

/// The VMM API router over one host's control.
pub fn vmm_app(control: Arc<VmmControl>) -> Router {
    Router::new()
        .route("/vmm/v1/health", get(health))
        .route("/vmm/v1/stats", get(all_stats))
        .route("/vmm/v1/vms", get(list).post(create))
        .route("/vmm/v1/vms/{name}", get(show).delete(delete))
        .route("/vmm/v1/vms/{name}/pause", post(pause))
        .route("/vmm/v1/vms/{name}/resume", post(resume))
        .route("/vmm/v1/vms/{name}/level", put(level))
        .route("/vmm/v1/vms/{name}/workload", put(workload))
        .route("/vmm/v1/vms/{name}/mix", put(mix))
        .route("/vmm/v1/vms/{name}/stats", get(stats))
        .route("/vmm/v1/vms/{name}/vcpus/{vcpu}/affinity", put(affinity))
        .route("/vmm/v1/vms/{name}/memory/node", put(memory_node))
        .route("/vmm/v1/vms/{name}/balloon", get(balloon).put(set_balloon))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .with_state(control)
}

type Control = State<Arc<VmmControl>>;

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e.kind {
            ControlErrorKind::Invalid => ApiError::BadRequest(e.message),
            ControlErrorKind::NotFound => ApiError::NotFound(e.message),
            ControlErrorKind::Conflict => ApiError::Conflict(e.message),
            ControlErrorKind::Unavailable => ApiError::Unavailable(e.message),
            ControlErrorKind::Internal => ApiError::Internal(e.message),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

/// Runs a blocking control operation off the async workers.
async fn blocking<T: Send + 'static>(
    control: Arc<VmmControl>,
    op: impl FnOnce(&VmmControl) -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || op(&control))
        .await
        .map_err(|e| ApiError::Internal(format!("control operation failed: {e}")))?
        .map_err(ApiError::from)
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    Ok(body?.0)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Json<Value>, ApiError> {
    serde_json::to_value(value)
        .map(Json)
        .map_err(|e| ApiError::Internal(format!("serialising the answer failed: {e}")))
}

async fn health(State(control): Control) -> Result<Json<Value>, ApiError> {
    let host = blocking(control, |c| Ok(c.host_info())).await?;
    let mut body = json!({"status": "ok", "role": "vmm", "version": env!("CARGO_PKG_VERSION")});
    if let (Some(obj), Json(Value::Object(extra))) = (body.as_object_mut(), to_json(&host)?) {
        obj.extend(extra);
    }
    Ok(Json(body))
}

async fn all_stats(State(control): Control) -> Result<Json<Value>, ApiError> {
    let (host, vms) = blocking(control, |c| Ok((c.host_info(), c.stats_all()))).await?;
    Ok(Json(
        json!({ "host": host.host, "pid": host.pid, "vms": vms }),
    ))
}

async fn list(State(control): Control) -> Result<Json<Value>, ApiError> {
    let vms = blocking(control, |c| Ok(c.list())).await?;
    Ok(Json(json!({ "vms": vms })))
}

async fn create(
    State(control): Control,
    spec: Result<Json<VmSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let spec = body(spec)?;
    let vm = blocking(control, move |c| c.create(spec)).await?;
    Ok((StatusCode::CREATED, to_json(&vm)?))
}

/// The `{name}` segment.
#[derive(Deserialize)]
struct VmPath {
    name: String,
}

/// Runs `op` on the VM named in the path and answers with what it returns.
async fn on_vm<T: serde::Serialize + Send + 'static>(
    control: Arc<VmmControl>,
    path: Result<Path<VmPath>, PathRejection>,
    op: impl FnOnce(&VmmControl, &str) -> Result<T, ControlError> + Send + 'static,
) -> Result<Json<Value>, ApiError> {
    let Path(VmPath { name }) = path?;
    let value = blocking(control, move |c| op(c, &name)).await?;
    to_json(&value)
}

/// Runs `op` with the VM's name and the parsed body.
async fn on_vm_with<B: DeserializeOwned + Send + 'static, T: serde::Serialize + Send + 'static>(
    control: Arc<VmmControl>,
    path: Result<Path<VmPath>, PathRejection>,
    request: Result<Json<B>, JsonRejection>,
    op: impl FnOnce(&VmmControl, &str, B) -> Result<T, ControlError> + Send + 'static,
) -> Result<Json<Value>, ApiError> {
    let Path(VmPath { name }) = path?;
    let request = body(request)?;
    let value = blocking(control, move |c| op(c, &name, request)).await?;
    to_json(&value)
}

async fn show(
    State(control): Control,
    path: Result<Path<VmPath>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    on_vm(control, path, |c, name| c.get(name)).await
}

async fn delete(
    State(control): Control,
    path: Result<Path<VmPath>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    on_vm(control, path, |c, name| c.delete(name)).await
}

async fn pause(
    State(control): Control,
    path: Result<Path<VmPath>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    on_vm(control, path, |c, name| c.pause(name)).await
}

async fn resume(
    State(control): Control,
    path: Result<Path<VmPath>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    on_vm(control, path, |c, name| c.resume(name)).await
}

async fn stats(
    State(control): Control,
    path: Result<Path<VmPath>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    on_vm(control, path, |c, name| c.stats(name)).await
}

async fn balloon(
    State(control): Control,
    path: Result<Path<VmPath>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    on_vm(control, path, |c, name| c.balloon(name)).await
}

/// `PUT .../level` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelBody {
    level: u8,
}

async fn level(
    State(control): Control,
    path: Result<Path<VmPath>, PathRejection>,
    request: Result<Json<LevelBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    on_vm_with(control, path, request, |c, name, b: LevelBody| {
        c.set_level(name, b.level)
    })
    .await
}

async fn workload(
    State(control): Control,
    path: Result<Path<VmPath>, PathRejection>,
    request: Result<Json<Workload>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    on_vm_with(control, path, request, |c, name, w| c.set_workload(name, w)).await
}

async fn mix(
    State(control): Control,
    path: Result<Path<VmPath>, PathRejection>,
    request: Result<Json<Mix>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    on_vm_with(control, path, request, |c, name, m| c.set_mix(name, m)).await
}

/// `PUT .../balloon` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonBody {
    target_mib: u32,
}

async fn set_balloon(
    State(control): Control,
    path: Result<Path<VmPath>, PathRejection>,
    request: Result<Json<BalloonBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    on_vm_with(control, path, request, |c, name, b: BalloonBody| {
        c.set_balloon(name, b.target_mib)
    })
    .await
}

/// `PUT .../memory/node` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeBody {
    node: u32,
}

async fn memory_node(
    State(control): Control,
    path: Result<Path<VmPath>, PathRejection>,
    request: Result<Json<NodeBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    on_vm_with(control, path, request, |c, name, b: NodeBody| {
        c.move_memory(name, b.node)
    })
    .await
}

/// The `{name}/vcpus/{vcpu}` segments.
#[derive(Deserialize)]
struct VcpuPath {
    name: String,
    vcpu: u32,
}

/// `PUT .../affinity` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AffinityBody {
    cpus: Vec<u32>,
}

async fn affinity(
    State(control): Control,
    path: Result<Path<VcpuPath>, PathRejection>,
    request: Result<Json<AffinityBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(VcpuPath { name, vcpu }) = path?;
    let AffinityBody { cpus } = body(request)?;
    let thread = blocking(control, move |c| c.pin(&name, vcpu, &cpus)).await?;
    to_json(&thread)
}
