//! The query side of the Parquet tier: each table name resolves to one view over both tiers.
//!
//! ```text
//! vm_samples := SELECT * FROM vm_samples_parquet WHERE ts <  W
//!               UNION ALL
//!               SELECT * FROM vm_samples_memory  WHERE ts >= W
//! ```
//!
//! The view is a DataFusion [`ViewTable`] over two providers that are not registered in the
//! session (so `SHOW TABLES` and `information_schema` still list one table per kind), and the
//! optimizer pushes the query's own filters and projections into both sides. The Parquet side
//! ([`ArchivedTable`]) turns the pushed-down bounds on `ts` (including `ts < W`) into the hour
//! partitions worth opening and hands only those directories to a DataFusion `ListingTable`,
//! which prunes further by the row groups' `ts` statistics.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    Between, BinaryExpr, Cast, Expr, LogicalPlanBuilder, Operator, TableProviderFilterPushDown,
    TableType, TryCast, col, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use fleetmind_schema::TimestampMs;

use super::layout;

/// Name of the time column every record kind has.
const TS: &str = "ts";

/// The table a query sees for one kind when the archive serves part of it: Parquet below the
/// watermark, `memory` from it on.
///
/// # Errors
///
/// Only if the schema has no millisecond `ts` column (a schema bug) or DataFusion refuses the
/// plan.
pub(crate) fn tiered(
    name: &str,
    schema: &SchemaRef,
    memory: Arc<dyn TableProvider>,
    table_dir: PathBuf,
    watermark: TimestampMs,
) -> Result<Arc<dyn TableProvider>> {
    let cut = match schema.field_with_name(TS)?.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, tz) => lit(ScalarValue::TimestampMillisecond(
            Some(watermark),
            tz.clone(),
        )),
        other => {
            return Err(DataFusionError::Internal(format!(
                "table {name} has a `ts` column of type {other}, not milliseconds"
            )));
        }
    };
    let archived: Arc<dyn TableProvider> = Arc::new(ArchivedTable {
        schema: Arc::clone(schema),
        dir: table_dir,
    });
    let older = LogicalPlanBuilder::scan(
        format!("{name}_parquet"),
        provider_as_source(archived),
        None,
    )?
    .filter(col(TS).lt(cut.clone()))?
    .build()?;
    let recent =
        LogicalPlanBuilder::scan(format!("{name}_memory"), provider_as_source(memory), None)?
            .filter(col(TS).gt_eq(cut))?
            .build()?;
    let plan = LogicalPlanBuilder::from(older).union(recent)?.build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}

/// One table's Parquet files.
#[derive(Debug)]
struct ArchivedTable {
    schema: SchemaRef,
    dir: PathBuf,
}

// `TableProvider::scan` is an `async_trait` method; this is its expansion, written out so the
// engine needs no proc-macro crate for one impl.
impl TableProvider for ArchivedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used to choose files and row groups; the rows are still filtered above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    fn scan<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        state: &'life1 dyn Session,
        projection: Option<&'life2 Vec<usize>>,
        filters: &'life3 [Expr],
        limit: Option<usize>,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<dyn ExecutionPlan>>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.scan_partitions(state, projection, filters, limit))
    }
}

