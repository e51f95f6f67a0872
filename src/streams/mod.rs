//! Held requests: long-poll and SSE, and how they learn that a stream changed.
//!
//! - `hub`: the waiters of this instance, per stream. When a stream changes, one read
//!   serves every waiter of that stream.
//! - `notify`: tells the hubs that streams changed, in this instance at once and in other
//!   instances through coalesced `NOTIFY`s sent after commit.
//! - `listener`: a dedicated `LISTEN` connection that turns other instances' `NOTIFY`s
//!   into hints, plus the slow fallback check that bounds the delay when a hint is lost.
//! - `disconnect`: noticing that a held request's client went away.
//! - `holds`: held requests by API key, ended when their key is deleted.

pub mod disconnect;
pub mod event_json;
pub mod holds;
pub mod hub;
pub mod listener;
pub mod notify;
pub mod presence;

/// The channel Herald's stream-change `NOTIFY`s use.
pub const CHANNEL: &str = "herald_streams";
/// The channel that tells other instances' webhook workers that deliveries are due; the
/// payload is the sending instance's id.
pub const DELIVERIES_CHANNEL: &str = "herald_deliveries";
