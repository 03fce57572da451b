//! A limit on how deeply a query's expressions nest.
//!
//! The parser bounds parentheses and subqueries, but a chain like `a OR b OR c ...` parses
//! without recursion into a tree as deep as the chain is long, and DataFusion then walks that
//! tree recursively in places (apache/datafusion#23264). Past some depth that overflows even
//! the query threads' large stacks and aborts the process, so deeper queries are refused
//! before planning. Machine-written SQL meets this with long OR chains; `IN (...)` lists are
//! flat and do not count.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Expr, Visit, Visitor};

/// Deepest expression nesting a query may have.
pub(crate) const MAX_EXPR_DEPTH: usize = 1_000;

/// Whether any expression in `statement` nests deeper than `limit`.
///
/// The walk stops at the first level past the limit, so it never recurses deeper than
/// `limit` itself.
pub(crate) fn exceeds(statement: &DfStatement, limit: usize) -> bool {
    match statement {
        DfStatement::Statement(s) => s.visit(&mut Depth { depth: 0, limit }).is_break(),
        DfStatement::Explain(explain) => exceeds(&explain.statement, limit),
        // Refused before their expressions matter.
        DfStatement::CreateExternalTable(_) | DfStatement::CopyTo(_) | DfStatement::Reset(_) => {
            false
        }
    }
}

struct Depth {
    depth: usize,
    limit: usize,
}

impl Visitor for Depth {
    type Break = ();

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth > self.limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::DFParser;

    use super::*;

    fn parse(sql: &str) -> DfStatement {
        DFParser::parse_sql(sql)
            .expect("parses")
            .pop_front()
            .expect("one statement")
    }

    #[test]
    fn chains_count_their_length_lists_do_not() {
        let chain = format!("select 1 from t where x = 0{}", " or x = 1".repeat(20));
        assert!(exceeds(&parse(&chain), 20));
        assert!(!exceeds(&parse(&chain), 50));
        let list = format!("select 1 from t where x in (0{})", ", 1".repeat(1000));
        assert!(!exceeds(&parse(&list), 5));
    }

    #[test]
    fn explain_is_looked_into() {
        let chain = format!("explain select 1{}", " + 1".repeat(20));
        assert!(exceeds(&parse(&chain), 10));
    }
}
