//! Read-only routes: the dashboard page, health, hosts and SQL queries.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{Method, Uri, header};
use axum::response::{Html, IntoResponse};
use fleetmind_engine::{QueryError, QueryResult};
use fleetmind_schema::now_ms;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, ApiState};

const INDEX_HTML: &str = include_str!("../assets/index.html");

/// `GET /`: the dashboard page (static; it reads the API from the browser).
pub(crate) async fn index() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'",
            ),
        ],
        Html(INDEX_HTML),
    )
}

/// `GET /api/v1/health`
pub(crate) async fn health(State(state): State<ApiState>) -> Json<Value> {
    let mut body = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "engine": {"rows": state.store.row_counts()},
    });
    if let (Some(obj), Value::Object(extra)) = (body.as_object_mut(), (state.status)()) {
        for (k, v) in extra {
            match (obj.get_mut(&k), v) {
                (Some(Value::Object(existing)), Value::Object(more)) => existing.extend(more),
                (_, v) => {
                    obj.insert(k, v);
                }
            }
        }
    }
    Json(body)
}

/// `GET /api/v1/hosts`: the latest sample of every host, with its age.
pub(crate) async fn hosts(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let now = now_ms();
    let hosts = state
        .store
        .latest_hosts()
        .into_iter()
        .map(|sample| {
            let age_ms = now.saturating_sub(sample.ts).max(0);
            let mut value =
                serde_json::to_value(&sample).map_err(|e| ApiError::Internal(e.to_string()))?;
            if let Some(obj) = value.as_object_mut() {
                obj.insert("age_ms".into(), json!(age_ms));
            }
            Ok(value)
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(json!({ "hosts": hosts })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct QueryParams {
    sql: Option<String>,
}

/// `GET /api/v1/query?sql=...`: read-only SQL over the engine's tables.
pub(crate) async fn query(
    State(state): State<ApiState>,
    params: Result<Query<QueryParams>, QueryRejection>,
) -> Result<Json<QueryResult>, ApiError> {
    let Query(params) = params?;
    let sql = params
        .sql
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest("missing query parameter `sql`".into()))?;
    match state.store.query(&sql, &state.query_limits).await {
        Ok(result) => Ok(Json(result)),
        Err(err) => Err(query_error(&err)),
    }
}

fn query_error(err: &QueryError) -> ApiError {
    let message = err.to_string();
    if matches!(err, QueryError::Timeout { .. }) {
        ApiError::Timeout(message)
    } else if matches!(err, QueryError::Busy { .. }) {
        ApiError::Unavailable(message)
    } else if err.is_client_error() {
        ApiError::BadRequest(message)
    } else {
        ApiError::Internal(message)
    }
}

/// Any unknown path.
pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

/// A known path with the wrong method.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
