//! Read-only SQL over the store, with limits.
//!
//! Every query gets its own DataFusion session over a snapshot of the tables, so a query sees
//! one consistent state and holds no lock while it runs. With a Parquet tier attached, each
//! table is the union of its Parquet files below the tier's watermark and its memory rows from
//! the watermark on ([`crate::archive`]), the watermark read once per query. The limits keep one query from
//! hurting the daemon: statements that write are refused, the result is capped at
//! [`QueryLimits::max_rows`], the run at [`QueryLimits::timeout`] (the query task is then
//! aborted, which drops its streams and cancels the work), operator memory at
//! [`QueryLimits::max_memory_bytes`] with no spilling to disk, expression nesting at a depth
//! the stack can take, and parallelism at the engine's query threads
//! ([`StoreConfig::query_threads`](crate::StoreConfig)).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::DFParserBuilder;
use serde::Serialize;
use tokio::task::JoinError;

mod error;

pub use error::QueryError;
use error::{Phase, classify, parse_error};

use crate::archive::table::tiered;
use crate::depth;
use crate::read_only::refused_kind;
use crate::render::json_rows;
use crate::store::{Store, TableSnapshot, TierSnapshot};

/// How deeply the parser may nest expressions and subqueries (DataFusion's default).
const PARSER_RECURSION_LIMIT: usize = 50;

/// Bounds on one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryLimits {
    /// Rows returned at most; more set [`QueryResult::truncated`]. Default 10 000.
    pub max_rows: usize,
    /// Wall time for parsing, planning and running. Default 10 s.
    pub timeout: Duration,
    /// Memory that sorts, joins and aggregations may hold; beyond it the query fails with
    /// [`QueryError::TooLarge`]. Default 256 MiB.
    pub max_memory_bytes: usize,
    /// Longest SQL text accepted. Default 64 KiB.
    pub max_sql_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_rows: 10_000,
            timeout: Duration::from_secs(10),
            max_memory_bytes: 256 << 20,
            max_sql_bytes: 64 << 10,
        }
    }
}

/// The answer to a query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryResult {
    /// Column names, in order (not necessarily unique: a join can repeat one).
    pub columns: Vec<String>,
    /// Rows, each one JSON value per column, rendered by arrow's JSON writer (timestamps as
    /// RFC 3339 strings, structs as objects, lists as arrays).
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Whether the query had more rows than [`QueryLimits::max_rows`].
    pub truncated: bool,
    /// Time from the call to the rendered result.
    pub elapsed_ms: u64,
}

