//! The memory window: rows older than `now - window` leave the store.
//!
//! The window is what bounds the engine's memory; older data lives in the event log, not here.
//! Trimming is cheap on the common path: chunks wholly older than the cutoff are dropped
//! without looking at their rows, chunks wholly newer are kept as they are, and only chunks
//! that straddle the cutoff are cut (a zero-copy slice when sorted, a filter otherwise).

use arrow::array::BooleanArray;
use arrow::buffer::BooleanBuffer;
use arrow::compute::filter_record_batch;
use arrow::error::ArrowError;
use fleetmind_schema::{RecordKind, TimestampMs};

use crate::chunk::{Chunk, ts_values};

/// Failure to cut a table's rows at the window.
#[derive(Debug, thiserror::Error)]
#[error("cannot trim table {table} to the memory window")]
pub struct RetentionError {
    table: &'static str,
    #[source]
    source: ArrowError,
}

impl RetentionError {
    pub(crate) fn new(kind: RecordKind, source: ArrowError) -> Self {
        Self {
            table: kind.table_name(),
            source,
        }
    }
}

/// Keeps the rows with `ts >= cutoff`. Returns the chunks left, the number of rows dropped and
/// the first error met: a chunk that cannot be trimmed (no `ts` column, which the schema rules
/// out) is kept whole, so a failed trim loses nothing.
pub(crate) fn retain_since(
    chunks: Vec<Chunk>,
    cutoff: TimestampMs,
) -> (Vec<Chunk>, usize, Option<ArrowError>) {
    let mut kept = Vec::with_capacity(chunks.len());
    let mut dropped = 0;
    let mut error = None;
    for chunk in chunks {
        let before = chunk.rows();
        match trim(&chunk, cutoff) {
            Ok(Some(trimmed)) => {
                dropped += before - trimmed.rows();
                kept.push(trimmed);
            }
            Ok(None) => dropped += before,
            Err(e) => {
                error.get_or_insert(e);
                kept.push(chunk);
            }
        }
    }
    (kept, dropped, error)
}

/// The part of one chunk at or after `cutoff`, or `None` when nothing is left.
fn trim(chunk: &Chunk, cutoff: TimestampMs) -> Result<Option<Chunk>, ArrowError> {
    if chunk.rows() == 0 || chunk.max_ts < cutoff {
        return Ok(None);
    }
    if chunk.min_ts >= cutoff {
        return Ok(Some(chunk.clone()));
    }
    let ts = ts_values(&chunk.batch)?;
    if chunk.sorted {
        let start = ts.partition_point(|&t| t < cutoff);
        let batch = chunk.batch.slice(start, chunk.rows() - start);
        return Ok(Some(Chunk {
            min_ts: ts[start],
            batch,
            ..*chunk
        }));
    }
    let keep = BooleanArray::new(
        BooleanBuffer::collect_bool(ts.len(), |i| ts[i] >= cutoff),
        None,
    );
    let batch = filter_record_batch(&chunk.batch, &keep)?;
    Chunk::new(batch).map(Some)
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

    fn ts_of(chunks: &[Chunk]) -> Vec<TimestampMs> {
        chunks
            .iter()
            .flat_map(|c| ts_values(&c.batch).expect("ts").to_vec())
            .collect()
    }

    #[test]
    fn old_chunks_drop_new_chunks_stay() {
        let (kept, dropped, err) = retain_since(vec![chunk_at(&[1, 2]), chunk_at(&[10, 11])], 5);
        assert!(err.is_none());
        assert_eq!(dropped, 2);
        assert_eq!(ts_of(&kept), [10, 11]);
    }

    #[test]
    fn sorted_straddling_chunk_is_sliced() {
        let (kept, dropped, _) = retain_since(vec![chunk_at(&[1, 5, 5, 9])], 5);
        assert_eq!(dropped, 1);
        assert_eq!(ts_of(&kept), [5, 5, 9]);
        assert_eq!(
            (kept[0].min_ts, kept[0].max_ts, kept[0].sorted),
            (5, 9, true)
        );
    }

    #[test]
    fn unsorted_straddling_chunk_is_filtered() {
        let (kept, dropped, _) = retain_since(vec![chunk_at(&[9, 1, 7, 3])], 5);
        assert_eq!(dropped, 2);
        assert_eq!(ts_of(&kept), [9, 7]);
        assert_eq!((kept[0].min_ts, kept[0].max_ts), (7, 9));
    }
}
