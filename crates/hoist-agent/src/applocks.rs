//! The deploy lock of each app, one mechanism: a mutex that deploys, rollbacks and the
//! agent's own work on the app (a standby window's end, `hoist down`, a restore, a
//! scheduled backup) take, and the claim of the deploy or rollback that holds or waits
//! for it (who, since when), so a second deploy is refused at once naming the holder.
//! An app has an entry only while something claims, holds or waits for its mutex: the
//! map does not grow with every app name ever deployed (or sent to the API).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type AppMutex = Arc<tokio::sync::Mutex<()>>;

#[derive(Default)]
struct Entry {
    mutex: AppMutex,
    /// (actor, since ms) of the deploy or rollback that claimed the app.
    claim: Option<(String, i64)>,
}

#[derive(Default)]
pub(crate) struct AppLocks {
    map: Mutex<HashMap<String, Entry>>,
}

impl AppLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // An entry nobody claims or holds a handle to (the map's is the only one) goes.
        // Safe: a handle is only ever cloned here, under this lock, or from another handle
        // (then the count is above one).
        map.retain(|_, e| e.claim.is_some() || Arc::strong_count(&e.mutex) > 1);
        map
    }

    /// The app's mutex (created if needed).
    pub(crate) fn mutex(&self, app: &str) -> AppMutex {
        self.map().entry(app.to_string()).or_default().mutex.clone()
    }

    /// Claims `app` for a deploy or rollback by `actor`: its mutex, to be taken next; or
    /// the holder of the claim that is there, `(actor, since ms)`.
    pub(crate) fn claim(&self, app: &str, actor: &str) -> Result<AppMutex, (String, i64)> {
        let mut map = self.map();
        let e = map.entry(app.to_string()).or_default();
        match &e.claim {
            Some(held) => Err(held.clone()),
            None => {
                e.claim = Some((actor.to_string(), hoist_state::now_ms()));
                Ok(e.mutex.clone())
            }
        }
    }

    /// Ends the claim on `app`.
    pub(crate) fn release(&self, app: &str) {
        if let Some(e) = self.map().get_mut(app) {
            e.claim = None;
        }
    }

    /// Apps with an entry now (claimed, held or waited for).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_keeps_only_apps_something_claims_or_holds() {
        let locks = AppLocks::default();
        for i in 0..1000 {
            let m = locks.mutex(&format!("app{i}"));
            let _held = m.try_lock().unwrap();
        }
        assert_eq!(locks.len(), 0, "nothing held: nothing kept");
        // Held: kept, and the same mutex for everyone.
        let held = locks.mutex("a").try_lock_owned().unwrap();
        assert_eq!(locks.len(), 1);
        assert!(locks.mutex("a").try_lock().is_err(), "the same mutex");
        drop(held);
        assert!(locks.mutex("a").try_lock().is_ok());
        // Claimed: a second claim names the first; released, claimable again.
        let m = locks.claim("b", "alice").unwrap();
        assert_eq!(locks.claim("b", "bob").unwrap_err().0, "alice");
        drop(m);
        assert_eq!(locks.len(), 1, "a claim keeps its entry");
        locks.release("b");
        assert_eq!(locks.len(), 0);
        assert!(locks.claim("b", "bob").is_ok());
        // A waiter keeps the entry too: the holder and it share one mutex.
        let m1 = locks.mutex("c");
        let g = m1.clone().try_lock_owned().unwrap();
        let waiter = locks.mutex("c");
        drop(m1);
        assert!(waiter.try_lock().is_err());
        drop(g);
        assert!(locks.mutex("c").try_lock().is_ok());
    }
}
