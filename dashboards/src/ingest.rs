//! `POST /api/v1/ingest`: how agents send records up to the server's event stream.
//!
//! The body is a JSON array of event envelopes. The batch is all-or-nothing: every element is
//! validated first, and only then is the batch appended; the response is sent after the
//! append is acknowledged, so a 200 means the records are in the log (see the event log's
//! durability notes) and a client that got no answer may resend.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use fleetmind_schema::{Envelope, SCHEMA_VERSION, decode_envelope};
use serde_json::{Value, json};

use crate::{ApiError, ApiState};

/// Most envelopes accepted in one request.
pub const MAX_BATCH: usize = 10_000;

pub(crate) async fn ingest(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<Vec<Value>>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let Json(values) = body?;
    let envelopes = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| decode_envelope(v).map_err(|e| ApiError::BadRequest(format!("[{i}].{e}"))))
        .collect::<Result<Vec<Envelope>, _>>()?;
    if envelopes.is_empty() {
        return Err(ApiError::BadRequest(
            "empty batch: send at least one record".into(),
        ));
    }
    if envelopes.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "batch of {} records is over the limit of {MAX_BATCH}",
            envelopes.len()
        )));
    }
    let mut payloads = Vec::with_capacity(envelopes.len());
    for (i, envelope) in envelopes.iter().enumerate() {
        if envelope.schema_version > SCHEMA_VERSION {
            return Err(ApiError::BadRequest(format!(
                "[{i}]: schema_version {} is newer than this server's {SCHEMA_VERSION}; upgrade the server",
                envelope.schema_version
            )));
        }
        let bytes = serde_json::to_vec(envelope)
            .map_err(|e| ApiError::Internal(format!("[{i}]: cannot encode record: {e}")))?;
        payloads.push(bytes);
    }
    let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let ack = state.ingest.append(&slices).await.map_err(|e| {
        ApiError::Unavailable(format!("event stream did not accept the batch: {e}"))
    })?;
    Ok(Json(json!({
        "count": envelopes.len(),
        "first_offset": ack.first_offset,
        "last_offset": ack.last_offset,
    })))
}

fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.agent_tokens.is_empty() {
        return Ok(());
    }
    crate::auth::require_bearer(headers, &state.agent_tokens)
}
