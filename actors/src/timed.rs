//! Values remembered for a while: a decision reused until it lapses (a model found
//! unknown, a queue found full, a reading of a queue's age, a key's refusal), so a flood
//! costs one read or one round trip per period, not one per request.
//!
//! What lapsed is never returned, and goes whenever another value is remembered: the map
//! holds at most what was remembered within its periods. Every method has an `_at` form
//! taking the time, which is what the tests drive.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// A map whose entries lapse.
#[derive(Debug)]
pub struct Remembered<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> Remembered<K, V> {
    /// Entries lapse `ttl` after they are remembered (unless remembered with their own end).
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// The value of `key`, if remembered and not lapsed.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_at(key, Instant::now())
    }

    /// [`Remembered::get`] at `now`.
    pub fn get_at(&self, key: &K, now: Instant) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(until, _)| now < *until).map(|(_, v)| v.clone())
    }

    /// Remembers `value` for `key` for the map's period.
    pub fn remember(&self, key: K, value: V) {
        let now = Instant::now();
        self.remember_until_at(key, value, now + self.ttl, now);
    }

    /// Remembers `value` for `key` until `until`.
    pub fn remember_until(&self, key: K, value: V, until: Instant) {
        self.remember_until_at(key, value, until, Instant::now());
    }

    /// [`Remembered::remember_until`] at `now`: what lapsed by `now` goes.
    pub fn remember_until_at(&self, key: K, value: V, until: Instant, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (end, _)| now < *end);
        entries.insert(key, (until, value));
    }

    /// [`Remembered::remember`] at `now`.
    pub fn remember_at(&self, key: K, value: V, now: Instant) {
        self.remember_until_at(key, value, now + self.ttl, now);
    }

    /// Entries held now, lapsed ones included until the next remember.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_returned_until_it_lapses() {
        let m = Remembered::new(Duration::from_millis(250));
        let t0 = Instant::now();
        m.remember_at("a", 1, t0);
        assert_eq!(m.get_at(&"a", t0), Some(1));
        assert_eq!(m.get_at(&"a", t0 + Duration::from_millis(249)), Some(1));
        assert_eq!(m.get_at(&"a", t0 + Duration::from_millis(250)), None);
        assert_eq!(m.get_at(&"b", t0), None);
    }

    #[test]
    fn remembering_again_replaces_and_restarts_the_period() {
        let m = Remembered::new(Duration::from_millis(100));
        let t0 = Instant::now();
        m.remember_at("a", 1, t0);
        m.remember_at("a", 2, t0 + Duration::from_millis(80));
        assert_eq!(m.get_at(&"a", t0 + Duration::from_millis(150)), Some(2));
    }

    #[test]
    fn what_lapsed_goes_when_another_is_remembered_so_the_map_stays_bounded() {
        let m = Remembered::new(Duration::from_millis(10));
        let t0 = Instant::now();
        for i in 0..1000 {
            m.remember_at(i, i, t0 + Duration::from_millis(i as u64 * 20));
        }
        // Each was gone by the time the next came.
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn an_entry_may_have_its_own_end() {
        let m = Remembered::new(Duration::from_secs(1));
        let t0 = Instant::now();
        m.remember_until_at("key", "refused", t0 + Duration::from_secs(30), t0);
        assert_eq!(m.get_at(&"key", t0 + Duration::from_secs(29)), Some("refused"));
        assert_eq!(m.get_at(&"key", t0 + Duration::from_secs(30)), None);
    }
}
