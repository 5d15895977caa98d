//! The callback replay cache: an in-process memory of the callbacks seen within the timestamp
//! window, in front of the store's (`Store::first_callback`).
//!
//! The memory answers on the request path without waiting for the store; each new key is then
//! written to the store in the background, in batches, so that the store still remembers every
//! callback for the instances sharing its database and across restarts. At start the memory is
//! filled from the store's unexpired keys. Trade-offs (see `docs/hardening.md`):
//! * within the background write's lag (normally well under a millisecond; at most while the
//!   bounded queue drains) a replay sent to *another* instance is not refused there, and one
//!   sent after a crash that lost queued writes is not refused either. A callback only wakes a
//!   pull, which is idempotent, so the cost is one extra `sync_msg` call;
//! * a key the store reports as seen after the memory accepted it (another instance wrote it
//!   first) is counted as a replay after the fact: the wake has already happened.
//!
//! The memory is bounded: it holds at most [`CAPACITY`] keys, evicting expired ones first.
//! When a key does not fit (or before the start's load has finished, or when the store held more
//! keys than fit), a key missing from memory may still be in the store, so the caller asks the
//! store and waits, as before this cache existed, until every such key has expired.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use crate::metrics::{CallbackResult, Metrics};
use crate::store::Store;

/// The most keys the memory holds (about 10 MB); one timestamp window of callbacks.
pub(crate) const CAPACITY: usize = 100_000;

/// Keys queued for the store before the request path falls back to waiting for the store.
const QUEUE: usize = 4096;

/// The most keys the background writer hands the store at once (the SQLite store commits the
/// calls that queue together in one transaction).
const BATCH: usize = 512;

/// A callback's key: the SHA-256 digest of its signature, timestamp and nonce.
pub(crate) type Key = [u8; 32];

/// What the memory says of a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Seen before and not expired: a replay.
    Replay,
    /// Not seen before: remembered now (and queued for the store).
    First,
    /// The memory cannot tell (it may not hold every unexpired key, or the store's queue is
    /// full): ask the store, then [`Replays::remember`] the key.
    AskStore,
}

/// The bounded map of keys to their expiry (unix seconds on WeChat's clock). Pure: time is
/// passed in.
pub(crate) struct ReplayMemory {
    keys: HashMap<Key, i64>,
    /// The same keys by expiry, soonest first, for eviction in O(log n).
    expiries: BinaryHeap<Reverse<(i64, Key)>>,
    capacity: usize,
    /// Until then a key missing from memory may be in the store: written before this start
    /// (until the start's load replaces it) or left out when the memory was full.
    incomplete_until: i64,
    /// Whether the start's load has run.
    loaded: bool,
}

impl ReplayMemory {
    /// An empty memory that cannot vouch for a missing key until `unloaded_until` (the latest
    /// expiry a key stored before this start can have) unless [`ReplayMemory::load`] runs.
    pub(crate) fn new(capacity: usize, unloaded_until: i64) -> Self {
        ReplayMemory {
            keys: HashMap::new(),
            expiries: BinaryHeap::new(),
            capacity,
            incomplete_until: unloaded_until,
            loaded: false,
        }
    }

    /// How many keys are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Checks `key` at `now` and remembers it until `expires_at` when it is new.
    pub(crate) fn check(&mut self, key: Key, expires_at: i64, now: i64) -> Seen {
        self.evict(now);
        if self.keys.contains_key(&key) {
            return Seen::Replay;
        }
        if now <= self.incomplete_until {
            return Seen::AskStore;
        }
        if self.insert(key, expires_at) {
            Seen::First
        } else {
            Seen::AskStore
        }
    }

    /// Remembers a key the store has answered for (whatever it answered).
    pub(crate) fn remember(&mut self, key: Key, expires_at: i64, now: i64) {
        self.evict(now);
        if !self.keys.contains_key(&key) {
            self.insert(key, expires_at);
        }
    }

