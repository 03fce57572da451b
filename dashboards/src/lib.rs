//! dashboards: the HTTP API and the web dashboard.
//!
//! [`app`] builds the whole router from an [`ApiState`], separate from any socket, so tests
//! drive it with `tower::ServiceExt::oneshot` and the daemon serves it with `axum::serve`.
//! Every error leaves through [`ApiError`], which always answers with a JSON body.
//! [`agent_app`] is the agent role's small action API, and [`vmm_app`] the built-in VMM's
//! control API, built the same way.

#![forbid(unsafe_code)]

mod agent;
mod auth;
mod error;
mod incidents;
mod ingest;
mod routes;
mod vmm;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use fleetmind_engine::{IncidentFeed, QueryLimits, Store};
use fleetmind_stream::EventSink;

pub use agent::{AgentApiState, agent_app};
pub use error::ApiError;
pub use vmm::{VMM_ROUTES, vmm_app};

/// Supplies the parts of `/api/v1/health` that only the daemon knows (role, hypervisor,
/// stream and ingest progress) as a JSON object merged into the response.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Everything the handlers need.
#[derive(Clone)]
pub struct ApiState {
    /// The engine's store: queries and the latest host samples.
    pub store: Arc<Store>,
    /// Where `POST /api/v1/ingest` appends records (the server's event stream).
    pub ingest: Arc<dyn EventSink>,
    /// Limits on `/api/v1/query`.
    pub query_limits: QueryLimits,
    /// Bearer tokens accepted on ingest; empty means ingest is open (loopback-only servers).
    pub agent_tokens: Arc<[String]>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Daemon-side status for the health endpoint.
    pub status: StatusFn,
    /// The latest incidents and their recommendations, fed by the pipeline.
    pub feed: Arc<IncidentFeed>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("query_limits", &self.query_limits)
            .field("agent_tokens", &self.agent_tokens.len())
            .field("max_body_bytes", &self.max_body_bytes)
            .field("incidents", &self.feed.len())
            .finish_non_exhaustive()
    }
}

/// The API and dashboard router.
pub fn app(state: ApiState) -> Router {
    let max_body = state.max_body_bytes;
    Router::new()
        .route("/", get(routes::index))
        .route("/api/v1/health", get(routes::health))
        .route("/api/v1/hosts", get(routes::hosts))
        .route("/api/v1/query", get(routes::query))
        .route("/api/v1/ingest", post(ingest::ingest))
        .route("/api/v1/incidents", get(incidents::list))
        .route("/api/v1/incidents/{id}", get(incidents::one))
        .route("/api/v1/recommendations", get(incidents::recommendations))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}
