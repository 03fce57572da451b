//! The agent's action API: how actions come down from the server to the host that runs the
//! VM. Small on purpose: health, and executing one action spec through the host's executor
//! registry. Every request needs the agent's action token; an agent without one refuses all
//! actions (403) rather than running them for anyone.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use fleetmind_remediation::{ExecuteError, ExecutionReport, ExecutorRegistry};
use fleetmind_schema::ActionSpec;
use serde_json::{Value, json};

use crate::{ApiError, StatusFn, routes};

/// What the agent's handlers need.
#[derive(Clone)]
pub struct AgentApiState {
    /// This host's executors.
    pub registry: Arc<ExecutorRegistry>,
    /// The token the server must present; `None` refuses every action.
    pub action_token: Option<Arc<str>>,
    /// Agent-side status merged into the health answer.
    pub status: StatusFn,
}

impl std::fmt::Debug for AgentApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentApiState")
            .field("registry", &self.registry)
            .field("action_token", &self.action_token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// The agent's router: `GET /agent/v1/health`, `POST /agent/v1/actions`.
pub fn agent_app(state: AgentApiState) -> Router {
    Router::new()
        .route("/agent/v1/health", get(health))
        .route("/agent/v1/actions", post(execute))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .with_state(state)
}

async fn health(State(state): State<AgentApiState>) -> Json<Value> {
    let mut body = json!({
        "status": "ok",
        "role": "agent",
        "version": env!("CARGO_PKG_VERSION"),
        "executors": state.registry.kinds(),
    });
    if let (Some(obj), Value::Object(extra)) = (body.as_object_mut(), (state.status)()) {
        obj.extend(extra);
    }
    Json(body)
}

async fn execute(
    State(state): State<AgentApiState>,
    headers: HeaderMap,
    body: Result<Json<ActionSpec>, JsonRejection>,
) -> Result<Json<ExecutionReport>, ApiError> {
    let Some(token) = state.action_token.as_deref() else {
        return Err(ApiError::Forbidden(
            "agent.action_token is not set on this agent: actions are refused".into(),
        ));
    };
    crate::auth::require_bearer(&headers, &[token])?;
    let Json(spec) = body?;
    state
        .registry
        .execute(&spec)
        .await
        .map(Json)
        .map_err(|e| match e {
            ExecuteError::NoExecutor { .. } => ApiError::Unprocessable(e.to_string()),
            ExecuteError::Timeout { .. } => ApiError::Timeout(e.to_string()),
            ExecuteError::Failed { .. } => ApiError::Internal(e.to_string()),
        })
}
