//! When delivery guards may forget: the consumer's rule, kept apart from lapin so it can be
//! tested on its own.
//!
//! A guard forgets, at an acknowledgement, the identities it recorded before the previous one
//! (see `propensity_actors::delivery::DeliveryGuard`). That is safe only if every delivery
//! applied before the previous acknowledgement is acknowledged by now, and if no partition is
//! still to hand over a redelivery of an event whose identity would be forgotten. So:
//!
//! - a partition is unsettled from its first redelivery (and from the moment this instance
//!   subscribes to it) until a fresh delivery of it has been applied: a queue hands out its
//!   redeliveries first, so by then every redelivery came and was applied. Received is not
//!   enough: a redelivery waiting in the pending batch is not in any guard yet;
//! - two backlog reads in a row that find a partition's queue empty, while none of its
//!   deliveries waits to be applied, settle it too (a partition nobody publishes to);
//! - nothing is forgotten while a batch the engine refused in part waits for its retry: the
//!   entities that took their part recorded it, and it is acknowledged only with the rest of
//!   the batch. A guard that forgot it meanwhile would take it again from a redelivery after a
//!   crash, and count it twice.

use std::collections::{BTreeMap, BTreeSet};

/// Which partitions may still redeliver.
#[derive(Debug, Default)]
pub(super) struct Settling {
    unsettled: BTreeSet<u16>,
    /// Partitions whose last backlog read found their queue empty.
    found_empty: BTreeSet<u16>,
}

impl Settling {
    /// The partitions an instance starts consuming: each may redeliver.
    pub(super) fn new(partitions: impl IntoIterator<Item = u16>) -> Self {
        Settling {
            unsettled: partitions.into_iter().collect(),
            found_empty: BTreeSet::new(),
        }
    }

    /// A subscription to `partition` began (a standby one, say): it may redeliver.
    pub(super) fn subscribed(&mut self, partition: u16) {
        self.unsettled.insert(partition);
    }

    /// A delivery of `partition` was received.
    pub(super) fn received(&mut self, partition: u16, redelivered: bool) {
        if redelivered {
            self.unsettled.insert(partition);
            self.found_empty.remove(&partition);
        }
    }

    /// A batch was applied in full; `newest_fresh` tells, for each partition in it, whether
    /// its newest delivery in the batch was a fresh one.
    pub(super) fn applied(&mut self, newest_fresh: &BTreeMap<u16, bool>) {
        for (partition, fresh) in newest_fresh {
            if *fresh {
                self.unsettled.remove(partition);
            }
        }
    }

    /// A backlog read found `ready` messages in `partition`'s queue; `holding` tells whether
    /// some of its deliveries wait to be applied.
    pub(super) fn backlog(&mut self, partition: u16, ready: u32, holding: bool) {
        if ready > 0 || holding {
            self.found_empty.remove(&partition);
        } else if !self.found_empty.insert(partition) {
            self.unsettled.remove(&partition);
        }
    }

    /// Whether guards may forget at the acknowledgement of a flush starting now;
    /// `refused_waiting` tells whether a batch the engine refused in part waits for its retry.
    pub(super) fn may_forget(&self, refused_waiting: bool) -> bool {
        self.unsettled.is_empty() && !refused_waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newest(pairs: &[(u16, bool)]) -> BTreeMap<u16, bool> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn a_partition_settles_once_a_fresh_delivery_is_applied_not_when_it_is_received() {
        let mut settling = Settling::new([0, 1]);
        assert!(!settling.may_forget(false), "both may redeliver at start");
        settling.received(0, false);
        settling.received(1, false);
        assert!(!settling.may_forget(false), "received, not applied");
        settling.applied(&newest(&[(0, true), (1, true)]));
        assert!(settling.may_forget(false));
    }

    #[test]
    fn a_redelivery_after_a_fresh_delivery_keeps_its_partition_unsettled() {
        let mut settling = Settling::new([0]);
        settling.received(0, false);
        settling.applied(&newest(&[(0, true)]));
        assert!(settling.may_forget(false));
        // A takeover: the queue hands this instance another's unacknowledged messages.
        settling.received(0, true);
        assert!(!settling.may_forget(false));
        // In the same batch, a fresh one then a redelivery: the batch's newest is redelivered.
        settling.received(0, false);
        settling.received(0, true);
        settling.applied(&newest(&[(0, false)]));
        assert!(!settling.may_forget(false));
        settling.received(0, false);
        settling.applied(&newest(&[(0, true)]));
        assert!(settling.may_forget(false));
    }

    #[test]
    fn nothing_is_forgotten_while_a_refused_batch_waits() {
        let mut settling = Settling::new([0]);
        settling.received(0, false);
        settling.applied(&newest(&[(0, true)]));
        assert!(!settling.may_forget(true));
        assert!(settling.may_forget(false));
    }

    #[test]
    fn two_empty_backlog_reads_settle_a_quiet_partition_unless_its_deliveries_wait() {
        let mut settling = Settling::new([]);
        settling.subscribed(3);
        settling.backlog(3, 0, false);
        assert!(!settling.may_forget(false), "one empty read is not enough");
        settling.backlog(3, 0, false);
        assert!(settling.may_forget(false));

        settling.received(3, true);
        settling.backlog(3, 0, true);
        settling.backlog(3, 0, true);
        assert!(
            !settling.may_forget(false),
            "its redeliveries wait in the pending batch"
        );
        settling.backlog(3, 0, false);
        assert!(!settling.may_forget(false));
        settling.backlog(3, 0, false);
        assert!(settling.may_forget(false));

        settling.backlog(3, 5, false);
        settling.backlog(3, 0, false);
        assert!(settling.may_forget(false), "settled stays settled");
    }
}
