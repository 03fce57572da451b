//! The engine's own Tokio runtime for query work.
//!
//! DataFusion work is CPU-bound and recursive. Running it on the daemon's I/O runtime would let
//! one heavy query delay every HTTP response and collector tick, and DataFusion walks
//! expression trees recursively, so a deeply nested expression needs more stack than a 2 MiB
//! worker thread has (apache/datafusion#23264). Queries therefore run here: a small pool of
//! threads with large stacks (virtual memory, committed only as used), started on the first
//! query and shut down with the store.

use std::future::Future;
use std::io;
use std::sync::{Mutex, PoisonError};

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::{JoinError, JoinHandle};

/// Stack of each query thread.
const STACK_BYTES: usize = 64 << 20;

/// The query runtime, started lazily.
pub(crate) struct Executor {
    threads: usize,
    runtime: Mutex<Option<Runtime>>,
}

impl Executor {
    pub(crate) fn new(threads: usize) -> Self {
        Self {
            threads: threads.max(1),
            runtime: Mutex::new(None),
        }
    }

    /// Runs `work` on the query threads; dropping the returned future cancels it.
    ///
    /// # Errors
    ///
    /// Fails if the runtime cannot start (no threads), or with the task's [`JoinError`] if the
    /// work panicked.
    pub(crate) async fn run<F>(&self, work: F) -> Result<Result<F::Output, JoinError>, io::Error>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = AbortOnDrop(self.handle()?.spawn(work));
        Ok(task.join().await)
    }

    fn handle(&self) -> Result<Handle, io::Error> {
        let mut runtime = self.runtime.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rt) = runtime.as_ref() {
            return Ok(rt.handle().clone());
        }
        let rt = Builder::new_multi_thread()
            .worker_threads(self.threads)
            .max_blocking_threads(self.threads)
            .thread_stack_size(STACK_BYTES)
            .thread_name("fleetmind-query")
            .enable_time()
            .build()?;
        let handle = rt.handle().clone();
        *runtime = Some(rt);
        Ok(handle)
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Not `Runtime::drop`, which blocks and so panics when the store is dropped inside
        // another runtime.
        let runtime = self
            .runtime
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(rt) = runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A task that is aborted when its handle is dropped (the caller gave up waiting).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_and_reports_panics() {
        let executor = Executor::new(1);
        assert_eq!(
            executor
                .run(async { 7 })
                .await
                .expect("starts")
                .expect("runs"),
            7
        );
        let panicked = executor
            .run(async { panic!("boom") })
            .await
            .expect("starts")
            .expect_err("panics");
        assert!(panicked.is_panic());
    }

    #[test]
    fn unstarted_executor_drops_quietly() {
        drop(Executor::new(2));
    }
}
