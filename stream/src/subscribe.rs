//! Live tail subscriptions of the embedded log.
//!
//! The writer publishes its committed end offset on a `tokio::sync::watch` channel after every
//! acknowledged append. A subscription is a cursor over the segment files plus a receiver of
//! that channel: while it is behind the end it reads committed records from disk in batches
//! (up to [`BATCH_RECORDS`] records or [`BATCH_BYTES`] bytes per trip to tokio's blocking
//! pool), and once caught up it awaits the next change of the end offset, so it never polls or
//! sleeps. Each subscription reads at its own pace and holds no lock the writer needs; many can
//! run at once.
//!
//! When every handle of the log is dropped the channel closes: a subscription then yields the
//! records still committed past its position and ends.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

use crate::api::{ReadError, SubscribeError, Subscription};
use crate::log::Shared;
use crate::reader::Cursor;
use crate::writer::run_blocking;
use crate::{Offset, Record};

/// Most records one blocking read fetches for a subscription.
pub const BATCH_RECORDS: usize = 1024;
/// Most payload bytes one blocking read fetches for a subscription (1 MiB).
pub const BATCH_BYTES: usize = 1024 * 1024;

struct State {
    cursor: Option<Cursor>,
    end: watch::Receiver<Offset>,
    buffered: VecDeque<Record>,
    error: Option<ReadError>,
    finished: bool,
}

/// Starts a subscription at `from` over the log described by `shared`.
pub(crate) fn subscribe(
    shared: Arc<Shared>,
    end: watch::Receiver<Offset>,
    from: Offset,
) -> Result<Subscription, SubscribeError> {
    let earliest = shared.earliest();
    if from.0 < earliest {
        return Err(SubscribeError::Expired {
            requested: from,
            earliest: Offset(earliest),
        });
    }
    let state = State {
        cursor: Some(Cursor::new(shared, from.0)),
        end,
        buffered: VecDeque::new(),
        error: None,
        finished: false,
    };
    Ok(Subscription::new(futures::stream::unfold(state, step)))
}

async fn step(mut state: State) -> Option<(Result<Record, ReadError>, State)> {
    loop {
        if let Some(record) = state.buffered.pop_front() {
            return Some((Ok(record), state));
        }
        if let Some(error) = state.error.take() {
            state.finished = true;
            return Some((Err(error), state));
        }
        if state.finished {
            return None;
        }
        let next = state.cursor.as_ref().map_or(u64::MAX, |c| c.next);
        let end = wait_past(&mut state.end, next).await?;
        let cursor = state.cursor.take()?;
        match run_blocking(move || read_batch(cursor, end)).await {
            Ok((cursor, records, error)) => {
                state.cursor = Some(cursor);
                state.buffered = records;
                state.error = error;
            }
            Err(join) => state.error = Some(ReadError::Task(join)),
        }
    }
}

/// Waits until the committed end is past `next` and returns it; `None` when the log is closed
/// and nothing past `next` was committed.
async fn wait_past(end: &mut watch::Receiver<Offset>, next: u64) -> Option<u64> {
    loop {
        let committed = end.borrow_and_update().0;
        if next < committed {
            return Some(committed);
        }
        if end.changed().await.is_err() {
            let last = end.borrow().0;
            return (next < last).then_some(last);
        }
    }
}

/// Reads up to one batch of committed records (below `end`) from the cursor's position.
fn read_batch(mut cursor: Cursor, end: u64) -> (Cursor, VecDeque<Record>, Option<ReadError>) {
    let mut records = VecDeque::new();
    let mut bytes = 0usize;
    while cursor.next < end && records.len() < BATCH_RECORDS && bytes < BATCH_BYTES {
        match cursor.read_next(end) {
            Ok(record) => {
                bytes += record.payload.len();
                records.push_back(record);
            }
            Err(error) => return (cursor, records, Some(error)),
        }
    }
    (cursor, records, None)
}
