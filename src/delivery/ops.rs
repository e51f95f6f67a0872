//! What Herald publishes on `herald:ops` about webhook delivery (docs/webhooks.md): typed,
//! so that the payloads a consumer relies on are defined once.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// An operational event.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum OpsEvent {
    /// A delivery ran out of attempts.
    DeliveryFailed {
        /// The delivery.
        delivery_id: Uuid,
        /// Its endpoint.
        endpoint_id: Uuid,
        /// Its event.
        event_id: Uuid,
        /// The event's type.
        event_type: String,
        /// The event's stream.
        stream: String,
        /// Attempts made.
        attempts: i32,
        /// Why the last one failed.
        last_error: Option<String>,
    },
    /// An endpoint was disabled (no success for `HERALD_DISABLE_AFTER`, or a 410).
    EndpointDisabled {
        /// The endpoint.
        endpoint_id: Uuid,
        /// Its URL, when known.
        url: Option<String>,
        /// Why.
        reason: String,
    },
    /// An endpoint that was failing succeeded again.
    EndpointRecovered {
        /// The endpoint.
        endpoint_id: Uuid,
        /// Its URL, when known.
        url: Option<String>,
        /// Since when it had been failing.
        failing_since: DateTime<Utc>,
    },
}

impl OpsEvent {
    /// Its event type.
    pub const fn event_type(&self) -> &'static str {
        match self {
            Self::DeliveryFailed { .. } => "delivery.failed",
            Self::EndpointDisabled { .. } => "endpoint.disabled",
            Self::EndpointRecovered { .. } => "endpoint.recovered",
        }
    }
}
