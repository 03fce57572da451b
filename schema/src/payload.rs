//! Payload encodings for the event stream, measured side by side: the JSON envelope of one
//! record, an Arrow IPC stream of one record, and an Arrow IPC stream of a batch of records.
//!
//! The Kafka backend keys messages by host and VM, so a message is naturally one record;
//! Arrow IPC pays its schema in every stream and only wins when records are batched. This
//! module measures both so the choice is made with numbers (`fleetmind bench payload`).
//! Decoding is timed to what the engine needs, an Arrow `RecordBatch`: JSON is parsed into
//! envelopes and converted with [`crate::to_record_batch`], Arrow IPC is read as it is.

use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::{ArrowRecord, Envelope, Record, VmSample, to_record_batch};

/// The figures of one encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadFigures {
    /// Encoding name.
    pub format: String,
    /// Records per message.
    pub records_per_message: usize,
    /// Bytes per record on the wire (message bytes / records per message).
    pub bytes_per_record: f64,
    /// Encoding time per record, nanoseconds.
    pub encode_ns_per_record: f64,
    /// Decoding time to an Arrow batch per record, nanoseconds.
    pub decode_ns_per_record: f64,
}

impl std::fmt::Display for PayloadFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<28} {:>6} rec/msg {:>9.1} B/rec {:>9.0} ns/rec encode {:>9.0} ns/rec decode",
            self.format,
            self.records_per_message,
            self.bytes_per_record,
            self.encode_ns_per_record,
            self.decode_ns_per_record
        )
    }
}

/// A failure while measuring (a bug: the records are valid).
#[derive(Debug, thiserror::Error)]
pub enum MeasurePayloadError {
    /// JSON encoding or decoding failed.
    #[error("JSON round trip failed")]
    Json(#[from] serde_json::Error),
    /// Arrow conversion or IPC failed.
    #[error("Arrow round trip failed")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Conversion of records to a batch failed.
    #[error("record batch conversion failed")]
    Batch(#[from] crate::ToBatchError),
    /// No records given.
    #[error("no records to measure")]
    Empty,
}

fn ipc_bytes(batch: &RecordBatch) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut out = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut out, &batch.schema())?;
        writer.write(batch)?;
        writer.finish()?;
    }
    Ok(out)
}

fn ipc_decode(bytes: &[u8]) -> Result<usize, arrow::error::ArrowError> {
    let reader = StreamReader::try_new(bytes, None)?;
    let mut rows = 0;
    for batch in reader {
        rows += batch?.num_rows();
    }
    Ok(rows)
}

#[allow(clippy::cast_precision_loss)]
fn per(total_ns: u128, n: usize) -> f64 {
    total_ns as f64 / n.max(1) as f64
}

/// Measures the encodings on `samples`, with Arrow batches of `batch` records.
///
/// # Errors
///
/// [`MeasurePayloadError`] if a round trip fails (a bug) or `samples` is empty.
pub fn measure_vm_samples(
    samples: &[VmSample],
    batch: usize,
) -> Result<Vec<PayloadFigures>, MeasurePayloadError> {
    if samples.is_empty() {
        return Err(MeasurePayloadError::Empty);
    }
    let n = samples.len();
    let batch = batch.clamp(1, n);

    // JSON envelope, one record per message; decoded into envelopes, then into batches of
    // `batch` as the engine ingests them.
    let start = Instant::now();
    let messages: Vec<Vec<u8>> = samples
        .iter()
        .map(|s| serde_json::to_vec(&Envelope::new(Record::VmSample(s.clone()))))
        .collect::<Result<_, _>>()?;
    let json_encode = start.elapsed().as_nanos();
    let json_bytes: usize = messages.iter().map(Vec::len).sum();
    let start = Instant::now();
    let mut decoded = Vec::with_capacity(batch);
    let mut rows = 0;
    for message in &messages {
        let envelope: Envelope = serde_json::from_slice(message)?;
        if let Record::VmSample(s) = envelope.record {
            decoded.push(s);
        }
        if decoded.len() == batch {
            rows += to_record_batch(&decoded)?.num_rows();
            decoded.clear();
        }
    }
    if !decoded.is_empty() {
        rows += to_record_batch(&decoded)?.num_rows();
    }
    let json_decode = start.elapsed().as_nanos();
    debug_assert_eq!(rows, n);

    let mut figures = vec![PayloadFigures {
        format: "json envelope".into(),
        records_per_message: 1,
        bytes_per_record: json_bytes as f64 / n as f64,
        encode_ns_per_record: per(json_encode, n),
        decode_ns_per_record: per(json_decode, n),
    }];

    // Arrow IPC: one record per stream, then `batch` records per stream.
    for per_message in [1, batch] {
        let start = Instant::now();
        let streams: Vec<Vec<u8>> = samples
            .chunks(per_message)
            .map(|chunk| Ok::<_, MeasurePayloadError>(ipc_bytes(&to_record_batch(chunk)?)?))
            .collect::<Result<_, _>>()?;
        let encode = start.elapsed().as_nanos();
        let bytes: usize = streams.iter().map(Vec::len).sum();
        let start = Instant::now();
        let mut rows = 0;
        for stream in &streams {
            rows += ipc_decode(stream)?;
        }
        let decode = start.elapsed().as_nanos();
        debug_assert_eq!(rows, n);
        figures.push(PayloadFigures {
            format: format!("arrow ipc stream ({})", VmSample::KIND.as_str()),
            records_per_message: per_message,
            bytes_per_record: bytes as f64 / n as f64,
            encode_ns_per_record: per(encode, n),
            decode_ns_per_record: per(decode, n),
        });
        if batch == 1 {
            break;
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExitCounter, VcpuSample, VmmKind};

    fn sample(i: usize) -> VmSample {
        VmSample {
            ts: 1_763_892_000_000 + i as i64,
            host: "h".into(),
            vm: format!("h/vm-{i}"),
            name: format!("vm-{i}"),
            vmm: VmmKind::Builtin,
            interval_ms: 1000,
            mem_bytes: 1 << 26,
            rss_bytes: 1 << 20,
            numa_resident: vec![],
            balloon_target_bytes: None,
            balloon_actual_bytes: None,
            guest_free_bytes: None,
            dirty_bytes_per_s: None,
            vcpus: vec![VcpuSample {
                vcpu: 0,
                tid: Some(1),
                run_frac: 0.1,
                wait_frac: 0.0,
                host_cpu: None,
                affinity: vec![0],
                exits_per_s: 1.0,
            }],
            exits: vec![ExitCounter {
                reason: "exits".into(),
                total: i as u64,
                per_s: 1.0,
            }],
        }
    }

    #[test]
    fn every_encoding_round_trips_and_batches_amortise_the_schema() {
        let samples: Vec<_> = (0..64).map(sample).collect();
        let figures = measure_vm_samples(&samples, 32).expect("measures");
        assert_eq!(figures.len(), 3);
        let (json, one, batched) = (&figures[0], &figures[1], &figures[2]);
        assert_eq!(
            (one.records_per_message, batched.records_per_message),
            (1, 32)
        );
        // A one-record IPC stream carries its schema: bigger than the JSON envelope; a batch
        // spreads it.
        assert!(one.bytes_per_record > json.bytes_per_record, "{figures:?}");
        assert!(
            batched.bytes_per_record < one.bytes_per_record,
            "{figures:?}"
        );
        assert!(matches!(
            measure_vm_samples(&[], 1),
            Err(MeasurePayloadError::Empty)
        ));
    }
}
