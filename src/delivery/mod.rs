//! The webhook worker: claim due deliveries, send them signed, record what happened, and
//! schedule the next attempt.
//!
//! - `worker`: the claim loop, with per-endpoint in-flight limits and wake-ups.
//! - `sender`: the HTTP request (Standard Webhooks format) and the destination guard.
//! - `outcome`: the pure rules that turn an answer into the delivery's next state.

pub mod outcome;
pub mod sender;
pub mod worker;
