//! Herald's integration tests: one binary, every test with its own app and database.
//!
//! The database server is `DATABASE_URL` when set, otherwise the same embedded PostgreSQL
//! that `herald serve` uses, started once under `target/` and reused across runs.

#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly, as they should"
)]

mod browser;
mod console;
mod crash;
mod embedded;
mod endpoints;
mod events;
mod faults;
mod fill;
mod health;
mod helpers;
mod hostile;
mod idempotency;
mod keys;
mod logs;
mod longpoll;
mod openapi;
mod plans;
mod receiver;
mod retention;
mod rollups;
mod sessions;
mod sse;
mod streams;
mod throttle;
mod webhooks;
mod websockets;
