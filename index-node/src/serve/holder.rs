//! Holding index versions, the same way for both roles: load every desired version in the
//! background, retry a failed one with exponential backoff, publish its state, drop it once
//! the desired state no longer lists it. What "loading a version" means is the role's
//! [`Loader`]: a shard loads and warms its lists, a router its manifest, centroids and
//! evaluation set.
//!
//! There is one state per held version ([`Slot`]); Admin status, readiness and the
//! `quiver_version_*` metrics all read it. A dropped version leaves the map (and its metric
//! series are removed), so "dropped" is not a state anything can observe.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use super::metrics::VersionGauges;
use crate::versions::Desired;

/// First retry delay of a version that failed to load; doubles on every further failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// Longest delay between two retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the holder re-checks its desired state even without a change (retries are
/// due at most this much late).
pub const RECONCILE_EVERY: Duration = Duration::from_millis(100);

/// Delay before the next try after `attempts` consecutive failures: 2 s, 4 s, 8 s, … 5 min.
pub fn backoff(attempts: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(10))
        .min(MAX_BACKOFF)
}

/// What a role loads for one version.
pub trait Loader: Send + Sync + 'static {
    type Version: Send + Sync + 'static;

    /// Who loads, for log lines ("shard 0", "router").
    fn who(&self) -> String;

    /// Reads (and warms) one version; `held` are the versions loaded now, whose memory it may
    /// reuse.
    fn load(
        &self,
        version: &str,
        held: Vec<Arc<Self::Version>>,
    ) -> impl Future<Output = anyhow::Result<Self::Version>> + Send;

    /// Vectors and bytes held for a loaded version (bytes: `None` when not meaningful).
    fn size(v: &Self::Version) -> (u64, Option<u64>);
}

/// A failed load and when it is tried again.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: String,
    /// Consecutive failed loads.
    pub attempts: u32,
    pub next_retry: Instant,
}

impl Failure {
    pub fn due(&self) -> bool {
        Instant::now() >= self.next_retry
    }
}

/// The state of one held version.
pub enum Slot<V> {
    /// Being loaded (a retry when an earlier load failed).
    Loading,
    Warm(Arc<V>),
    Failed(Failure),
}

pub type Slots<V> = BTreeMap<String, Arc<Slot<V>>>;

pub struct VersionHolder<L: Loader> {
    loader: L,
    slots: ArcSwap<Slots<L::Version>>,
    /// Woken when a load finishes, so the role's loop acts on it at once.
    loaded: Notify,
    gauges: VersionGauges,
}

impl<L: Loader> VersionHolder<L> {
    pub fn new(loader: L, gauges: VersionGauges) -> Arc<Self> {
        Arc::new(Self {
            loader,
            slots: ArcSwap::from_pointee(BTreeMap::new()),
            loaded: Notify::new(),
            gauges,
        })
    }

    /// Every held version and its state.
    pub fn slots(&self) -> Arc<Slots<L::Version>> {
        self.slots.load_full()
    }

    pub fn get(&self, version: &str) -> Option<Arc<Slot<L::Version>>> {
        self.slots.load().get(version).cloned()
    }

    /// Puts a version in a state directly (tests start nodes with versions already held).
    #[cfg(test)]
    pub fn insert(&self, version: &str, slot: Slot<L::Version>) {
        let slot = Arc::new(slot);
        self.slots.rcu(|cur| {
            let mut m = BTreeMap::clone(cur);
            m.insert(version.to_string(), slot.clone());
            m
        });
    }