    /// Fills the memory with the store's unexpired keys at start; `truncated` when the store
    /// may hold more than were read, which it may then hold until `horizon`.
    pub(crate) fn load(
        &mut self,
        keys: impl IntoIterator<Item = (Key, i64)>,
        truncated: bool,
        horizon: i64,
        now: i64,
    ) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        // Only keys left out from now on keep the memory incomplete.
        self.incomplete_until = if truncated { horizon } else { i64::MIN };
        for (key, expires_at) in keys {
            if expires_at >= now {
                self.remember(key, expires_at, now);
            }
        }
    }

    fn insert(&mut self, key: Key, expires_at: i64) -> bool {
        if self.keys.len() >= self.capacity {
            // Left to the store alone: misses must ask it until this key has expired.
            self.incomplete_until = self.incomplete_until.max(expires_at);
            return false;
        }
        self.keys.insert(key, expires_at);
        self.expiries.push(Reverse((expires_at, key)));
        true
    }

    /// Forgets the keys that expired before `now` (the store forgets them at the same time).
    fn evict(&mut self, now: i64) {
        while let Some(Reverse((expires_at, key))) = self.expiries.peek().copied() {
            if expires_at >= now {
                break;
            }
            self.expiries.pop();
            if self.keys.get(&key) == Some(&expires_at) {
                self.keys.remove(&key);
            }
        }
    }
}

/// One key for the store.
struct Remember {
    key: Key,
    expires_at: i64,
    now: i64,
}

/// The memory and the queue to the background writer. Cheap to share (`Arc`).
pub(crate) struct Replays {
    memory: Arc<Mutex<ReplayMemory>>,
    queue: mpsc::Sender<Remember>,
}

impl Replays {
    /// Starts the background writer (it first loads the store's unexpired keys, then writes the
    /// queued ones); it ends when the `Replays` is dropped, after writing what is queued.
    /// `now` is WeChat's clock at start, `longest` the longest a key is remembered (a key
    /// stored before this start expires by `now + longest`).
    pub(crate) fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        now: i64,
        longest: i64,
    ) -> Self {
        let horizon = now.saturating_add(longest);
        let memory = Arc::new(Mutex::new(ReplayMemory::new(CAPACITY, horizon)));
        let (queue, keys) = mpsc::channel(QUEUE);
        tokio::spawn(write(store, metrics, memory.clone(), keys, now, horizon));
        Replays { memory, queue }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, ReplayMemory> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks a verified callback's key without waiting; a new one is queued for the store.
    pub(crate) fn check(&self, key: Key, expires_at: i64, now: i64) -> Seen {
        let seen = self.memory().check(key, expires_at, now);
        if seen != Seen::First {
            return seen;
        }
        match self.queue.try_send(Remember {
            key,
            expires_at,
            now,
        }) {
            Ok(()) => Seen::First,
            // The writer is behind (or gone): the store is asked now, as without this cache.
            // The memory already holds the key, so a replay of it is still refused here.
            Err(_) => Seen::AskStore,
        }
    }

    /// Remembers a key after the store has been asked about it.
    pub(crate) fn remember(&self, key: Key, expires_at: i64, now: i64) {
        self.memory().remember(key, expires_at, now);
    }
}

