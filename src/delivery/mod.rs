//! The webhook worker: claim due deliveries, send them signed, record what happened, and
//! schedule the next attempt.
//!
//! - `queue`: the deliveries this instance holds claimed (most claimed at insert by its
//!   own ingest), waiting for a free slot.
//! - `worker`: starts what the queue holds within per-endpoint limits, and claims more.
//! - `limits`: those limits (`max_in_flight`, the `rate_limit` token bucket) and how much
//!   of each endpoint's work to hold.
//! - `recorder`: writes finished attempts in batches.
//! - `sender`: the HTTP request (Standard Webhooks format) and the destination guard.
//! - `outcome`: the pure rules that turn an answer into the delivery's next state.

mod limits;
pub mod ops;
pub mod outcome;
pub mod queue;
mod recorder;
pub mod sender;
pub mod signals;
pub mod worker;
