//! `RawJson`: a JSON value kept as the producer's exact bytes, for `json` columns.

use std::io::Write as _;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Json;
use serde_json::value::RawValue;

/// Valid JSON text, stored and returned byte for byte.
#[derive(Debug, Clone, AsExpression, FromSqlRow, serde::Serialize)]
#[diesel(sql_type = Json)]
#[serde(transparent)]
pub struct RawJson(pub Box<RawValue>);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl ToSql<Json, Pg> for RawJson {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        // The binary form of PostgreSQL's `json` type is its text.
        out.write_all(self.0.get().as_bytes())?;
        Ok(IsNull::No)
    }
}

impl FromSql<Json, Pg> for RawJson {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let text = std::str::from_utf8(value.as_bytes())?;
        Ok(Self(RawValue::from_string(text.to_owned())?))
    }
}
