//! Per-endpoint limits as the worker applies them: `max_in_flight` and `rate_limit` (a
//! token bucket), counted on this instance, and how much of an endpoint's work to hold
//! (about [`HOLD_AHEAD`] by its recent attempt times).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::queue::Ready;
use super::worker::HOLD_AHEAD;
use crate::db::models::delivery::Claimed;

/// Most deliveries held per endpoint, whatever its speed.
const MAX_HOLD: usize = 4096;

/// A per-endpoint token bucket for `rate_limit`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    tokens: f64,
    rate: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        Self {
            tokens: rate.max(1.0),
            rate,
            refilled: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.rate)
            .min(self.rate.max(1.0));
        self.refilled = now;
    }
}

/// What the worker knows of an endpoint it has attempted.
#[derive(Debug, Clone)]
pub(super) struct EndpointState {
    pub(super) in_flight: usize,
    pub(super) max_in_flight: usize,
    bucket: Option<Bucket>,
    /// Recent attempt time (exponentially weighted), once there is one.
    recent: Option<Duration>,
}

impl EndpointState {
    pub(super) fn new(claimed: &Claimed) -> Self {
        let mut state = Self {
            in_flight: 0,
            max_in_flight: 1,
            bucket: None,
            recent: None,
        };
        state.update(claimed);
        state
    }

    /// Takes the limits the latest claim read.
    pub(super) fn update(&mut self, claimed: &Claimed) {
        self.max_in_flight = usize::try_from(claimed.max_in_flight.max(1)).unwrap_or(1);
        match (claimed.rate_limit, &mut self.bucket) {
            (None, _) => self.bucket = None,
            (Some(rate), Some(bucket)) => bucket.rate = f64::from(rate),
            (Some(rate), None) => self.bucket = Some(Bucket::new(f64::from(rate))),
        }
    }

    /// Whether one more may start now (taking a rate token if so).
    pub(super) fn try_start(&mut self) -> bool {
        if self.in_flight >= self.max_in_flight {
            return false;
        }
        if let Some(bucket) = &mut self.bucket {
            bucket.refill();
            if bucket.tokens < 1.0 {
                return false;
            }
            bucket.tokens -= 1.0;
        }
        self.in_flight += 1;
        true
    }

    /// How many of its deliveries the worker should hold (in flight and waiting):
    /// `max_in_flight`, plus [`HOLD_AHEAD`] of work at its recent speed; for a
    /// rate-limited endpoint no more than a second of its rate.
    pub(super) fn hold(&self) -> usize {
        let ahead = self.recent.map_or(0.0, |recent| {
            HOLD_AHEAD.as_secs_f64() / recent.as_secs_f64().max(1e-4) * self.max_in_flight as f64
        });
        let hold = (self.max_in_flight as f64 + ahead).min(MAX_HOLD as f64) as usize;
        match self.bucket {
            Some(bucket) => hold.min(bucket.rate.ceil().max(1.0) as usize),
            None => hold,
        }
    }

    pub(super) fn finished(&mut self, took: Duration) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.recent = Some(match self.recent {
            Some(recent) => recent.mul_f64(0.8) + took.mul_f64(0.2),
            None => took,
        });
    }
}

/// Per endpoint the worker knows, how many more of its deliveries it should take on: what
/// it should hold ([`EndpointState::hold`]) less what is in flight and waiting in `items`.
pub(super) fn rooms(
    items: &std::collections::VecDeque<Ready>,
    endpoints: &HashMap<Uuid, EndpointState>,
) -> Vec<(Uuid, usize)> {
    let mut waiting: HashMap<Uuid, usize> = HashMap::new();
    for ready in items {
        *waiting.entry(ready.claimed.endpoint_id).or_default() += 1;
    }
    endpoints
        .iter()
        .map(|(id, state)| {
            let held = state.in_flight + waiting.get(id).copied().unwrap_or(0);
            (*id, state.hold().saturating_sub(held))
        })
        .collect()
}

/// What a claim that asked for `rooms` (per endpoint the worker knew; others by their
/// `max_in_flight`, as the claim query does) says of each endpoint it could have taken
/// from: `true` when it took exactly the endpoint's room, so more of its deliveries are
/// probably due; `false` when it took fewer. Endpoints asked with no room are left out:
/// the claim says nothing of them.
pub(super) fn claim_verdicts(
    batch: &[Claimed],
    endpoints: &[Uuid],
    rooms: &[i32],
) -> Vec<(Uuid, bool)> {
    let mut claimed: HashMap<Uuid, (usize, i32)> = HashMap::new();
    for c in batch {
        claimed
            .entry(c.endpoint_id)
            .or_insert((0, c.max_in_flight))
            .0 += 1;
    }
    let mut verdicts: Vec<(Uuid, bool)> = endpoints
        .iter()
        .zip(rooms)
        .filter(|(_, room)| **room > 0)
        .map(|(id, room)| {
            let count = claimed.get(id).map_or(0, |(count, _)| *count);
            (*id, i32::try_from(count).is_ok_and(|count| count >= *room))
        })
        .collect();
    verdicts.extend(
        claimed
            .into_iter()
            .filter(|(id, _)| !endpoints.contains(id))
            .map(|(id, (count, max_in_flight))| {
                (
                    id,
                    i32::try_from(count).is_ok_and(|count| count >= max_in_flight),
                )
            }),
    );
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(endpoint_id: Uuid, max_in_flight: i32) -> Claimed {
        let mut c = Claimed::example();
        c.endpoint_id = endpoint_id;
        c.max_in_flight = max_in_flight;
        c
    }

    fn sorted(mut v: Vec<(Uuid, bool)>) -> Vec<(Uuid, bool)> {
        v.sort();
        v
    }

    #[test]
    fn a_claim_says_which_endpoints_it_cut_short() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        // An endpoint the worker did not know yet: its room was its max_in_flight.
        let ten: Vec<Claimed> = (0..10).map(|_| claimed(a, 10)).collect();
        assert_eq!(claim_verdicts(&ten, &[], &[]), vec![(a, true)]);
        assert_eq!(claim_verdicts(&ten[..9], &[], &[]), vec![(a, false)]);
        // A known endpoint's room is the one the claim was given.
        assert_eq!(claim_verdicts(&ten[..4], &[a], &[4]), vec![(a, true)]);
        assert_eq!(claim_verdicts(&ten[..4], &[a], &[5]), vec![(a, false)]);
        assert_eq!(claim_verdicts(&[], &[a], &[5]), vec![(a, false)]);
        // Asked with no room: nothing is known of it.
        assert_eq!(claim_verdicts(&[], &[a], &[0]), vec![]);
        let mut mixed = ten[..3].to_vec();
        mixed.push(claimed(b, 1));
        assert_eq!(
            sorted(claim_verdicts(&mixed, &[a], &[8])),
            sorted(vec![(a, false), (b, true)])
        );
    }
}
