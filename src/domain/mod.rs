//! Pure types and rules: no actix, no diesel, no I/O.
//!
//! Everything that arrives from outside is parsed into one of these types at the edge
//! (`StreamName::parse`, `EventType::parse`, ...), so the rest of the code can rely on the
//! guarantee the type carries instead of re-checking strings.

mod api_key;
pub mod destination;
mod endpoint_url;
mod event_type;
pub mod retry;
pub mod signature;
mod stream_name;
mod stream_pattern;
pub mod units;

pub use api_key::{ApiKeySecret, Role, StreamPrefix};
pub use endpoint_url::EndpointUrl;
pub use event_type::EventType;
pub use stream_name::{RESERVED_PREFIX, StreamName};
pub use stream_pattern::StreamPattern;