impl ArchivedTable {
    async fn scan_partitions(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (lo, hi) = ts_bounds(filters);
        let partitions = layout::partitions(&self.dir, lo, hi).map_err(|e| {
            DataFusionError::External(
                format!(
                    "cannot list the Parquet partitions in {}: {e}",
                    self.dir.display()
                )
                .into(),
            )
        })?;
        if partitions.is_empty() {
            let schema = match projection {
                Some(columns) => Arc::new(self.schema.project(columns)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let urls = partitions
            .iter()
            .map(|p| directory_url(&p.path))
            .collect::<Result<Vec<_>>>()?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(Arc::clone(&self.schema));
        ListingTable::try_new(config)?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// A directory as a listing URL (the trailing slash makes it a collection).
fn directory_url(path: &std::path::Path) -> Result<ListingTableUrl> {
    let text = path.to_str().ok_or_else(|| {
        DataFusionError::Execution(format!(
            "the Parquet directory {} is not valid UTF-8",
            path.display()
        ))
    })?;
    if text.contains(['*', '?', '[']) {
        return Err(DataFusionError::Execution(format!(
            "the Parquet directory {text} contains '*', '?' or '[', which DataFusion reads as a \
             glob; use a data directory without them"
        )));
    }
    ListingTableUrl::parse(format!("{text}/"))
}

/// The range of `ts` (both ends inclusive, widened where a unit is rounded) that rows passing
/// all of `filters` can have; `(MIN, MAX)` when the filters say nothing about `ts`.
pub(crate) fn ts_bounds(filters: &[Expr]) -> (TimestampMs, TimestampMs) {
    let mut bounds = (TimestampMs::MIN, TimestampMs::MAX);
    for filter in filters {
        narrow(filter, &mut bounds);
    }
    bounds
}

fn narrow(expr: &Expr, bounds: &mut (TimestampMs, TimestampMs)) {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            narrow(left, bounds);
            narrow(right, bounds);
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (op, value) = if is_ts(left) {
                (*op, millis(right))
            } else if is_ts(right) {
                match op.swap() {
                    Some(op) => (op, millis(left)),
                    None => return,
                }
            } else {
                return;
            };
            let Some((floor, ceil)) = value else {
                return;
            };
            match op {
                Operator::Gt | Operator::GtEq => bounds.0 = bounds.0.max(floor),
                Operator::Lt | Operator::LtEq => bounds.1 = bounds.1.min(ceil),
                Operator::Eq => {
                    bounds.0 = bounds.0.max(floor);
                    bounds.1 = bounds.1.min(ceil);
                }
                _ => {}
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_ts(expr) => {
            if let Some((floor, _)) = millis(low) {
                bounds.0 = bounds.0.max(floor);
            }
            if let Some((_, ceil)) = millis(high) {
                bounds.1 = bounds.1.min(ceil);
            }
        }
        _ => {}
    }
}

/// The `ts` column, possibly cast to another timestamp unit.
fn is_ts(expr: &Expr) -> bool {
    match expr {
        Expr::Column(c) => c.name == TS,
        Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field }) => {
            matches!(field.data_type(), DataType::Timestamp(..)) && is_ts(expr)
        }
        _ => false,
    }
}

/// A timestamp literal as milliseconds, rounded down and up (widened by a second for
/// second-literals, whose comparisons may go through a truncating cast).
fn millis(expr: &Expr) -> Option<(TimestampMs, TimestampMs)> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    let per = |v: i64, per_ms: i64| (v.div_euclid(per_ms), v.div_euclid(per_ms) + 1);
    match value {
        ScalarValue::TimestampSecond(Some(v), _) => {
            let ms = v.saturating_mul(1000);
            Some((ms.saturating_sub(1000), ms.saturating_add(1000)))
        }
        ScalarValue::TimestampMillisecond(Some(v), _) => Some((*v, *v)),
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(per(*v, 1000)),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(per(*v, 1_000_000)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: i64) -> Expr {
        lit(ScalarValue::TimestampMillisecond(
            Some(v),
            Some("+00:00".into()),
        ))
    }

    #[test]
    fn bounds_come_from_comparisons_on_ts() {
        let ts = || col(TS);
        assert_eq!(ts_bounds(&[]), (i64::MIN, i64::MAX));
        assert_eq!(ts_bounds(&[ts().gt_eq(ms(10)), ts().lt(ms(20))]), (10, 20));
        assert_eq!(
            ts_bounds(&[ts().gt(ms(10)).and(ts().lt_eq(ms(20)))]),
            (10, 20)
        );
        // Literal on the left: 30 > ts is ts < 30.
        assert_eq!(ts_bounds(&[ms(30).gt(ts())]), (i64::MIN, 30));
        assert_eq!(ts_bounds(&[ts().eq(ms(7))]), (7, 7));
        assert_eq!(ts_bounds(&[ts().between(ms(5), ms(9))]), (5, 9));
        let ns = lit(ScalarValue::TimestampNanosecond(Some(1_500_000), None));
        assert_eq!(ts_bounds(&[ts().gt(ns)]), (1, i64::MAX));
    }

    #[test]
    fn other_filters_leave_the_range_open() {
        let filters = [
            col("host").eq(lit("a")),
            col(TS).gt(ms(1)).or(col(TS).lt(ms(0))),
            col(TS).not_between(ms(5), ms(9)),
            col(TS).not_eq(ms(3)),
        ];
        assert_eq!(ts_bounds(&filters), (i64::MIN, i64::MAX));
    }
}
