//! The unit the store keeps: a `RecordBatch` with its time range, and compaction of small ones.
//!
//! Ingest appends one small batch per call and kind. Left alone, a table would become
//! thousands of tiny batches that every query scans one by one, so small chunks are
//! concatenated into chunks of up to [`CHUNK_ROWS`] rows, sorted by `ts`. The time range lets
//! retention drop whole chunks without looking at their rows, and sorted chunks are trimmed by
//! slicing, without copying.

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::TimestampMillisecondType;
use arrow::error::ArrowError;
use fleetmind_schema::TimestampMs;

/// Rows a compacted chunk holds at most.
pub(crate) const CHUNK_ROWS: usize = 64 * 1024;

/// Compaction runs once a table holds more than this many chunks smaller than [`CHUNK_ROWS`].
pub(crate) const MAX_SMALL_CHUNKS: usize = 64;

/// Name of the time column every record kind has.
const TS: &str = "ts";

/// A batch of one table, with the range of its `ts` column.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub(crate) batch: RecordBatch,
    /// Smallest `ts`; meaningless when the batch is empty.
    pub(crate) min_ts: TimestampMs,
    /// Largest `ts`; meaningless when the batch is empty.
    pub(crate) max_ts: TimestampMs,
    /// Whether the rows are in `ts` order (then a trim is a slice).
    pub(crate) sorted: bool,
}

impl Chunk {
    /// Wraps a batch, reading its time range.
    ///
    /// # Errors
    ///
    /// Fails if the batch has no millisecond-timestamp `ts` column.
    pub(crate) fn new(batch: RecordBatch) -> Result<Self, ArrowError> {
        let ts = ts_values(&batch)?;
        let (mut min_ts, mut max_ts, mut sorted) = (TimestampMs::MAX, TimestampMs::MIN, true);
        for (i, &t) in ts.iter().enumerate() {
            min_ts = min_ts.min(t);
            max_ts = max_ts.max(t);
            sorted &= i == 0 || ts[i - 1] <= t;
        }
        Ok(Self {
            batch,
            min_ts,
            max_ts,
            sorted,
        })
    }

    pub(crate) fn rows(&self) -> usize {
        self.batch.num_rows()
    }
}

/// The `ts` values of a batch (the column is non-null in every record kind).
///
/// # Errors
///
/// Fails if the batch has no millisecond-timestamp `ts` column.
pub(crate) fn ts_values(batch: &RecordBatch) -> Result<&[TimestampMs], ArrowError> {
    batch
        .column_by_name(TS)
        .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
        .map(|a| a.values().as_ref())
        .ok_or_else(|| ArrowError::SchemaError("batch has no millisecond `ts` column".into()))
}

/// Concatenates small chunks into sorted chunks of up to [`CHUNK_ROWS`] rows once there are
/// more than [`MAX_SMALL_CHUNKS`] of them. Chunks that are already full stay as they are.
///
/// # Errors
///
/// Fails if an Arrow kernel fails (chunks of different schemas, which the store never mixes).
pub(crate) fn compact(chunks: Vec<Chunk>) -> Result<Vec<Chunk>, ArrowError> {
    let small_count = chunks.iter().filter(|c| c.rows() < CHUNK_ROWS).count();
    if small_count <= MAX_SMALL_CHUNKS {
        return Ok(chunks);
    }
    let (mut out, small): (Vec<_>, Vec<_>) =
        chunks.into_iter().partition(|c| c.rows() >= CHUNK_ROWS);
    let mut group: Vec<RecordBatch> = Vec::new();
    let mut group_rows = 0;
    for chunk in small {
        if group_rows + chunk.rows() > CHUNK_ROWS && !group.is_empty() {
            out.push(merge(&group)?);
            group.clear();
            group_rows = 0;
        }
        group_rows += chunk.rows();
        group.push(chunk.batch);
    }
    if !group.is_empty() {
        out.push(merge(&group)?);
    }
    Ok(out)
}

/// One sorted chunk from several batches of the same schema (`batches` is not empty).
fn merge(batches: &[RecordBatch]) -> Result<Chunk, ArrowError> {
    let schema = batches
        .first()
        .map(RecordBatch::schema)
        .ok_or_else(|| ArrowError::InvalidArgumentError("nothing to merge".into()))?;
    let batch = concat_batches(&schema, batches)?;
    let ts = batch
        .column_by_name(TS)
        .ok_or_else(|| ArrowError::SchemaError("batch has no `ts` column".into()))?;
    let order = sort_to_indices(ts, None, None)?;
    Chunk::new(take_record_batch(&batch, &order)?)
}

#[cfg(test)]
mod tests {
    use fleetmind_schema::to_record_batch;

    use super::*;
    use crate::test_utils::host_sample;

    fn chunk_at(ts: &[TimestampMs]) -> Chunk {
        let rows: Vec<_> = ts.iter().map(|&t| host_sample("h1", t)).collect();
        Chunk::new(to_record_batch(&rows).expect("valid samples")).expect("has ts")
    }

    #[test]
    fn new_reads_range_and_order() {
        let c = chunk_at(&[30, 10, 20]);
        assert_eq!((c.min_ts, c.max_ts, c.sorted), (10, 30, false));
        let c = chunk_at(&[10, 10, 20]);
        assert_eq!((c.min_ts, c.max_ts, c.sorted), (10, 20, true));
    }

    #[test]
    fn few_small_chunks_are_left_alone() {
        let chunks: Vec<_> = (0..MAX_SMALL_CHUNKS as i64)
            .map(|i| chunk_at(&[i]))
            .collect();
        assert_eq!(compact(chunks).expect("compacts").len(), MAX_SMALL_CHUNKS);
    }

    #[test]
    fn many_small_chunks_become_one_sorted_chunk() {
        let chunks: Vec<_> = (0..=MAX_SMALL_CHUNKS as i64)
            .rev()
            .map(|i| chunk_at(&[i, i]))
            .collect();
        let out = compact(chunks).expect("compacts");
        assert_eq!(out.len(), 1);
        let c = &out[0];
        assert_eq!(c.rows(), 2 * (MAX_SMALL_CHUNKS + 1));
        assert!(c.sorted);
        assert_eq!((c.min_ts, c.max_ts), (0, MAX_SMALL_CHUNKS as i64));
        assert!(ts_values(&c.batch).expect("ts").is_sorted());
    }
}