    /// Converges towards `desired`: drops versions it no longer lists, starts loading new
    /// ones and failed ones whose retry is due. `None` means the source has not said anything
    /// yet: nothing is dropped or added, only due retries run.
    pub fn converge(self: &Arc<Self>, desired: Option<&Desired>) {
        let current = self.slots.load_full();
        let wanted = |name: &str| desired.is_none_or(|d| d.versions.iter().any(|v| v == name));
        for name in current.keys().filter(|n| !wanted(n)) {
            tracing::info!(version = %name, node = %self.loader.who(), "dropping version");
            self.gauges.forget(name);
        }
        let mut to_load: Vec<(String, u32)> = current
            .iter()
            .filter_map(|(name, s)| match s.as_ref() {
                Slot::Failed(f) if f.due() && wanted(name) => Some((name.clone(), f.attempts)),
                _ => None,
            })
            .collect();
        if let Some(d) = desired {
            for v in &d.versions {
                if !current.contains_key(v) && !to_load.iter().any(|(n, _)| n == v) {
                    to_load.push((v.clone(), 0));
                }
            }
        }
        // rcu, not store: a load task may be publishing its result concurrently.
        self.slots.rcu(|cur| {
            let mut m: Slots<L::Version> = cur
                .iter()
                .filter(|(k, _)| wanted(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (name, _) in &to_load {
                let e = m
                    .entry(name.clone())
                    .or_insert_with(|| Arc::new(Slot::Loading));
                if matches!(**e, Slot::Failed(_)) {
                    *e = Arc::new(Slot::Loading);
                }
            }
            m
        });
        for (name, attempts) in to_load {
            let this = self.clone();
            tokio::spawn(async move { this.load(name, attempts).await });
        }
    }

    async fn load(self: Arc<Self>, version: String, attempts: u32) {
        let who = self.loader.who();
        tracing::info!(version = %version, node = %who, attempt = attempts + 1, "loading version");
        let started = Instant::now();
        let held = self
            .slots()
            .values()
            .filter_map(|s| match &**s {
                Slot::Warm(v) => Some(v.clone()),
                _ => None,
            })
            .collect();
        let slot = match self.loader.load(&version, held).await {
            Ok(v) => {
                let (vectors, bytes) = L::size(&v);
                tracing::info!(version = %version, node = %who, vectors, bytes = bytes.unwrap_or(0),
                    seconds = started.elapsed().as_secs_f64(), "version warm");
                Slot::Warm(Arc::new(v))
            }
            Err(e) => {
                let attempts = attempts + 1;
                let wait = backoff(attempts);
                let reason = format!("{e:#}");
                tracing::error!(version = %version, node = %who, reason = %reason, attempts,
                    retry_in_secs = wait.as_secs(), "version failed to load");
                Slot::Failed(Failure {
                    reason,
                    attempts,
                    next_retry: Instant::now() + wait,
                })
            }
        };
        let slot = Arc::new(slot);
        // Only replace our own Loading slot: the version may have been dropped meanwhile.
        self.slots.rcu(|cur| {
            let mut m = BTreeMap::clone(cur);
            if let Some(s) = m.get_mut(&version)
                && matches!(**s, Slot::Loading)
            {
                *s = slot.clone();
            }
            m
        });
        self.loaded.notify_one();
    }

    /// Waits for the next reason to converge again: a change of the desired state, a load
    /// that finished, or [`RECONCILE_EVERY`] (retries). A closed source keeps its last value.
    pub async fn wait(&self, desired: &mut watch::Receiver<Option<Desired>>, closed: &mut bool) {
        if *closed {
            tokio::select! {
                _ = self.loaded.notified() => {}
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
        } else {
            tokio::select! {
                r = desired.changed() => *closed = r.is_err(),
                _ = self.loaded.notified() => {}
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
        }
    }

    /// Per-version gauges: 0 loading, 1 warm, 2 active, -1 failed.
    pub fn publish(&self, active: Option<&str>) {
        for (name, slot) in self.slots.load().iter() {
            let state = match slot.as_ref() {
                Slot::Loading => 0,
                Slot::Warm(v) => {
                    let (vectors, bytes) = L::size(v);
                    self.gauges.sizes(name, vectors, bytes);
                    if active == Some(name.as_str()) { 2 } else { 1 }
                }
                Slot::Failed(_) => -1,
            };
            self.gauges.state(name, state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_to_five_minutes() {
        let secs: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
