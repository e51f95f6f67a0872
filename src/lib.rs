//! Herald: durable notification delivery on PostgreSQL.
//!
//! The flow of an event:
//!
//! 1. `api::events` parses and validates a `POST /v1/events` body into domain types
//!    (`domain::StreamName`, `domain::EventType`, a raw JSON payload) and authorises the
//!    caller (`auth::Principal`).
//! 2. `ingest` group-commits it: several requests' events go into one transaction, which
//!    advances each stream's counter row (`db::models::event::insert_all`) so that seq order
//!    is commit order. The request is answered only after that commit.
//! 3. Readers page through a stream with `GET /v1/streams/{stream}/events?after=N`
//!    (`api::streams`), reading `seq > N` in order.
//!
//! `startup` wires it together; `config` reads the settings once; `db` holds the pool, the
//! migrations, the embedded PostgreSQL and every query; `error` is the API's one error type.

pub mod api;
pub mod auth;
pub mod bench;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod ingest;
pub mod startup;
pub mod telemetry;
