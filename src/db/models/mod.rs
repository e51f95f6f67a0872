//! One file per table; every query Herald runs is here.

pub mod api_key;
pub mod attempt;
pub mod delivery;
pub mod endpoint;
pub mod event;
pub mod idempotency;
pub mod overview;
pub mod replay;
pub mod session;
pub mod stream;
pub mod ws_ticket;
