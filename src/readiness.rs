//! The readiness latch behind `/ready`: ready once the listeners are bound and a config is
//! loaded, and not ready again from the moment a drain starts.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Readiness {
    listeners_bound: AtomicBool,
    config_loaded: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn set_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Release);
    }

    pub fn set_config_loaded(&self) {
        self.config_loaded.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.listeners_bound.load(Ordering::Acquire)
            && self.config_loaded.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
    }

    /// A short reason for a 503, for the response body.
    pub fn reason(&self) -> &'static str {
        if self.draining.load(Ordering::Acquire) {
            "draining"
        } else if !self.config_loaded.load(Ordering::Acquire) {
            "waiting for config"
        } else if !self.listeners_bound.load(Ordering::Acquire) {
            "binding listeners"
        } else {
            "ready"
        }
    }
}
