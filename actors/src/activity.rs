//! What keeps berthd busy: calls in flight (each engine call and each authorization holds a
//! [`Busy`] guard) and the last moment anything happened. The daemon's idle exit reads it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shared activity counter; cheap to clone.
#[derive(Debug, Clone)]
pub struct Activity {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    busy: AtomicUsize,
    last: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            inner: Arc::new(Inner {
                busy: AtomicUsize::new(0),
                last: Mutex::new(Instant::now()),
            }),
        }
    }
}

/// Held while something is in flight; its drop counts as activity.
#[derive(Debug)]
#[must_use = "the activity ends when the guard is dropped"]
pub struct Busy {
    activity: Activity,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.inner.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Activity {
    /// Marks something in flight until the guard drops.
    pub fn hold(&self) -> Busy {
        self.inner.busy.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Busy {
            activity: self.clone(),
        }
    }

    /// Records that something happened now (a message arrived, a call ended).
    pub fn touch(&self) {
        *self.inner.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long nothing has happened, or `None` while something is in flight.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.inner.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(
            self.inner
                .last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_while_held_idle_after() {
        let a = Activity::default();
        let g = a.hold();
        let g2 = a.clone().hold();
        assert_eq!(a.idle_for(), None);
        drop(g);
        assert_eq!(a.idle_for(), None, "one guard is still held");
        drop(g2);
        let idle = a.idle_for().expect("nothing in flight");
        assert!(idle < Duration::from_secs(1));
    }
}
