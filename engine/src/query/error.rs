//! Why a query gave no result, and whose fault it was.
//!
//! The API turns a [`QueryError`] into a status: the query's fault (bad SQL, a refused
//! statement, a limit hit, a division by zero) is a 4xx with the message shown to the user;
//! the engine's fault is a 5xx. DataFusion errors are sorted by their root cause.

use std::time::Duration;

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Why a query gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The text is not SQL; the message is the parser's (`sql parser error: Expected: ...`).
    #[error("{message}")]
    Parse {
        /// The parser's message.
        message: String,
    },
    /// The SQL does not make a plan: unknown table or column, wrong types, unsupported
    /// feature. The message is DataFusion's.
    #[error("{message}")]
    Plan {
        /// DataFusion's message.
        message: String,
    },
    /// The statement would write or change the session.
    #[error("only SELECT queries are allowed; {statement} is refused")]
    ReadOnly {
        /// The kind refused (`INSERT`, `COPY`, `CREATE TABLE`, ...).
        statement: String,
    },
    /// The query ran out of time and was cancelled.
    #[error("query did not finish within {} ms", limit.as_millis())]
    Timeout {
        /// The limit it hit.
        limit: Duration,
    },
    /// The query text or the memory the query needed is over its limit.
    #[error("{message}")]
    TooLarge {
        /// What was too large.
        message: String,
    },
    /// The query failed while running.
    #[error("{message}")]
    Execution {
        /// DataFusion's message.
        message: String,
        /// Whether the query itself caused it (division by zero, a bad cast) rather than the
        /// engine.
        client_fault: bool,
    },
    /// All query slots are taken; the caller should retry shortly.
    #[error("{limit} queries are already running; retry shortly")]
    Busy {
        /// The configured number of concurrent queries.
        limit: usize,
    },
    /// The engine failed (a bug, not the query's fault).
    #[error("query failed inside the engine: {message}")]
    Internal {
        /// What failed.
        message: String,
    },
}

impl QueryError {
    /// Whether the caller's query is at fault (HTTP 4xx) rather than the engine (5xx). A
    /// timeout counts as the query's fault: it asked for more work than allowed.
    #[must_use]
    pub fn is_client_error(&self) -> bool {
        match self {
            QueryError::Parse { .. }
            | QueryError::Plan { .. }
            | QueryError::ReadOnly { .. }
            | QueryError::Timeout { .. }
            | QueryError::TooLarge { .. } => true,
            QueryError::Execution { client_fault, .. } => *client_fault,
            QueryError::Busy { .. } | QueryError::Internal { .. } => false,
        }
    }
}

/// Where in a query an error happened; planning errors are the query's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Parsing and planning.
    Plan,
    /// Running.
    Execute,
}

pub(crate) fn parse_error(message: &str) -> QueryError {
    QueryError::Parse {
        message: format!("sql parser error: {message}"),
    }
}

/// Sorts a DataFusion error into the query's fault or the engine's.
pub(crate) fn classify(error: &DataFusionError, phase: Phase) -> QueryError {
    let message = error.strip_backtrace();
    match error.find_root() {
        DataFusionError::SQL(parser_error, _) => QueryError::Parse {
            message: parser_error.to_string(),
        },
        DataFusionError::ResourcesExhausted(_) => QueryError::TooLarge { message },
        DataFusionError::ArrowError(arrow, _) => match arrow.as_ref() {
            ArrowError::MemoryError(_) => QueryError::TooLarge { message },
            ArrowError::DivideByZero
            | ArrowError::CastError(_)
            | ArrowError::ComputeError(_)
            | ArrowError::ArithmeticOverflow(_)
            | ArrowError::InvalidArgumentError(_)
            | ArrowError::ParseError(_) => query_fault(message, phase),
            _ => QueryError::Execution {
                message,
                client_fault: false,
            },
        },
        DataFusionError::Internal(_)
        | DataFusionError::IoError(_)
        | DataFusionError::ExecutionJoin(_)
        | DataFusionError::External(_) => QueryError::Execution {
            message,
            client_fault: false,
        },
        _ => query_fault(message, phase),
    }
}

fn query_fault(message: String, phase: Phase) -> QueryError {
    match phase {
        Phase::Plan => QueryError::Plan { message },
        Phase::Execute => QueryError::Execution {
            message,
            client_fault: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_engine_faults() {
        let client = [
            QueryError::Parse {
                message: String::new(),
            },
            QueryError::Plan {
                message: String::new(),
            },
            QueryError::ReadOnly {
                statement: "INSERT".into(),
            },
            QueryError::Timeout {
                limit: Duration::ZERO,
            },
            QueryError::TooLarge {
                message: String::new(),
            },
            QueryError::Execution {
                message: String::new(),
                client_fault: true,
            },
        ];
        assert!(client.iter().all(QueryError::is_client_error));
        assert!(
            !QueryError::Internal {
                message: String::new()
            }
            .is_client_error()
        );
        assert!(
            !QueryError::Execution {
                message: String::new(),
                client_fault: false
            }
            .is_client_error()
        );
    }

    #[test]
    fn refusal_names_the_statement() {
        let e = QueryError::ReadOnly {
            statement: "INSERT".into(),
        };
        assert_eq!(
            e.to_string(),
            "only SELECT queries are allowed; INSERT is refused"
        );
    }

    #[test]
    fn classify_sorts_by_root_cause() {
        let div = DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None)
            .context("while running");
        assert_eq!(
            classify(&div, Phase::Execute),
            QueryError::Execution {
                message: div.strip_backtrace(),
                client_fault: true
            }
        );
        let internal = DataFusionError::Internal("bug".into());
        assert!(!classify(&internal, Phase::Plan).is_client_error());
        let oom = DataFusionError::ResourcesExhausted("sort".into());
        assert!(matches!(
            classify(&oom, Phase::Execute),
            QueryError::TooLarge { .. }
        ));
        let plan = DataFusionError::Plan("table 'x' not found".into());
        assert!(matches!(
            classify(&plan, Phase::Plan),
            QueryError::Plan { .. }
        ));
    }
}
