//! The executor registry: maps an [`ActionKind`] to the component that performs it.
//!
//! Executors are added by implementing [`ActionExecutor`] and registering the value once; the
//! agent's action API, the server's auto-remediation and tests all go through
//! [`ExecutorRegistry::execute`], which adds the timeout and the logging.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmind_schema::{ActionKind, ActionSpec};
use futures::future::BoxFuture;
use serde::Serialize;

/// Performs one kind of action.
pub trait ActionExecutor: Send + Sync + Debug {
    /// The kind this executor performs.
    fn kind(&self) -> ActionKind;
    /// Performs `spec`. Must be idempotent: running the same spec twice leaves the same state.
    fn execute<'a>(&'a self, spec: &'a ActionSpec) -> BoxFuture<'a, Result<String, String>>;
}

/// What an execution did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionReport {
    /// The executor's own summary.
    pub detail: String,
    /// How long it took.
    pub elapsed_ms: u64,
}

/// Why an action was not performed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecuteError {
    /// Nothing on this agent performs that kind of action.
    #[error("no executor for action kind {kind:?} on this host (available: {available:?})")]
    NoExecutor {
        /// Requested kind.
        kind: ActionKind,
        /// Kinds this registry has.
        available: Vec<ActionKind>,
    },
    /// The executor did not finish in time; the action's effect is unknown.
    #[error("action {kind:?} did not finish within {timeout:?}")]
    Timeout {
        /// Kind.
        kind: ActionKind,
        /// The limit.
        timeout: Duration,
    },
    /// The executor reported failure.
    #[error("action {kind:?} failed: {message}")]
    Failed {
        /// Kind.
        kind: ActionKind,
        /// The executor's message.
        message: String,
    },
}

/// All executors of one process, by kind.
#[derive(Debug, Clone)]
pub struct ExecutorRegistry {
    executors: BTreeMap<String, Arc<dyn ActionExecutor>>,
    timeout: Duration,
}

fn key(kind: ActionKind) -> String {
    format!("{kind:?}")
}

impl ExecutorRegistry {
    /// An empty registry whose executions time out after `timeout`.
    #[must_use]
    pub fn new(timeout: Duration) -> Self {
        Self {
            executors: BTreeMap::new(),
            timeout,
        }
    }

    /// Adds an executor; a later one for the same kind replaces the earlier.
    pub fn register(&mut self, executor: Arc<dyn ActionExecutor>) {
        self.executors.insert(key(executor.kind()), executor);
    }

    /// The kinds this registry can perform.
    #[must_use]
    pub fn kinds(&self) -> Vec<ActionKind> {
        self.executors.values().map(|e| e.kind()).collect()
    }

    /// Performs `spec` with the registered executor, within the timeout.
    ///
    /// # Errors
    ///
    /// [`ExecuteError`]: no executor for the kind, timeout, or the executor's failure.
    pub async fn execute(&self, spec: &ActionSpec) -> Result<ExecutionReport, ExecuteError> {
        let kind = spec.action;
        let Some(executor) = self.executors.get(&key(kind)) else {
            return Err(ExecuteError::NoExecutor {
                kind,
                available: self.kinds(),
            });
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, executor.execute(spec)).await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match outcome {
            Err(_) => {
                tracing::error!(?kind, target = ?spec.target, timeout = ?self.timeout, "action timed out");
                Err(ExecuteError::Timeout {
                    kind,
                    timeout: self.timeout,
                })
            }
            Ok(Err(message)) => {
                tracing::warn!(?kind, target = ?spec.target, %message, "action failed");
                Err(ExecuteError::Failed { kind, message })
            }
            Ok(Ok(detail)) => {
                tracing::info!(?kind, target = ?spec.target, elapsed_ms, "action succeeded");
                Ok(ExecutionReport { detail, elapsed_ms })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use fleetmind_schema::Subject;

    use super::*;

    #[derive(Debug, Default)]
    struct Counting {
        calls: AtomicUsize,
    }

    impl ActionExecutor for Counting {
        fn kind(&self) -> ActionKind {
            ActionKind::Notify
        }
        fn execute<'a>(&'a self, spec: &'a ActionSpec) -> BoxFuture<'a, Result<String, String>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                match spec.params.get("fail") {
                    Some(msg) => Err(msg.clone()),
                    None => Ok(format!("call {n}")),
                }
            })
        }
    }

    #[derive(Debug)]
    struct Never;

    impl ActionExecutor for Never {
        fn kind(&self) -> ActionKind {
            ActionKind::Balloon
        }
        fn execute<'a>(&'a self, _: &'a ActionSpec) -> BoxFuture<'a, Result<String, String>> {
            Box::pin(futures::future::pending())
        }
    }

    fn spec(action: ActionKind, params: &[(&str, &str)]) -> ActionSpec {
        ActionSpec {
            action,
            target: Subject {
                host: "h".into(),
                vm: Some("h/vm-1".into()),
            },
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[tokio::test]
    async fn dispatches_by_kind_and_reports_failures() {
        let counting = Arc::new(Counting::default());
        let mut registry = ExecutorRegistry::new(Duration::from_secs(5));
        registry.register(counting.clone());
        let report = registry
            .execute(&spec(ActionKind::Notify, &[]))
            .await
            .expect("succeeds");
        assert_eq!(report.detail, "call 1");
        let err = registry
            .execute(&spec(ActionKind::Notify, &[("fail", "guest gone")]))
            .await
            .expect_err("fails");
        assert!(err.to_string().contains("guest gone"), "{err}");
        assert_eq!(counting.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn unknown_kind_names_what_is_available() {
        let mut registry = ExecutorRegistry::new(Duration::from_secs(5));
        registry.register(Arc::new(Counting::default()));
        let err = registry
            .execute(&spec(ActionKind::Migrate, &[]))
            .await
            .expect_err("no migrate executor");
        assert_eq!(
            err,
            ExecuteError::NoExecutor {
                kind: ActionKind::Migrate,
                available: vec![ActionKind::Notify]
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hung_executor_times_out() {
        let mut registry = ExecutorRegistry::new(Duration::from_secs(30));
        registry.register(Arc::new(Never));
        let err = registry
            .execute(&spec(ActionKind::Balloon, &[]))
            .await
            .expect_err("times out");
        assert!(matches!(err, ExecuteError::Timeout { .. }), "{err}");
    }
}
