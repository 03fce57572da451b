//! Incidents and recommendations: `GET /api/v1/incidents`, `GET /api/v1/incidents/{id}` and
//! `GET /api/v1/recommendations`, read from the engine's [`IncidentFeed`].
//!
//! Query parameters are checked strictly: an unknown parameter or a value that is not one of
//! the allowed ones is a 400 naming the parameter, so a typo does not silently widen a filter.
//!
//! [`IncidentFeed`]: fleetmind_engine::IncidentFeed

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use fleetmind_engine::correlate::{IncidentQuery, MAX_LIMIT, RecommendationQuery, StatusFilter};
use fleetmind_schema::{ActionKind, IncidentClass};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{ApiError, ApiState};

/// `GET /api/v1/incidents` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IncidentParams {
    status: Option<String>,
    class: Option<String>,
    host: Option<String>,
    vm: Option<String>,
    since: Option<String>,
    limit: Option<String>,
}

/// `GET /api/v1/recommendations` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecommendationParams {
    incident: Option<String>,
    host: Option<String>,
    vm: Option<String>,
    action: Option<String>,
    limit: Option<String>,
}

/// A snake_case enum value (`noisy_neighbour`, `pin_vcpus`) as its type, or a 400 that lists
/// the allowed values.
fn parse_enum<T: DeserializeOwned>(param: &str, value: &str, allowed: &str) -> Result<T, ApiError> {
    serde_json::from_value(Value::String(value.to_owned())).map_err(|_| {
        ApiError::BadRequest(format!("{param} must be one of {allowed} (got {value:?})"))
    })
}

fn parse_limit(value: Option<&str>) -> Result<Option<usize>, ApiError> {
    value
        .map(|v| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "limit must be a whole number from 1 to {MAX_LIMIT} (got {v:?})"
                    ))
                })
        })
        .transpose()
}

/// A filter value: absent or empty means no filter.
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

const CLASSES: &str = "noisy_neighbour, memory_pressure, numa_imbalance, capacity, \
                       host_overcommit, runaway_guest, unknown";
const ACTIONS: &str = "pin_vcpus, move_memory, balloon, migrate, notify";

/// `GET /api/v1/incidents?status=&class=&host=&vm=&since=&limit=`: the latest version of each
/// incident, most recently updated first.
pub(crate) async fn list(
    State(state): State<ApiState>,
    params: Result<Query<IncidentParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params?;
    let status = match given(p.status) {
        Some(s) => s
            .parse::<StatusFilter>()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        None => StatusFilter::All,
    };
    let class = given(p.class)
        .map(|c| parse_enum::<IncidentClass>("class", &c, CLASSES))
        .transpose()?;
    let since = given(p.since)
        .map(|s| {
            s.parse::<i64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "since must be a time in milliseconds since the Unix epoch (got {s:?})"
                ))
            })
        })
        .transpose()?;
    let query = IncidentQuery {
        status,
        class,
        host: given(p.host),
        vm: given(p.vm),
        since,
        limit: parse_limit(p.limit.as_deref())?,
    };
    let incidents = state.feed.incidents(&query);
    Ok(Json(json!({ "incidents": incidents })))
}

/// `GET /api/v1/incidents/{id}`: one incident with its current recommendations, best first.
pub(crate) async fn one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (incident, recommendations) = state
        .feed
        .incident(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no incident {id:?}")))?;
    Ok(Json(
        json!({ "incident": incident, "recommendations": recommendations }),
    ))
}

/// `GET /api/v1/recommendations?incident=&host=&vm=&action=&limit=`: the current
/// recommendations of every incident, newest first, then by incident and rank.
pub(crate) async fn recommendations(
    State(state): State<ApiState>,
    params: Result<Query<RecommendationParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params?;
    let action = given(p.action)
        .map(|a| parse_enum::<ActionKind>("action", &a, ACTIONS))
        .transpose()?;
    let query = RecommendationQuery {
        incident: given(p.incident),
        host: given(p.host),
        vm: given(p.vm),
        action,
        limit: parse_limit(p.limit.as_deref())?,
    };
    let recommendations = state.feed.recommendations(&query);
    Ok(Json(json!({ "recommendations": recommendations })))
}