impl Store {
    /// Runs one read-only SQL statement over the tables as they are now.
    ///
    /// Tables are named by [`RecordKind::table_name`](fleetmind_schema::RecordKind) and all
    /// exist, empty or not; `information_schema` and `SHOW TABLES` work. With a Parquet tier
    /// attached, each counts every row once across the two tiers. Nested fields are
    /// reached with `cpu['busy_frac']` and list elements with `per_cpu[1]`. The work runs on
    /// the engine's own query threads; dropping the returned future cancels it.
    ///
    /// # Panics
    ///
    /// If awaited outside a Tokio runtime with the time driver enabled (the timeout needs it;
    /// the daemon's runtime has it).
    ///
    /// # Errors
    ///
    /// [`QueryError::Parse`] and [`QueryError::Plan`] for SQL that does not parse or plan,
    /// [`QueryError::ReadOnly`] for a statement that is not a query, [`QueryError::Timeout`]
    /// and [`QueryError::TooLarge`] when a limit is hit, [`QueryError::Execution`] when the
    /// run fails, [`QueryError::Internal`] when the engine fails (DataFusion panicked, or the
    /// query threads could not start).
    pub async fn query(&self, sql: &str, limits: &QueryLimits) -> Result<QueryResult, QueryError> {
        let started = Instant::now();
        if sql.len() > limits.max_sql_bytes {
            return Err(QueryError::TooLarge {
                message: format!(
                    "query text is {} bytes, over the limit of {} bytes",
                    sql.len(),
                    limits.max_sql_bytes
                ),
            });
        }
        let slot = self
            .query_slot()
            .map_err(|limit| QueryError::Busy { limit })?;
        // The watermark first: a commit between the two reads leaves rows in memory that the
        // older watermark still assigns to memory.
        let tier = self.tier_snapshot();
        let tables = self.snapshot();
        let partitions = self.config().query_threads.max(1);
        let (sql, limits) = (sql.to_owned(), limits.clone());
        let timeout = limits.timeout;
        let work = async move {
            // The slot is released when the work itself ends, not when the caller gives up.
            let _slot = slot;
            run(tables, tier, &sql, &limits, partitions).await
        };
        // The clock runs here, on the caller's runtime, so the answer comes on time even while
        // the query threads are inside a long stretch of DataFusion work that does not yield
        // (a cross join emits many batches per input batch); the task is aborted at its next
        // yield.
        let outcome = tokio::time::timeout(timeout, self.executor().run(work)).await;
        let (columns, rows, truncated) = match outcome {
            Ok(Ok(Ok(result))) => result?,
            Err(_elapsed) => return Err(QueryError::Timeout { limit: timeout }),
            Ok(Ok(Err(join_error))) => {
                let message = panic_message(join_error);
                tracing::error!(%message, "query failed inside the engine");
                return Err(QueryError::Internal { message });
            }
            Ok(Err(io)) => {
                return Err(QueryError::Internal {
                    message: format!("cannot start the query threads: {io}"),
                });
            }
        };
        Ok(QueryResult {
            columns,
            rows,
            truncated,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// What a failed query task says about itself.
fn panic_message(error: JoinError) -> String {
    if !error.is_panic() {
        return error.to_string();
    }
    let panic = error.into_panic();
    panic
        .downcast_ref::<&str>()
        .map(ToString::to_string)
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the query panicked".into())
}

type Rows = (Vec<String>, Vec<Vec<serde_json::Value>>, bool);

/// Parses, checks, plans and runs `sql` over `tables`.
async fn run(
    tables: Vec<TableSnapshot>,
    tier: Option<TierSnapshot>,
    sql: &str,
    limits: &QueryLimits,
    partitions: usize,
) -> Result<Rows, QueryError> {
    let ctx = session(tables, tier, limits, partitions)?;

    let mut statements = DFParserBuilder::new(sql)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .build()
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| classify(&e, Phase::Plan))?;
    let statement = match (statements.pop_front(), statements.is_empty()) {
        (Some(statement), true) => statement,
        (None, _) => return Err(parse_error("no SQL statement was given")),
        (Some(_), false) => return Err(parse_error("only one SQL statement is allowed")),
    };
    if let Some(statement) = refused_kind(&statement) {
        return Err(QueryError::ReadOnly { statement });
    }
    if depth::exceeds(&statement, depth::MAX_EXPR_DEPTH) {
        return Err(QueryError::TooLarge {
            message: format!(
                "expressions nest deeper than {} levels; write long OR chains as IN lists",
                depth::MAX_EXPR_DEPTH
            ),
        });
    }

    let state = ctx.state();
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(|e| classify(&e, Phase::Plan))?;
    // Second line: DataFusion's own check on the plan, should the gate above miss a kind.
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| QueryError::ReadOnly {
            statement: e.message().into_owned(),
        })?;

    // EXPLAIN must stay the root of its plan; its output is a few rows anyway.
    let limit_plan = !matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_));
    let fetch = limits.max_rows.saturating_add(1);
    let frame = ctx
        .execute_logical_plan(plan)
        .await
        .and_then(|df| {
            if limit_plan {
                df.limit(0, Some(fetch))
            } else {
                Ok(df)
            }
        })
        .map_err(|e| classify(&e, Phase::Plan))?;
    let columns = frame
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let batches = frame
        .collect()
        .await
        .map_err(|e| classify(&e, Phase::Execute))?;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let rows = json_rows(&batches, limits.max_rows).map_err(|e| QueryError::Internal {
        message: format!("cannot render the result as JSON: {e}"),
    })?;
    Ok((columns, rows, total > limits.max_rows))
}

/// A fresh session with the tables registered and the limits applied.
fn session(
    tables: Vec<TableSnapshot>,
    tier: Option<TierSnapshot>,
    limits: &QueryLimits,
    partitions: usize,
) -> Result<SessionContext, QueryError> {
    let engine = |e: DataFusionError| QueryError::Internal {
        message: e.strip_backtrace(),
    };
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.max_memory_bytes, 1.0)
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()
        .map_err(engine)?;
    let config = SessionConfig::new()
        .with_target_partitions(partitions)
        .with_information_schema(true);
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    let ctx = SessionContext::new_with_state(state);
    for table in tables {
        let memory: Arc<dyn TableProvider> = Arc::new(
            MemTable::try_new(Arc::clone(&table.schema), deal(table.batches, partitions))
                .map_err(engine)?,
        );
        let provider = match &tier {
            Some(tier) => tiered(
                table.name,
                &table.schema,
                memory,
                tier.root.join(table.name),
                tier.watermark,
            )
            .map_err(engine)?,
            None => memory,
        };
        ctx.register_table(table.name, provider).map_err(engine)?;
    }
    Ok(ctx)
}

/// Batches dealt round-robin into `n` partitions (at least one, maybe empty, as `MemTable`
/// wants).
fn deal(batches: Vec<RecordBatch>, n: usize) -> Vec<Vec<RecordBatch>> {
    let n = n.max(1);
    let mut parts = vec![Vec::new(); n];
    for (i, batch) in batches.into_iter().enumerate() {
        parts[i % n].push(batch);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_dealt_round_robin() {
        assert_eq!(deal(Vec::new(), 2).len(), 2);
        assert_eq!(deal(Vec::new(), 0).len(), 1);
    }
}
