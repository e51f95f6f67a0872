//! Events as readers see them: the JSON shape every read path answers (`POST` answers,
//! pages, SSE data, webhook-free readers) and, for held readers, that JSON serialized once.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::db::RawJson;
use crate::db::models::event::Event;

/// An event as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventDto {
    /// Herald's id.
    pub id: Uuid,
    /// Stream.
    pub stream: String,
    /// Type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Position in the stream.
    pub seq: i64,
    /// The producer's JSON.
    #[schema(value_type = Object)]
    pub payload: RawJson,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

impl From<Event> for EventDto {
    fn from(e: Event) -> Self {
        Self {
            id: e.id,
            stream: e.stream,
            event_type: e.event_type,
            seq: e.seq,
            payload: e.payload,
            created_at: e.created_at,
        }
    }
}

/// An event as JSON, serialized once for all the waiters it is sent to.
#[derive(Debug)]
pub struct EventJson {
    /// Its seq.
    pub seq: i64,
    /// Its type (SSE's `event:` line).
    pub event_type: String,
    /// The event as the API shows it.
    pub json: String,
    /// When it was committed.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl EventJson {
    /// Serializes a stored event.
    pub fn new(event: Event) -> Self {
        let seq = event.seq;
        let event_type = event.event_type.clone();
        let created_at = event.created_at;
        let json = serde_json::to_string(&EventDto::from(event)).unwrap_or_default();
        Self {
            seq,
            event_type,
            json,
            created_at,
        }
    }
}
