//! Which other instances are there: an instance that has heard from no other lately is
//! alone, and sends no stream hints (they would reach nobody but its own listener).
//!
//! A new listener says [`HELLO`] on the streams channel as soon as it listens, and an
//! instance serves only once it has heard its own hello come back (so every instance
//! listening has it too); every instance that hears a hello answers [`HERE`], as each does
//! every [`PRESENCE_BEAT`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use uuid::Uuid;

/// How often an instance says it is there (the second line of its announcement).
pub const PRESENCE_BEAT: Duration = Duration::from_secs(5);
/// How long after the last word from another instance this one still notifies.
pub const PRESENCE_TTL: Duration = Duration::from_secs(15);
/// The second line of a new listener's announcement: "I am here; who else is?". Every
/// instance that hears it answers [`HERE`].
pub const HELLO: &str = "hello";
/// The second line of an answer to [`HELLO`], and of the periodic announcement.
pub const HERE: &str = "here";

/// This instance's view of the others, and the announcements it owes them.
#[derive(Debug)]
pub struct Presence {
    instance: Uuid,
    /// When a notification from another instance last arrived.
    others_seen: Mutex<Option<Instant>>,
    /// A [`HELLO`] is due.
    hello: AtomicBool,
    /// A [`HERE`] is due.
    here: AtomicBool,
    /// Whether this instance's own hello has come back to its listener.
    heard_self: watch::Sender<bool>,
}

impl Presence {
    /// The presence of the instance `instance`.
    pub fn new(instance: Uuid) -> Self {
        Self {
            instance,
            others_seen: Mutex::new(None),
            hello: AtomicBool::new(false),
            here: AtomicBool::new(false),
            heard_self: watch::Sender::new(false),
        }
    }

    /// Notes a notification from the instance `from` whose payload's second line is
    /// `second_line`. Returns whether an answer ([`HERE`]) is now due.
    pub fn heard_from(&self, from: Uuid, second_line: Option<&str>) -> bool {
        if from == self.instance {
            if second_line == Some(HELLO) {
                self.heard_self.send_replace(true);
            }
            return false;
        }
        *self
            .others_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        if second_line == Some(HELLO) {
            self.here.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// Makes a [`HELLO`] due (the listener has just started listening).
    pub fn announce(&self) {
        self.hello.store(true, Ordering::Release);
    }

    /// Makes a [`HERE`] due (the periodic beat).
    pub fn beat(&self) {
        self.here.store(true, Ordering::Release);
    }

    /// Waits (up to `timeout`) until this instance's hello has come back through its own
    /// `LISTEN`. Returns whether it did.
    pub async fn wait_announced(&self, timeout: Duration) -> bool {
        let mut heard = self.heard_self.subscribe();
        tokio::time::timeout(timeout, heard.wait_for(|heard| *heard))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether no other instance has been heard from for [`PRESENCE_TTL`].
    pub fn alone(&self) -> bool {
        self.others_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|seen| seen.elapsed() > PRESENCE_TTL)
    }

    /// The announcements due now (their second lines), marked as sent.
    pub fn take_due(&self) -> Vec<&'static str> {
        [(&self.hello, HELLO), (&self.here, HERE)]
            .into_iter()
            .filter(|(due, _)| due.swap(false, Ordering::AcqRel))
            .map(|(_, word)| word)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_from_another_instance_is_answered_and_ends_being_alone() {
        let me = Uuid::now_v7();
        let presence = Presence::new(me);
        assert!(presence.alone());
        assert!(!presence.heard_from(me, Some(HELLO)));
        assert!(presence.alone(), "its own hello is not company");
        assert!(presence.heard_from(Uuid::now_v7(), Some(HELLO)));
        assert!(!presence.alone());
        presence.announce();
        assert_eq!(presence.take_due(), vec![HELLO, HERE]);
        assert!(presence.take_due().is_empty());
    }
}
