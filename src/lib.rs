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
//! 3. After the commit, `streams::notify` wakes this instance's `streams::hub` at once and
//!    tells other instances through a coalesced `NOTIFY` (`streams::listener` receives it).
//! 4. Readers page through a stream with `GET /v1/streams/{stream}/events?after=N`
//!    (`api::streams`), reading `seq > N` in order; with nothing new, the request is held
//!    in the hub until an event commits (long-poll), or streamed over SSE (`api::sse`).
//!
//! `startup` wires it together; `config` reads the settings once; `db` holds the pool, the
//! migrations, the embedded PostgreSQL and every query; `error` is the API's one error type.

pub mod api;
pub mod auth;
pub mod bench;
pub mod config;
pub mod db;
pub mod delivery;
pub mod domain;
pub mod error;
pub mod ingest;
pub mod metrics;
pub mod partitions;
pub mod periodic;
pub mod replay_search;
pub mod retention;
pub mod rollup;
pub mod startup;
pub mod state;
pub mod streams;
pub mod telemetry;
pub mod throttle;
