//! How sessions ended, counted by hour of event time: the numbers the shop is paged on. A session
//! ends once, when it has been idle for longer than the session timeout; its outcome goes to the
//! tally of the hour of its latest event. Online, each shard keeps the tallies of the sessions it
//! ended per bus partition (`source`) and writes them, in the same atomic step as the ends they
//! count; a period's tally is the sum of every row of its hours. History replay tallies the same
//! way, so the two can be held against each other hour by hour.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Millis;
use crate::features::{Outcome, PreviousSession, SessionKey, SessionState};

/// One hour of event time.
pub const HOUR: Millis = 3_600_000;

/// The sessions that ended in one hour (or a period), by outcome: how many, and the value of
/// their carts when they ended (for an abandoned session, the value abandoned).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutcomeTally {
    /// By outcome, in the order of [`Outcome::ALL`].
    pub sessions: [u64; 3],
    pub cart_value: [f64; 3],
}

impl OutcomeTally {
    fn slot(outcome: Outcome) -> usize {
        Outcome::ALL
            .iter()
            .position(|candidate| *candidate == outcome)
            .expect("every outcome is in ALL")
    }

    /// Counts one ended session.
    pub fn count(&mut self, end: &SessionEnd) {
        let slot = Self::slot(end.outcome);
        self.sessions[slot] += 1;
        self.cart_value[slot] += end.cart_value;
    }

    /// Adds another tally.
    pub fn add(&mut self, other: &OutcomeTally) {
        for slot in 0..3 {
            self.sessions[slot] += other.sessions[slot];
            self.cart_value[slot] += other.cart_value[slot];
        }
    }

    /// Sessions that ended with this outcome.
    pub fn sessions_with(&self, outcome: Outcome) -> u64 {
        self.sessions[Self::slot(outcome)]
    }

    /// Cart value at the end of the sessions with this outcome.
    pub fn cart_value_of(&self, outcome: Outcome) -> f64 {
        self.cart_value[Self::slot(outcome)]
    }

    /// Abandoned sessions over abandoned and purchased ones (as the alert rules compute it), or
    /// `None` when there are neither.
    pub fn abandonment_rate(&self) -> Option<f64> {
        let abandoned = self.sessions_with(Outcome::Abandoned);
        let decided = abandoned + self.sessions_with(Outcome::Purchased);
        (decided > 0).then(|| abandoned as f64 / decided as f64)
    }
}

/// Which row a session's end is tallied in: the hour of its latest event, its user's bus
/// partition, and the shard that ended it. Each row has one writer at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TallyKey {
    /// Hours since the epoch.
    pub hour: i64,
    pub source: u16,
    pub writer: u16,
}

/// A session that ended: which instance of its key (the key is reused when a shopper comes back
/// after the timeout with the same session string), its outcome, and where it is tallied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionEnd {
    pub key: SessionKey,
    pub started_at: Millis,
    pub outcome: Outcome,
    pub cart_value: f64,
    pub tally: TallyKey,
}

impl SessionEnd {
    /// The end of `session`, from `source`, ended by shard `writer`.
    pub fn of(session: &SessionState, source: u16, writer: u16) -> SessionEnd {
        Self::of_previous(session.key(), &PreviousSession::of(session), source, writer)
    }

    /// The end of the session of `key` that `previous` describes.
    pub fn of_previous(
        key: SessionKey,
        previous: &PreviousSession,
        source: u16,
        writer: u16,
    ) -> SessionEnd {
        SessionEnd {
            key,
            started_at: previous.started_at,
            outcome: previous.outcome,
            cart_value: previous.cart_value,
            tally: TallyKey {
                hour: previous.last_event_at.div_euclid(HOUR),
                source,
                writer,
            },
        }
    }
}

/// A live session as the store indexes it, so that its owner finds and ends it after a restart
/// or a takeover: which instance, and when it ends unless another event comes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenSession {
    pub key: SessionKey,
    pub source: u16,
    pub started_at: Millis,
    /// Its latest event plus the session timeout.
    pub deadline: Millis,
}

/// What the store's index holds for one session key: the live session under it, if any, and
/// the start of the latest session under it that ended and was counted. A session that started
/// then or before has ended for good: it is never indexed again, nor counted again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub open: Option<OpenSession>,
    pub ended_through: Option<Millis>,
}

impl IndexEntry {
    /// Whether the session of `key` that started at `started_at` has ended and been counted.
    pub fn has_ended(&self, started_at: Millis) -> bool {
        self.ended_through.is_some_and(|ended| ended >= started_at)
    }
}

/// Tallies by hour over a period, summed over partitions and writers.
pub fn by_hour<'a>(
    rows: impl IntoIterator<Item = (&'a TallyKey, &'a OutcomeTally)>,
) -> BTreeMap<i64, OutcomeTally> {
    let mut hours: BTreeMap<i64, OutcomeTally> = BTreeMap::new();
    for (key, tally) in rows {
        hours.entry(key.hour).or_default().add(tally);
    }
    hours
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventType};

    fn session(events: &[(Millis, EventType, f64)]) -> SessionState {
        let mut session = SessionState::new(1, "s", events[0].0);
        for (time, event_type, price) in events {
            session.apply(&Event {
                time: *time,
                event_type: *event_type,
                product_id: 5,
                category_id: 1,
                category_code: None,
                brand: None,
                price: *price,
                user_id: 1,
                user_session: "s".into(),
                event_id: None,
            });
        }
        session
    }

    #[test]
    fn ends_count_in_the_hour_of_their_latest_event() {
        use EventType::*;
        let abandoned = session(&[(HOUR - 10, Cart, 4.0), (HOUR + 5, Cart, 4.0)]);
        let bought = session(&[(10, Cart, 3.0), (20, Purchase, 3.0)]);
        let end = SessionEnd::of(&abandoned, 2, 1);
        assert_eq!(
            end.tally,
            TallyKey {
                hour: 1,
                source: 2,
                writer: 1
            }
        );
        assert_eq!((end.outcome, end.cart_value), (Outcome::Abandoned, 8.0));
        let mut tally = OutcomeTally::default();
        tally.count(&end);
        tally.count(&SessionEnd::of(&bought, 2, 1));
        assert_eq!(tally.sessions_with(Outcome::Abandoned), 1);
        assert_eq!(tally.sessions_with(Outcome::Purchased), 1);
        assert_eq!(tally.cart_value_of(Outcome::Abandoned), 8.0);
        assert_eq!(tally.abandonment_rate(), Some(0.5));
        assert_eq!(OutcomeTally::default().abandonment_rate(), None);
        let key = |hour, writer| TallyKey {
            hour,
            source: 0,
            writer,
        };
        let rows = [(key(1, 0), tally), (key(1, 1), tally), (key(2, 0), tally)];
        let hours = by_hour(rows.iter().map(|(key, tally)| (key, tally)));
        assert_eq!(hours[&1].sessions_with(Outcome::Abandoned), 2);
        assert_eq!(hours[&2].sessions_with(Outcome::Purchased), 1);
    }
}
