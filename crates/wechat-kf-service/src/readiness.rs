//! Readiness: a small set of named conditions, each failing with a reason or met. `/readyz` is
//! 200 when none fails, else 503 with one `<name>: <reason>` line per failing condition, so an
//! operator (or a load balancer's log) sees why without reading the service's logs.
//!
//! Any part of the service may fail or clear a condition of its own name (a leaf module: it
//! imports nothing of the crate). WeChat counts as unreachable while its API does not answer
//! (no connection, a timeout, HTTP 5xx: [`unreachable`]); an answer with an errcode is an
//! answer.
//!
//! ```
//! use wechat_kf_service::readiness::{Readiness, WECHAT};
//!
//! let readiness = Readiness::new();
//! assert!(readiness.failing().is_empty());
//! readiness.fail(WECHAT, "unreachable: connection refused");
//! assert_eq!(readiness.report(), "wechat: unreachable: connection refused\n");
//! readiness.clear(WECHAT);
//! assert!(readiness.failing().is_empty());
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The service itself: starting or stopping.
pub const SERVICE: &str = "service";
/// WeChat's API: unreachable, or the credentials were rejected.
pub const WECHAT: &str = "wechat";
/// The store.
pub const STORE: &str = "store";

/// The failing conditions, shared by every part that reports one. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    failing: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Readiness {
    /// Every condition met.
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// Marks `name` failing, for `reason` (no secret, no message content: it is served).
    pub fn fail(&self, name: &'static str, reason: impl Into<String>) {
        self.lock().insert(name, reason.into());
    }

    /// Marks `name` met.
    pub fn clear(&self, name: &'static str) {
        self.lock().remove(name);
    }

    /// The failing conditions and their reasons, by name.
    pub fn failing(&self) -> Vec<(&'static str, String)> {
        self.lock()
            .iter()
            .map(|(name, reason)| (*name, reason.clone()))
            .collect()
    }

    /// One `<name>: <reason>` line per failing condition (empty when ready).
    pub fn report(&self) -> String {
        self.failing()
            .into_iter()
            .map(|(name, reason)| format!("{name}: {reason}\n"))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
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
