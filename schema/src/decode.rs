//! Decoding envelopes from untrusted JSON with errors that name the offending field.
//!
//! serde's derived decoder for [`Envelope`] (a flattened, internally tagged enum) buffers the
//! object before it knows the kind, and its errors lose the field path: a wrong `cpus` reads
//! as "invalid type: string, expected u32". Input from agents and users goes through
//! [`decode_envelope`] instead, which reads the tag first and then decodes the concrete record
//! type, so the error says `cpus: invalid type ...`.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::records::{Envelope, Record, RecordKind};

/// Why a JSON value is not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DecodeError {
    /// Dotted path of the offending field inside the envelope (`.` for the whole object).
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl DecodeError {
    fn at(path: &str, message: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// Decodes one envelope, naming the field at fault on error.
///
/// # Errors
///
/// [`DecodeError`] with the path of the field and serde's message.
pub fn decode_envelope(value: Value) -> Result<Envelope, DecodeError> {
    let Value::Object(mut object) = value else {
        return Err(DecodeError::at(".", "expected a JSON object"));
    };
    let schema_version = match object.remove("schema_version") {
        Some(v) => serde_json::from_value::<u32>(v)
            .map_err(|e| DecodeError::at("schema_version", e.to_string()))?,
        None => return Err(DecodeError::at("schema_version", "missing field")),
    };
    let kind = match object.remove("kind") {
        Some(v) => serde_json::from_value::<RecordKind>(v)
            .map_err(|e| DecodeError::at("kind", e.to_string()))?,
        None => return Err(DecodeError::at("kind", "missing field")),
    };
    let fields = Value::Object(object);
    let record = match kind {
        RecordKind::HostSample => Record::HostSample(typed(fields)?),
        RecordKind::VmSample => Record::VmSample(typed(fields)?),
        RecordKind::Anomaly => Record::Anomaly(typed(fields)?),
        RecordKind::Incident => Record::Incident(typed(fields)?),
        RecordKind::Recommendation => Record::Recommendation(typed(fields)?),
        RecordKind::Action => Record::Action(typed(fields)?),
        RecordKind::Audit => Record::Audit(typed(fields)?),
        RecordKind::CollectorHealth => Record::CollectorHealth(typed(fields)?),
    };
    Ok(Envelope {
        schema_version,
        record,
    })
}

fn typed<T: DeserializeOwned>(fields: Value) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(fields).map_err(|e| {
        let path = e.path().to_string();
        DecodeError::at(&path, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_the_nested_field_at_fault() {
        let value = json!({
            "schema_version": 1, "kind": "anomaly", "id": "a", "ts": 1,
            "subject": {"host": 7, "vm": null}, "series": "s", "value": 1.0,
            "expected": 1.0, "score": 0.5, "detector": "d"
        });
        let err = decode_envelope(value).expect_err("host is not a string");
        assert_eq!(err.path, "subject.host");
        assert!(err.message.contains("expected a string"), "{err}");
    }

    #[test]
    fn missing_and_unknown_tags_are_named() {
        let err = decode_envelope(json!({"kind": "anomaly"})).expect_err("no version");
        assert_eq!(err.path, "schema_version");
        let err = decode_envelope(json!({"schema_version": 1, "kind": "bogus"})).expect_err("kind");
        assert_eq!(err.path, "kind");
        assert!(err.message.contains("bogus"), "{err}");
        let err = decode_envelope(json!([1])).expect_err("not an object");
        assert_eq!(err.path, ".");
    }

    #[test]
    fn agrees_with_the_derived_decoder_on_valid_input() {
        let value = json!({
            "schema_version": 1, "kind": "anomaly", "id": "a", "ts": 1,
            "subject": {"host": "h", "vm": null}, "series": "s", "value": 1.0,
            "expected": 1.0, "score": 0.5, "detector": "d"
        });
        let derived: Envelope = serde_json::from_value(value.clone()).expect("derived");
        assert_eq!(decode_envelope(value).expect("ours"), derived);
    }
}
