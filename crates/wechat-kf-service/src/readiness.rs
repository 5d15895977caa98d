//! Readiness: a few named conditions, each met or failing with a reason. `/readyz` is 200 when
//! none fails, else 503 with one `<name>: <reason>` line per failing condition
//! (`store: cannot write: database or disk is full`, `wechat: unreachable: connection refused`),
//! so an operator (or a load balancer's log) sees why without reading the service's logs.
//!
//! A part of the service that finds something wrong sets its condition and clears it when it
//! recovers; [`fail`](Readiness::fail) and [`clear`](Readiness::clear) say whether the state
//! changed, so the log gets one line per change, not one per attempt. WeChat counts as
//! unreachable while its API does not answer (no connection, a timeout, HTTP 5xx:
//! [`unreachable`]); an answer with an errcode is an answer.
//!
//! ```
//! use wechat_kf_service::readiness::{Readiness, WECHAT};
//!
//! let readiness = Readiness::new();
//! assert!(readiness.failing().is_empty());
//! assert!(readiness.fail(WECHAT, "unreachable: connection refused"));
//! assert_eq!(readiness.report(), "wechat: unreachable: connection refused\n");
//! assert!(readiness.clear(WECHAT));
//! assert!(readiness.is_ready());
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Error;
use crate::ids::bounded;

/// The service itself: starting or stopping.
pub const SERVICE: &str = "service";
/// WeChat's API: unreachable, or the credentials were rejected.
pub const WECHAT: &str = "wechat";
/// The store: its writes fail.
pub const STORE: &str = "store";

/// Longest reason kept (a cause from a driver is not ours to bound).
const MAX_REASON: usize = 200;

/// The failing conditions, shared by every part that reports one. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    failing: Mutex<BTreeMap<&'static str, String>>,
    /// The parts whose last store write failed (`puller`, `deliverer`): the store condition
    /// fails while any does, so one part's success does not hide another's failure.
    store_writers: Mutex<BTreeSet<&'static str>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Readiness {
    /// Every condition met.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `name` failing with `reason` (no secret, no message content: it is served);
    /// returns whether it was met before (a state change).
    pub fn fail(&self, name: &'static str, reason: impl Into<String>) -> bool {
        let reason = bounded(&reason.into(), MAX_REASON);
        lock(&self.inner.failing).insert(name, reason).is_none()
    }

    /// Marks `name` met; returns whether it was failing (a state change).
    pub fn clear(&self, name: &'static str) -> bool {
        lock(&self.inner.failing).remove(name).is_some()
    }

    /// Whether every condition is met.
    pub fn is_ready(&self) -> bool {
        lock(&self.inner.failing).is_empty()
    }

    /// The failing conditions and their reasons, by name.
    pub fn failing(&self) -> Vec<(&'static str, String)> {
        lock(&self.inner.failing)
            .iter()
            .map(|(name, reason)| (*name, reason.clone()))
            .collect()
    }

    /// The failing conditions as `name: reason`, by name.
    pub fn reasons(&self) -> Vec<String> {
        self.failing()
            .into_iter()
            .map(|(name, reason)| format!("{name}: {reason}"))
            .collect()
    }

    /// One `<name>: <reason>` line per failing condition (empty when ready).
    pub fn report(&self) -> String {
        self.reasons().into_iter().map(|r| r + "\n").collect()
    }

    /// A store write of `writer` failed: not ready until every writer's next write succeeds;
    /// one ERROR line when the store starts failing.
    pub fn store_write_failed(&self, writer: &'static str, error: &Error) {
        let mut writers = lock(&self.inner.store_writers);
        writers.insert(writer);
        if self.fail(STORE, format!("cannot write: {}", store_cause(error))) {
            tracing::error!(error = %error, writer, "the store cannot write: not ready, retrying with backoff");
        }
    }

    /// A store write of `writer` succeeded: ready again once no writer fails (one INFO line).
    pub fn store_write_succeeded(&self, writer: &'static str) {
        let mut writers = lock(&self.inner.store_writers);
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

/// Why a failed call means WeChat is unreachable (`None`: WeChat answered, e.g. with an
/// errcode, or the request was refused locally).
pub fn unreachable(error: &wechat_kf::client::Error) -> Option<String> {
    use wechat_kf::client::Error as E;
    match error {
        E::Transport { .. } => Some(error.to_string()),
        E::HttpStatus { status, .. } if *status >= 500 => Some(error.to_string()),
        _ => None,
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
