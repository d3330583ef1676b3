//! Event time as far as events can be trusted: the watermark that ends idle sessions. One event
//! with a wrong clock (a shopper's device set to 2099) must not end every other session, so the
//! watermark moves only as far as several shoppers agree: it is the latest event time that at
//! least `quorum` distinct users have reached. A quiet period still ends sessions: the next
//! events, from any `quorum` users, move the watermark past it. History replay and the online
//! shards (one clock per bus partition) both keep time this way.

use crate::event::Millis;

/// How many distinct users must have reached an event time before the watermark does.
pub const DEFAULT_QUORUM: usize = 3;

/// How far an event is dated ahead of `now` beyond the `skew` allowed, if it is: in live mode
/// such an event has a wrong clock and is refused.
pub fn ahead_of(event_time: Millis, now: Millis, skew: Millis) -> Option<Millis> {
    let ahead = event_time.saturating_sub(now);
    (ahead > skew).then_some(ahead)
}

/// The watermark of one stream of events.
#[derive(Clone, Debug)]
pub struct EventClock {
    quorum: usize,
    /// The latest event time of the `quorum` users with the latest ones, latest first.
    latest: Vec<(u64, Millis)>,
    watermark: Millis,
}

impl EventClock {
    /// A clock that has seen nothing; `quorum` is at least 1 (1: the latest event time).
    pub fn new(quorum: usize) -> Self {
        EventClock {
            quorum: quorum.max(1),
            latest: Vec::with_capacity(quorum.max(1) + 1),
            watermark: Millis::MIN,
        }
    }

    /// Notes an event of `user_id` at `time`.
    pub fn observe(&mut self, user_id: u64, time: Millis) {
        match self.latest.iter_mut().find(|(user, _)| *user == user_id) {
            Some((_, latest)) => *latest = (*latest).max(time),
            None => {
                if self.latest.len() == self.quorum
                    && self
                        .latest
                        .last()
                        .is_some_and(|(_, oldest)| *oldest >= time)
                {
                    return;
                }
                self.latest.push((user_id, time));
            }
        }
        self.latest
            .sort_unstable_by_key(|(_, time)| std::cmp::Reverse(*time));
        self.latest.truncate(self.quorum);
        if self.latest.len() == self.quorum {
            self.watermark = self.watermark.max(self.latest[self.quorum - 1].1);
        }
    }

    /// Moves the watermark to `time` if that is later (live mode: the wall clock).
    pub fn advance_to(&mut self, time: Millis) {
        self.watermark = self.watermark.max(time);
    }

    /// The latest event time the quorum agrees on.
    pub fn watermark(&self) -> Millis {
        self.watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_wrong_clock_does_not_move_time_and_a_quiet_period_still_ends() {
        let mut clock = EventClock::new(3);
        clock.observe(1, 100);
        clock.observe(2, 110);
        assert_eq!(clock.watermark(), Millis::MIN, "two users are not a quorum");
        clock.observe(3, 120);
        assert_eq!(clock.watermark(), 100);
        // One shopper's clock is in 2099, and the same shopper again: time stays.
        clock.observe(4, 4_070_908_800_000);
        clock.observe(4, 4_070_908_800_001);
        assert_eq!(clock.watermark(), 110);
        clock.observe(1, 130);
        assert_eq!(clock.watermark(), 120);
        // Hours later, three shoppers come back: time moves past the quiet period.
        for user in [5, 6] {
            clock.observe(user, 10_000);
        }
        assert_eq!(clock.watermark(), 10_000);
        // A late event never moves time back.
        clock.observe(7, 50);
        assert_eq!(clock.watermark(), 10_000);
        clock.advance_to(20_000);
        assert_eq!(clock.watermark(), 20_000);
    }

    #[test]
    fn a_quorum_of_one_is_the_latest_event_time() {
        let mut clock = EventClock::new(1);
        clock.observe(1, 5);
        clock.observe(1, 3);
        assert_eq!(clock.watermark(), 5);
    }
}
