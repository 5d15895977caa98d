//! Readiness: a few named conditions, each met or failing with a reason, that `GET /readyz`
//! reports (`store: cannot write: database or disk is full`). A part of the service that finds
//! something wrong sets its condition and clears it when it recovers; a condition changes state
//! at most once per failure, so the log gets one line per change, not one per attempt.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::error::Error;
use crate::ids::bounded;

/// The condition the store's writes set.
pub const STORE: &str = "store";

/// Longest reason kept (a cause from a driver is not ours to bound).
const MAX_REASON: usize = 200;

/// The failing conditions, by name. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct Readiness {
    failing: Mutex<BTreeMap<&'static str, String>>,
    /// The parts whose last store write failed (`puller`, `deliverer`): the store condition
    /// fails while any does, so one part's success does not hide another's failure.
    store_writers: Mutex<BTreeSet<&'static str>>,
}

impl Readiness {
    /// Nothing failing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `name` failing with `reason`; returns whether it was met before (a state change).
    pub fn fail(&self, name: &'static str, reason: impl Into<String>) -> bool {
        let reason = bounded(&reason.into(), MAX_REASON);
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing.insert(name, reason).is_none()
    }

    /// Marks `name` met; returns whether it was failing (a state change).
    pub fn clear(&self, name: &'static str) -> bool {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing.remove(name).is_some()
    }

    /// Whether every condition is met.
    pub fn is_ready(&self) -> bool {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The failing conditions as `name: reason`, by name.
    pub fn reasons(&self) -> Vec<String> {
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing
            .iter()
            .map(|(name, reason)| format!("{name}: {reason}"))
            .collect()
    }

    /// A store write of `writer` failed: not ready until every writer's next write succeeds;
    /// one ERROR line when the store starts failing.
    pub fn store_write_failed(&self, writer: &'static str, error: &Error) {
        let mut writers = self.store_writers.lock().unwrap_or_else(|e| e.into_inner());
        writers.insert(writer);
        if self.fail(STORE, format!("cannot write: {}", store_cause(error))) {
            tracing::error!(error = %error, writer, "the store cannot write: not ready, retrying with backoff");
        }
    }

    /// A store write of `writer` succeeded: ready again once no writer fails (one INFO line).
    pub fn store_write_succeeded(&self, writer: &'static str) {
        let mut writers = self.store_writers.lock().unwrap_or_else(|e| e.into_inner());
        if writers.remove(writer) && writers.is_empty() && self.clear(STORE) {
            tracing::info!("the store writes again: ready");
        }
    }
}

/// The cause of a store error without the crate's `store: ` prefix.
fn store_cause(error: &Error) -> String {
    match error {
        Error::Store(cause) => cause.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_changes_state_once_per_failure_and_reports_its_reason() {
        let r = Readiness::new();
        assert!(r.is_ready());
        assert!(r.fail(STORE, "cannot write: disk full"));
        assert!(
            !r.fail(STORE, "cannot write: disk full"),
            "no second change"
        );
        assert!(!r.is_ready());
        assert_eq!(
            r.reasons(),
            vec!["store: cannot write: disk full".to_owned()]
        );
        assert!(r.clear(STORE));
        assert!(!r.clear(STORE));
        assert!(r.is_ready());
    }

    #[test]
    fn one_writers_success_does_not_hide_anothers_failure() {
        let r = Readiness::new();
        let full = Error::Store("database or disk is full".into());
        r.store_write_failed("puller", &full);
        r.store_write_failed("deliverer", &full);
        r.store_write_succeeded("deliverer");
        assert_eq!(
            r.reasons(),
            vec!["store: cannot write: database or disk is full".to_owned()]
        );
        r.store_write_succeeded("puller");
        assert!(r.is_ready());
        // A writer that never failed changes nothing.
        r.store_write_succeeded("puller");
        assert!(r.is_ready());
    }
}
