//! A bounded set of recently seen message hashes: the consumer's duplicate filter.
//!
//! The Kafka path delivers at least once: a shipper restarted from its last persisted offset
//! re-sends what it had in flight, a resent window after a failed delivery repeats records
//! that did arrive, and a consumer-group rebalance re-reads uncommitted messages. Every
//! envelope carries unique content (timestamps, ids), so an exact repeat of (topic, key,
//! payload) is a redelivery. The set remembers a 128-bit hash of each recent message, evicting
//! the oldest beyond `capacity` entries or `window` of age, so memory stays bounded; a
//! redelivery later than that would pass (none of the paths above delays one that long).

use std::collections::{HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

/// Recently seen message hashes, bounded in count and age.
#[derive(Debug)]
pub struct RecentSet {
    seen: HashSet<u128>,
    order: VecDeque<(Instant, u128)>,
    capacity: usize,
    window: Duration,
}

impl RecentSet {
    /// An empty set that keeps at most `capacity` hashes, each for at most `window`.
    #[must_use]
    pub fn new(capacity: usize, window: Duration) -> Self {
        RecentSet {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            window,
        }
    }

    /// The 128-bit hash of one message: two SipHash-1-3 passes (std's fixed-key hasher,
    /// stable within a process) with different domain tags.
    #[must_use]
    pub fn message_hash(topic: &str, key: Option<&[u8]>, payload: &[u8]) -> u128 {
        let half = |tag: u8| {
            let mut hasher = DefaultHasher::new();
            tag.hash(&mut hasher);
            topic.hash(&mut hasher);
            key.hash(&mut hasher);
            payload.hash(&mut hasher);
            hasher.finish()
        };
        (u128::from(half(0x5a)) << 64) | u128::from(half(0xa5))
    }

    /// Records `hash` seen at `now`; returns false when it was already there (a duplicate).
    pub fn insert(&mut self, hash: u128, now: Instant) -> bool {
        while let Some(&(at, old)) = self.order.front()
            && now.saturating_duration_since(at) > self.window
        {
            self.order.pop_front();
            self.seen.remove(&old);
        }
        if self.seen.contains(&hash) {
            return false;
        }
        if self.order.len() >= self.capacity
            && let Some((_, old)) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(hash);
        self.order.push_back((now, hash));
        true
    }

    /// How many hashes the set holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_repeats_and_separates_topic_key_payload() {
        let mut set = RecentSet::new(10, Duration::from_secs(60));
        let now = Instant::now();
        let a = RecentSet::message_hash("t", Some(b"k"), b"p");
        assert!(set.insert(a, now));
        assert!(!set.insert(a, now));
        for other in [
            RecentSet::message_hash("u", Some(b"k"), b"p"),
            RecentSet::message_hash("t", None, b"p"),
            RecentSet::message_hash("t", Some(b"k"), b"q"),
        ] {
            assert_ne!(a, other);
            assert!(set.insert(other, now));
        }
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn evicts_by_capacity_and_age() {
        let mut set = RecentSet::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(set.insert(1, t0));
        assert!(set.insert(2, t0));
        assert!(set.insert(3, t0)); // evicts 1
        assert!(set.insert(1, t0));
        assert_eq!(set.len(), 2);
        let later = t0 + Duration::from_secs(11);
        assert!(set.insert(4, later)); // 3 and 1 are too old
        assert!(set.insert(3, later));
        assert!(!set.insert(4, later));
    }
}
