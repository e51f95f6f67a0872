//! Hand-written SQL that PostgreSQL parses and plans once per connection.
//!
//! diesel never caches `diesel::sql_query` statements: `SqlQuery` marks itself unsafe to
//! cache, because its text may be built at run time. Herald's hot statements (the ingest
//! CTE, the claim, the recorder's batch) are constant strings with array parameters, so
//! the same text is sent on every call; sent uncached, PostgreSQL parsed and planned each
//! of them again on every call, which cost more than running them (see
//! docs/benchmarks.md). [`prepared`] wraps such a query so diesel keeps it in the
//! connection's statement cache, keyed by its text and bind types.
//!
//! Only wrap constant SQL (a `&'static str`, or text built from constants): every distinct
//! text becomes one prepared statement for the life of the connection.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;

/// A query diesel may keep prepared. See the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Prepared<Q>(Q);

/// Marks `query` (a `diesel::sql_query(CONSTANT)` with its binds) as safe to keep prepared.
pub fn prepared<Q>(query: Q) -> Prepared<Q> {
    Prepared(query)
}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    // The one thing this type exists for: `SqlQuery` answers `false` here.
    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    // No static id: the statement cache keys the statement by its SQL text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}
