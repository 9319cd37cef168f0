//! Claims on fingerprints: at most one import, build or publish stores a given fingerprint at a
//! time. The store takes the claim once it knows the fingerprint (after hashing) and hands it
//! to its caller with the result, who drops it only once the image is registered; a second
//! import of the same bytes waits for it and then finds the image already stored.
//!
//! Claims live in the daemon's memory: only berthd imports into its state directory, and a
//! crash drops them with everything else (the startup cleanup removes what was half stored).

use crate::error::{Error, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

static HELD: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
static RELEASED: Condvar = Condvar::new();

/// A held claim on one fingerprint of one store; dropping it releases the claim.
#[derive(Debug)]
pub struct Claim {
    key: PathBuf,
}

/// Claims `fingerprint` in the store at `dir`, waiting while another job holds it. Gives up
/// with [`Error::Cancelled`] when `cancel` becomes true meanwhile.
pub fn claim(dir: &Path, fingerprint: &str, cancel: &AtomicBool) -> Result<Claim> {
    let key = dir.join(fingerprint);
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let set = held.get_or_insert_with(HashSet::new);
        if set.insert(key.clone()) {
            return Ok(Claim { key });
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        held = RELEASED
            .wait_timeout(held, Duration::from_millis(100))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = held.as_mut() {
            set.remove(&self.key);
        }
        RELEASED.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn one_holder_per_fingerprint_and_others_wait() {
        let dir = Path::new("/nonexistent/claims-test");
        let no = AtomicBool::new(false);
        let first = claim(dir, "aa", &no).unwrap();
        // another fingerprint is independent
        let other = claim(dir, "bb", &no).unwrap();
        let inside = Arc::new(AtomicU32::new(0));
        let waiter = {
            let inside = inside.clone();
            std::thread::spawn(move || {
                let c = claim(
                    Path::new("/nonexistent/claims-test"),
                    "aa",
                    &AtomicBool::new(false),
                )
                .unwrap();
                inside.store(1, Ordering::SeqCst);
                drop(c);
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(inside.load(Ordering::SeqCst), 0, "the second claim waited");
        drop(first);
        waiter.join().unwrap();
        assert_eq!(inside.load(Ordering::SeqCst), 1);
        drop(other);
    }

    #[test]
    fn a_waiting_claim_can_be_cancelled() {
        let dir = Path::new("/nonexistent/claims-cancel");
        let held = claim(dir, "cc", &AtomicBool::new(false)).unwrap();
        let r = claim(dir, "cc", &AtomicBool::new(true));
        assert!(matches!(r, Err(Error::Cancelled)));
        drop(held);
        assert!(
            claim(dir, "cc", &AtomicBool::new(true)).is_ok(),
            "a free claim is taken even when cancelled"
        );
    }
}
