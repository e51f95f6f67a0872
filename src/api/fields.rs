//! Reading JSON objects field by field, so that each wrong field is a `422` naming it.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// A request body's fields, checked against the names a resource accepts.
#[derive(Debug)]
pub struct Fields(Map<String, Value>);

impl Fields {
    /// The body must be an object holding only `allowed` fields: a misspelt field is an
    /// error rather than silently ignored.
    pub fn new(body: Value, allowed: &[&str]) -> Result<Self, ApiError> {
        let Value::Object(map) = body else {
            return Err(ApiError::Malformed("the body must be a JSON object".into()));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::invalid(
                unknown.clone(),
                format!("is not a known field (known: {})", allowed.join(", ")),
            ));
        }
        Ok(Self(map))
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// A field's raw value.
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }

    /// A string field; `None` when absent.
    pub fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid(name, "must be a string")),
        }
    }

    /// An array of strings; `None` when absent.
    pub fn strings(&self, name: &str, max: usize) -> Result<Option<Vec<String>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) if items.len() <= max => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        ApiError::invalid(format!("{name}[{i}]"), "must be a string")
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(Value::Array(_)) => Err(ApiError::invalid(
                name,
                format!("must hold at most {max} items"),
            )),
            Some(_) => Err(ApiError::invalid(name, "must be an array of strings")),
        }
    }

    /// A boolean; `None` when absent.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::invalid(name, "must be true or false")),
        }
    }

    /// An integer in `min..=max`; `None` when absent, `Some(None)` when `null`.
    pub fn nullable_int(
        &self,
        name: &str,
        min: i64,
        max: i64,
    ) -> Result<Option<Option<i32>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => v
                .as_i64()
                .filter(|n| (min..=max).contains(n))
                .and_then(|n| i32::try_from(n).ok())
                .map(|n| Some(Some(n)))
                .ok_or_else(|| {
                    ApiError::invalid(name, format!("must be a whole number from {min} to {max}"))
                }),
        }
    }

    /// An object whose values are strings; `None` when absent.
    pub fn string_map(&self, name: &str) -> Result<Option<Vec<(String, String)>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|s| (k.clone(), s.to_owned()))
                        .ok_or_else(|| ApiError::invalid(format!("{name}.{k}"), "must be a string"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(ApiError::invalid(
                name,
                "must be an object of header names to values",
            )),
        }
    }
}
