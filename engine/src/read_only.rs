//! The read-only gate: which parsed statements a query may be.
//!
//! The SQL console is for asking questions. Anything that writes (INSERT, COPY ... TO a file,
//! CREATE [EXTERNAL] TABLE, SELECT INTO), changes the session (SET) or manages transactions is
//! refused here, on the parsed statement and before planning, so that no planner side effect
//! can happen; DataFusion's own `SQLOptions` check on the logical plan is a second line behind
//! this one. The refusal names the statement kind so the operator sees what was refused.

use std::fmt::{self, Write as _};

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Query, SetExpr, Statement};

/// The name of the statement kind if `statement` is refused, `None` if it only reads.
pub(crate) fn refused_kind(statement: &DfStatement) -> Option<String> {
    match statement {
        DfStatement::Statement(s) => refused_sql_kind(s),
        DfStatement::Explain(explain) => refused_kind(&explain.statement),
        DfStatement::CreateExternalTable(_) => Some("CREATE EXTERNAL TABLE".into()),
        DfStatement::CopyTo(_) => Some("COPY".into()),
        DfStatement::Reset(_) => Some("RESET".into()),
    }
}

fn refused_sql_kind(statement: &Statement) -> Option<String> {
    match statement {
        Statement::Query(q) => refused_query_kind(q),
        Statement::Explain { statement, .. } => refused_sql_kind(statement),
        Statement::ExplainTable { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowFunctions { .. } => None,
        other => Some(kind_name(other)),
    }
}

/// Queries can hide writes: `WITH ... INSERT`, a data-modifying CTE, `SELECT ... INTO t`.
fn refused_query_kind(query: &Query) -> Option<String> {
    if let Some(with) = &query.with {
        for cte in &with.cte_tables {
            if let Some(kind) = refused_query_kind(&cte.query) {
                return Some(kind);
            }
        }
    }
    refused_set_expr_kind(&query.body)
}

fn refused_set_expr_kind(body: &SetExpr) -> Option<String> {
    match body {
        SetExpr::Select(select) if select.into.is_some() => Some("SELECT INTO".into()),
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => None,
        SetExpr::Query(q) => refused_query_kind(q),
        SetExpr::SetOperation { left, right, .. } => {
            refused_set_expr_kind(left).or_else(|| refused_set_expr_kind(right))
        }
        SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
            Some(kind_name(s))
        }
    }
}

/// `CreateTable` -> `CREATE TABLE`: the variant name of the statement, in SQL words.
///
/// Taken from the `Debug` form, whose first word is the variant name; formatting stops at
/// the end of that word, so a statement with a huge literal costs nothing to name.
fn kind_name(statement: &Statement) -> String {
    let mut name = VariantName(String::new());
    // The writer stops the formatting with an error once it has the name.
    let _ = write!(name, "{statement:?}");
    let mut words = String::new();
    for (i, c) in name.0.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_uppercase());
    }
    if words.is_empty() {
        "this statement".into()
    } else {
        words
    }
}

/// Collects leading identifier characters, then refuses more input.
struct VariantName(String);

impl fmt::Write for VariantName {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                self.0.push(c);
            } else {
                return Err(fmt::Error);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::DFParser;

    use super::*;

    fn refused(sql: &str) -> Option<String> {
        let mut statements = DFParser::parse_sql(sql).expect("parses");
        assert_eq!(statements.len(), 1);
        refused_kind(&statements.pop_front().expect("one statement"))
    }

    #[test]
    fn reads_pass() {
        for sql in [
            "select 1",
            "with t as (select 1 as x) select x from t",
            "select 1 union all select 2",
            "values (1)",
            "explain select 1",
            "explain analyze select 1",
            "describe host_samples",
            "show tables",
            "show columns from host_samples",
            "show all",
        ] {
            assert_eq!(refused(sql), None, "{sql}");
        }
    }

    #[test]
    fn writes_are_named() {
        for (sql, kind) in [
            ("insert into t values (1)", "INSERT"),
            ("create table t (x int)", "CREATE TABLE"),
            ("create view v as select 1", "CREATE VIEW"),
            ("drop table t", "DROP"),
            ("set datafusion.execution.batch_size = 1", "SET"),
            ("copy (select 1) to '/tmp/x.csv'", "COPY"),
            (
                "create external table t stored as csv location '/tmp/x.csv'",
                "CREATE EXTERNAL TABLE",
            ),
            ("explain analyze copy (select 1) to '/tmp/x.csv'", "COPY"),
            ("explain insert into t values (1)", "INSERT"),
            ("select 1 into t", "SELECT INTO"),
            (
                "with t as (select 1) insert into u select * from t",
                "INSERT",
            ),
            ("delete from t", "DELETE"),
            ("update t set x = 1", "UPDATE"),
            ("truncate table t", "TRUNCATE"),
            ("begin", "START TRANSACTION"),
            ("reset datafusion.execution.batch_size", "RESET"),
        ] {
            assert_eq!(refused(sql).as_deref(), Some(kind), "{sql}");
        }
    }
}