/// The background writer: loads the store's keys into the memory, then writes queued keys in
/// batches. A store error is logged when the store starts failing and when it recovers, not per
/// key; a key is not retried (the memory still refuses its replays here).
async fn write(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    memory: Arc<Mutex<ReplayMemory>>,
    mut keys: mpsc::Receiver<Remember>,
    now: i64,
    horizon: i64,
) {
    match store.remembered_callbacks(now, CAPACITY).await {
        Ok(rows) => {
            let truncated = rows.len() >= CAPACITY;
            // A row that is not a digest in hex can never match a key: skipping it is exact.
            let rows = rows.into_iter().filter_map(|(key, expires_at)| {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(key, &mut digest).ok()?;
                Some((digest, expires_at))
            });
            memory
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .load(rows, truncated, horizon, now);
        }
        // Until the keys of before this start have expired, misses ask the store.
        Err(e) => tracing::warn!(
            error = %e,
            "cannot load the callback replay cache; the store is asked for each new callback for one window"
        ),
    }
    let mut failing = false;
    let mut batch = Vec::with_capacity(BATCH);
    while keys.recv_many(&mut batch, BATCH).await > 0 {
        let answers = futures::future::join_all(
            batch
                .drain(..)
                .map(|r| store.first_callback(hex::encode(r.key), r.expires_at, r.now)),
        )
        .await;
        let mut error = None;
        for answer in answers {
            match answer {
                Ok(true) => {}
                // Another instance remembered it first: a replay, found after the wake.
                Ok(false) => metrics.callback(CallbackResult::Replayed),
                Err(e) => error = Some(e),
            }
        }
        match error {
            Some(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot write callbacks to the replay cache in the store");
            }
            None if failing => {
                failing = false;
                tracing::info!("the replay cache in the store is written again");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Key {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&n.to_be_bytes());
        key
    }

    fn loaded(capacity: usize) -> ReplayMemory {
        let mut memory = ReplayMemory::new(capacity, 2_000);
        memory.load([], false, 2_000, 1_000);
        memory
    }

    #[test]
    fn a_key_is_first_once_and_a_replay_until_it_expires() {
        let mut memory = loaded(10);
        assert_eq!(memory.check(key(1), 1_300, 1_000), Seen::First);
        assert_eq!(memory.check(key(1), 1_300, 1_100), Seen::Replay);
        assert_eq!(memory.check(key(1), 1_300, 1_300), Seen::Replay);
        assert_eq!(memory.check(key(2), 1_300, 1_300), Seen::First);
        // Past its expiry the key is forgotten (the timestamp window refuses it by then).
        assert_eq!(memory.check(key(1), 1_600, 1_301), Seen::First);
        // Both old entries went; the new one stays.
        assert_eq!(memory.len(), 1);
    }

    #[test]
    fn expired_keys_are_evicted_so_the_memory_holds_one_window() {
        let mut memory = loaded(1_000);
        for i in 0..1_000 {
            assert_eq!(
                memory.check(key(i), 1_000 + i64::from(i), 1_000),
                Seen::First
            );
        }
        assert_eq!(memory.check(key(5_000), 3_000, 1_500), Seen::First);
        // Keys 0..=499 expired before 1,500.
        assert_eq!(memory.len(), 501);
        assert_eq!(memory.check(key(499), 3_000, 1_500), Seen::First);
        assert_eq!(memory.check(key(500), 3_000, 1_500), Seen::Replay);
    }

    #[test]
    fn a_full_memory_refuses_nothing_and_sends_misses_to_the_store_until_the_overflow_expires() {
        let mut memory = loaded(2);
        assert_eq!(memory.check(key(1), 1_100, 1_000), Seen::First);
        assert_eq!(memory.check(key(2), 1_100, 1_000), Seen::First);
        // No room: the store decides, and keeps deciding misses while that key may be there.
        assert_eq!(memory.check(key(3), 1_500, 1_000), Seen::AskStore);
        memory.remember(key(3), 1_500, 1_000);
        assert_eq!(memory.len(), 2);
        assert_eq!(memory.check(key(1), 1_100, 1_050), Seen::Replay);
        assert_eq!(memory.check(key(4), 1_600, 1_200), Seen::AskStore);
        memory.remember(key(4), 1_600, 1_200);
        assert_eq!(memory.check(key(4), 1_600, 1_300), Seen::Replay);
        // Once the left-out key has expired, the memory vouches for misses again.
        assert_eq!(memory.check(key(5), 1_900, 1_501), Seen::First);
    }

    #[test]
    fn before_its_load_the_memory_sends_misses_to_the_store_until_the_horizon() {
        let mut memory = ReplayMemory::new(10, 1_600);
        assert_eq!(memory.check(key(1), 1_300, 1_000), Seen::AskStore);
        memory.remember(key(1), 1_300, 1_000);
        assert_eq!(memory.check(key(1), 1_300, 1_001), Seen::Replay);
        assert_eq!(memory.check(key(2), 1_900, 1_601), Seen::First);
    }

    #[test]
    fn the_load_fills_the_memory_with_the_unexpired_keys_of_the_store() {
        let mut memory = ReplayMemory::new(10, 1_600);
        memory.load([(key(1), 1_200), (key(2), 900)], false, 1_600, 1_000);
        assert_eq!(memory.check(key(1), 1_200, 1_000), Seen::Replay);
        assert_eq!(memory.check(key(2), 1_300, 1_000), Seen::First);
        assert_eq!(memory.check(key(3), 1_300, 1_000), Seen::First);
    }

    #[test]
    fn a_truncated_load_sends_misses_to_the_store_until_the_horizon() {
        let mut memory = ReplayMemory::new(1, 1_600);
        memory.load([(key(1), 1_200), (key(2), 1_200)], true, 1_600, 1_000);
        assert_eq!(memory.check(key(1), 1_200, 1_000), Seen::Replay);
        assert_eq!(memory.check(key(2), 1_200, 1_000), Seen::AskStore);
        assert_eq!(memory.check(key(3), 1_900, 1_601), Seen::First);
    }
}
