//! Router role: holds the centroids and shard map of each loaded version, pins every query to
//! one version at its start, fans out only to the shards owning probed lists, retries another
//! replica on failure and merges the top-k.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus_client::metrics::histogram::Histogram;
use quiver_ivf::IvfIndex;
use quiver_proto::admin_client::AdminClient;
use quiver_proto::shard_client::ShardClient;
use quiver_proto::{
    BatchSearchRequest, BatchSearchResponse, Counters, SearchRequest, SearchResponse,
    ShardSearchRequest, StatusRequest, VersionState as PbState,
};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::batcher::{self, Batcher};
use super::holder::{self, Loader, VersionHolder};
use super::metrics::VersionGauges;
use super::{Ctx, Node, validate};
use crate::discovery::Replicas;
use crate::loader::{self, Eval};
use crate::manifest::Manifest;
use crate::versions::Desired;

pub struct RouterVersion {
    pub name: String,
    pub manifest: Manifest,
    pub quantizer: IvfIndex,
    /// list id -> shard.
    pub owners: Vec<u32>,
    pub probes: Vec<AtomicU64>,
    pub eval: Option<Eval>,
    /// Queries pinned to this version and not answered yet (see [`InFlight`]).
    pub inflight: AtomicU64,
    /// Live queries by nearest-centroid distance against the reference (None without one).
    pub drift: Option<Drift>,
}

/// Buckets of the drift histogram: the reference's ventiles.
pub const DRIFT_BUCKETS: usize = 20;
/// Fewer reference distances than this give too coarse ventiles (two per bucket) to compare
/// live traffic with.
const DRIFT_MIN_REFERENCE: usize = 2 * DRIFT_BUCKETS;

/// Query drift of one version: live queries counted by their distance to the nearest
/// centroid, in buckets that each hold 1/20 of the reference distribution (the version's
/// held-out evaluation vectors). Uniform counts mean live queries look like the data; the
/// operator compares them with the reference (Kolmogorov–Smirnov).
pub struct Drift {
    /// The 19 inner ventile edges of the reference, ascending.
    pub edges: Vec<f32>,
    /// Live queries per bucket (`DRIFT_BUCKETS`), see [`drift_bucket`].
    pub counts: Vec<AtomicU64>,
}

impl Drift {
    pub fn new(edges: Vec<f32>) -> Self {
        Drift {
            counts: (0..=edges.len()).map(|_| AtomicU64::new(0)).collect(),
            edges,
        }
    }

    /// The reference of a version: nearest-centroid distances of its evaluation queries.
    /// None without evaluation queries or with too few of them.
    pub fn from_eval(quantizer: &IvfIndex, eval: Option<&Eval>) -> Option<Drift> {
        let eval = eval?;
        let distances = (0..eval.queries.len())
            .filter_map(|i| quantizer.probe_with_distance(eval.queries.row(i), 1).ok())
            .map(|(_, d)| d)
            .collect();
        reference_edges(distances).map(Drift::new)
    }

    /// Counts one live query (lock- and allocation-free: this runs on every query).
    pub fn record(&self, distance: f32) {
        if let Some(c) = drift_bucket(&self.edges, distance).and_then(|b| self.counts.get(b)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// Ventile edges of reference distances: non-finite ones skipped, None if fewer than
/// `DRIFT_MIN_REFERENCE` remain.
pub fn reference_edges(mut distances: Vec<f32>) -> Option<Vec<f32>> {
    distances.retain(|d| d.is_finite());
    distances.sort_unstable_by(f32::total_cmp);
    ventile_edges(&distances)
}

/// The 19 inner ventile edges (5 %, 10 %, ..., 95 %) of ascending `sorted`, by nearest rank
/// (the ⌈p·n⌉-th smallest); None if it has fewer than `DRIFT_MIN_REFERENCE` values.
pub fn ventile_edges(sorted: &[f32]) -> Option<Vec<f32>> {
    let n = sorted.len();
    if n < DRIFT_MIN_REFERENCE {
        return None;
    }
    (1..DRIFT_BUCKETS)
        .map(|j| sorted.get((j * n).div_ceil(DRIFT_BUCKETS) - 1).copied())
        .collect()
}

/// The bucket of `distance`: i when edges[i-1] <= distance < edges[i] (0 below the first
/// edge, the last at or above the last edge; with tied edges, the highest of them). None
/// for NaN, which has no place in the order.
pub fn drift_bucket(edges: &[f32], distance: f32) -> Option<usize> {
    if distance.is_nan() {
        return None;
    }
    Some(edges.partition_point(|e| *e <= distance))
}

/// How a query was asked.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    /// Answer without the shards that failed (named in `missing_shards`).
    pub allow_partial: bool,
    /// Live traffic, counted for drift. Admin/Evaluate (the operator's gate) asks the
    /// reference queries themselves: counting them would pull the live distribution
    /// toward the reference and hide drift.
    pub live: bool,
}

/// Counts a query on its pinned version for as long as it runs, so that Admin status can
/// tell the operator when a draining version has no query left.
pub struct InFlight(Arc<RouterVersion>);

impl InFlight {
    pub fn new(v: Arc<RouterVersion>) -> Self {
        v.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(v)
    }
}

impl std::ops::Deref for InFlight {
    type Target = Arc<RouterVersion>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Loads what a router needs of a version: manifest, centroids, evaluation set.
pub struct RouterLoader {
    pub ctx: Ctx,
}

impl Loader for RouterLoader {
    type Version = RouterVersion;

    fn who(&self) -> String {
        "router".into()
    }

    async fn load(
        &self,
        version: &str,
        _held: Vec<Arc<RouterVersion>>,
    ) -> anyhow::Result<RouterVersion> {
        let c = &self.ctx;
        let manifest = loader::read_manifest(&c.storage, &c.namespace, &c.index, version).await?;
        let quantizer =
            loader::read_quantizer(&c.storage, &c.namespace, &c.index, &manifest).await?;
        let eval = loader::read_eval(&c.storage, &c.namespace, &c.index, &manifest).await?;
        let drift = Drift::from_eval(&quantizer, eval.as_ref());
        if drift.is_none() {
            tracing::info!(
                version,
                eval_queries = eval.as_ref().map(|e| e.queries.len()),
                "no query drift reference (no or too few evaluation queries)"
            );
        }
        Ok(RouterVersion {
            name: version.to_string(),
            owners: manifest.list_owners(),
            probes: (0..manifest.nlist).map(|_| AtomicU64::new(0)).collect(),
            manifest,
            quantizer,
            eval,
            inflight: AtomicU64::new(0),
            drift,
        })
    }

    fn size(v: &RouterVersion) -> (u64, Option<u64>) {
        (v.manifest.ntotal, None)
    }
}

pub type Slot = holder::Slot<RouterVersion>;

struct Replica {
    addr: String,
    calls: Arc<Batcher>,
    /// The replica's Admin service (same connection), asked before switching versions.
    admin: AdminClient<Channel>,
    /// Milliseconds since `RouterState::epoch` until which the replica is skipped.
    down_until: AtomicU64,
    failures: FailureLog,
}

/// Rate-limits the log line of failing calls to one replica: at most one line per
/// `LOG_EVERY`, carrying how many calls failed since the previous line.
pub(crate) struct FailureLog {
    /// Milliseconds (router epoch) of the last line; `NEVER` before the first.
    last_ms: AtomicU64,
    count: AtomicU64,
}

const NEVER: u64 = u64::MAX;
const LOG_EVERY_MS: u64 = 1000;

impl FailureLog {
    pub(crate) fn new() -> Self {
        Self {
            last_ms: AtomicU64::new(NEVER),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one failure; returns the failures to report when a line is due now.
    pub(crate) fn record(&self, now_ms: u64) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == NEVER || now_ms >= last.saturating_add(LOG_EVERY_MS);
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.count.swap(0, Ordering::Relaxed))
        } else {
            None
        }
    }
}

/// Why the desired active version is not active yet (routers report it in Admin status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub version: String,
    pub reason: String,
}

struct Pool {
    shards: BTreeMap<u32, Vec<Arc<Replica>>>,
}

pub struct RouterState {
    pub ctx: Ctx,
    pub holder: Arc<VersionHolder<RouterLoader>>,
    /// The version new queries pin to: swapped atomically, read once per query.
    pub active: ArcSwapOption<RouterVersion>,
    /// The desired active version while the router refuses to switch to it, and why.
    pub pending: ArcSwapOption<Pending>,
    /// `spec.index.nprobe` as last desired (0: unset, each manifest's default applies).
    nprobe: AtomicU32,
    pool: ArcSwap<Pool>,
    rr: AtomicUsize,
    epoch: Instant,
    shard_timeout: Duration,
    /// Calls in flight per replica before further queries wait and go out as one batch.
    shard_inflight: usize,
    batch_sizes: Histogram,
    replicas: watch::Receiver<Option<Replicas>>,
}

/// How long a failed replica is skipped before it is tried again.
const DOWN_FOR: Duration = Duration::from_millis(1000);

impl RouterState {
    pub fn new(
        ctx: Ctx,
        replicas: watch::Receiver<Option<Replicas>>,
        shard_timeout: Duration,
        shard_inflight: usize,
        batch_sizes: Histogram,
        gauges: VersionGauges,
    ) -> Arc<Self> {
        Arc::new(Self {
            holder: VersionHolder::new(RouterLoader { ctx: ctx.clone() }, gauges),
            ctx,
            active: ArcSwapOption::empty(),
            pending: ArcSwapOption::empty(),
            nprobe: AtomicU32::new(0),
            pool: ArcSwap::from_pointee(Pool {
                shards: BTreeMap::new(),
            }),
            rr: AtomicUsize::new(0),
            epoch: Instant::now(),
            shard_timeout,
            shard_inflight: shard_inflight.max(1),
            batch_sizes,
            replicas,
        })
    }

    /// The nprobe a query to `v` gets when it does not say: the desired default (capped at
    /// `v`'s nlist by [`validate::nprobe`]), else `v`'s manifest default.
    pub fn default_nprobe(&self, v: &RouterVersion) -> usize {
        match self.nprobe.load(Ordering::Relaxed) {
            0 => v.manifest.default_nprobe,
            n => n as usize,
        }
    }

    pub fn readiness(&self) -> (bool, String) {
        match self.active.load().as_ref() {
            Some(v) => (true, format!("serving {}", v.name)),
            None => (false, "no active version loaded".into()),
        }
    }

    pub fn start(self: Arc<Self>, node: Arc<Node>, mut desired: watch::Receiver<Option<Desired>>) {
        let this = self.clone();
        let mut replicas = self.replicas.clone();
        tokio::spawn(async move {
            loop {
                // Unknown (nothing read yet): keep the replicas we have.
                let r = replicas.borrow_and_update().clone();
                if let Some(r) = r {
                    this.set_replicas(&r);
                }
                if replicas.changed().await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            // Also on every finished load and every 100 ms: a version that finishes loading
            // may be the desired active one, and shards may have finished warming it.
            let mut closed = false;
            loop {
                let d = desired.borrow_and_update().clone();
                self.holder.converge(d.as_ref());
                if let Some(d) = &d {
                    self.nprobe.store(d.nprobe.unwrap_or(0), Ordering::Relaxed);
                    self.activate(d).await;
                }
                self.publish(&node);
                self.holder.wait(&mut desired, &mut closed).await;
            }
        });
    }

    fn set_replicas(&self, r: &Replicas) {
        let old = self.pool.load();
        let mut shards = BTreeMap::new();
        for (&shard, addrs) in r {
            let mut list = Vec::new();
            for addr in addrs {
                // Reuse the connection (and health) of replicas we already know.
                let existing = old
                    .shards
                    .get(&shard)
                    .and_then(|v| v.iter().find(|x| &x.addr == addr).cloned());
                let rep = match existing {
                    Some(e) => e,
                    None => match Endpoint::from_shared(format!("http://{addr}")) {
                        Ok(ep) => {
                            let channel = ep
                                .connect_timeout(Duration::from_millis(500))
                                .tcp_nodelay(true)
                                .connect_lazy();
                            let limit = batcher::message_limit(self.ctx.max_k as usize);
                            Arc::new(Replica {
                                addr: addr.clone(),
                                calls: Arc::new(Batcher::new(
                                    ShardClient::new(channel.clone())
                                        .max_decoding_message_size(limit)
                                        .max_encoding_message_size(limit),
                                    self.shard_inflight,
                                    self.ctx.max_batch,
                                    self.shard_timeout,
                                    self.batch_sizes.clone(),
                                )),
                                admin: AdminClient::new(channel),
                                down_until: AtomicU64::new(0),
                                failures: FailureLog::new(),
                            })
                        }
                        Err(e) => {
                            tracing::warn!(addr = %addr, error = %e, "bad replica address");
                            continue;
                        }
                    },
                };
                list.push(rep);
            }
            shards.insert(shard, list);
        }
        self.pool.store(Arc::new(Pool { shards }));
    }

    /// Switches to the desired active version once this router holds it and every shard of
    /// its map holds it warm on at least one replica; until then the current version keeps
    /// serving and `pending` (Admin status, and a log line whenever the reason changes) says
    /// why. Switching is one pointer swap.
    async fn activate(&self, d: &Desired) {
        let Some(want) = &d.active else {
            self.pending.store(None);
            return;
        };
        let cur = self.active.load_full();
        if cur.as_ref().map(|v| &v.name) == Some(want) {
            self.pending.store(None);
            return;
        }
        let ready = match self.holder.get(want).as_deref() {
            Some(Slot::Warm(v)) => match self.shards_hold(v).await {
                Ok(()) => Ok(v.clone()),
                Err(e) => Err(e),
            },
            Some(Slot::Loading) => Err("still loading on this router".to_string()),
            Some(Slot::Failed(f)) => Err(format!("failed to load on this router: {}", f.reason)),
            None => Err("not among the versions to hold".to_string()),
        };
        match ready {
            Ok(v) => {
                tracing::info!(from = ?cur.as_ref().map(|v| v.name.clone()), to = %want, "switching active version");
                self.active.store(Some(v));
                self.pending.store(None);
            }
            Err(reason) => {
                let p = Pending {
                    version: want.clone(),
                    reason,
                };
                if self.pending.load().as_deref() != Some(&p) {
                    tracing::warn!(version = %p.version, reason = %p.reason,
                        serving = ?cur.as_ref().map(|v| v.name.clone()),
                        "not switching to the desired active version yet");
                    self.pending.store(Some(Arc::new(p)));
                }
            }
        }
    }

    /// Ok when every shard that owns lists in `v`'s map has a replica that reports `v` warm
    /// (asked through the replicas' Admin status); else which shards do not, and why.
    async fn shards_hold(&self, v: &RouterVersion) -> Result<(), String> {
        let pool = self.pool.load_full();
        let checks = v
            .manifest
            .shards
            .iter()
            .filter(|e| !e.lists.is_empty())
            .map(|e| {
                let replicas = pool.shards.get(&e.shard).cloned().unwrap_or_default();
                async move {
                    if replicas.is_empty() {
                        return Err(format!("shard {}: no replica known", e.shard));
                    }
                    let asks = replicas.iter().map(|r| replica_holds(r, &v.name));
                    let said = futures::future::join_all(asks).await;
                    if said.iter().any(|s| s.is_ok()) {
                        Ok(())
                    } else {
                        let why: Vec<String> = replicas
                            .iter()
                            .zip(said)
                            .filter_map(|(r, s)| s.err().map(|e| format!("{} {e}", r.addr)))
                            .collect();
                        Err(format!(
                            "shard {} holds it warm on no replica ({})",
                            e.shard,
                            why.join("; ")
                        ))
                    }
                }
            });
        let missing: Vec<String> = futures::future::join_all(checks)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("; "))
        }
    }

    fn publish(&self, node: &Node) {
        let now = self.now_ms();
        for (shard, reps) in &self.pool.load().shards {
            let up = reps
                .iter()
                .filter(|r| r.down_until.load(Ordering::Relaxed) <= now)
                .count();
            let l = |s: &str| vec![("shard", shard.to_string()), ("state", s.to_string())];
            node.metrics
                .shard_replicas
                .get_or_create(&l("up"))
                .set(up as i64);
            node.metrics
                .shard_replicas
                .get_or_create(&l("down"))
                .set((reps.len() - up) as i64);
        }
        let active = self.active.load();
        self.holder
            .publish(active.as_ref().map(|a| a.name.as_str()));
    }

    /// Pins a version: the requested one (must be loaded) or the active one, read once.
    pub fn pin(&self, requested: Option<&str>) -> Result<Arc<RouterVersion>, Status> {
        match requested {
            Some(name) => {
                validate::version_name(name)?;
                match self.holder.get(name).as_deref() {
                    Some(Slot::Warm(v)) => Ok(v.clone()),
                    Some(Slot::Loading) => Err(Status::unavailable(format!(
                        "version {name} is still loading"
                    ))),
                    Some(Slot::Failed(f)) => Err(Status::unavailable(format!(
                        "version {name} failed to load: {}",
                        f.reason
                    ))),
                    None => Err(Status::not_found(format!(
                        "version: {name} is not served by this router"
                    ))),
                }
            }
            None => self
                .active
                .load_full()
                .ok_or_else(|| Status::unavailable("no active version")),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// One warning per replica per second at most, with the failures counted since the last.
    fn log_failure(&self, shard: u32, rep: &Replica, s: &Status) {
        if let Some(count) = rep.failures.record(self.now_ms()) {
            tracing::warn!(shard, replica = %rep.addr, code = ?s.code(), error = %s.message(),
                count, "shard calls failing");
        }
    }

    /// One query on a pinned version.
    pub async fn search_one(
        &self,
        node: &Node,
        v: &Arc<RouterVersion>,
        vector: &[f32],
        k: usize,
        nprobe: usize,
        asked: Asked,
    ) -> Result<SearchResponse, Status> {
        let (lists, nearest) = v
            .quantizer
            .probe_with_distance(vector, nprobe)
            .map_err(|e| Status::invalid_argument(format!("vector: {e}")))?;
        if asked.live
            && let Some(drift) = &v.drift
        {
            drift.record(nearest);
        }
        let allow_partial = asked.allow_partial;
        let mut by_shard: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for &l in &lists {
            // Per-list load is live traffic's: the gate's replay would skew it.
            if asked.live
                && let Some(p) = v.probes.get(l as usize)
            {
                p.fetch_add(1, Ordering::Relaxed);
            }
            let owner = v.owners.get(l as usize).copied().unwrap_or(0);
            by_shard.entry(owner).or_default().push(l);
        }
        let calls = by_shard
            .iter()
            .map(|(&shard, lists)| self.ask_shard(node, &v.name, shard, vector, k, lists.clone()));
        let answers = futures::future::join_all(calls).await;
        let mut hits: Vec<(u64, f32)> = Vec::new();
        let mut candidates = 0u64;
        let mut missing = Vec::new();
        for ((&shard, _), a) in by_shard.iter().zip(answers) {
            match a {
                Ok(r) => {
                    candidates += r.candidates_scanned;
                    hits.extend(r.ids.into_iter().zip(r.distances));
                }
                Err(e) if allow_partial => {
                    tracing::debug!(shard, error = %e.message(), "shard missing from answer");
                    missing.push(shard);
                }
                Err(e) => return Err(e),
            }
        }
        hits.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        hits.truncate(k);
        node.metrics.nprobe.observe(lists.len() as f64);
        node.metrics.candidates.observe(candidates as f64);
        Ok(SearchResponse {
            ids: hits.iter().map(|h| h.0).collect(),
            distances: hits.iter().map(|h| h.1).collect(),
            version: v.name.clone(),
            counters: Some(Counters {
                lists_probed: lists.len() as u32,
                candidates_scanned: candidates,
                shards_asked: by_shard.len() as u32,
            }),
            missing_shards: missing,
        })
    }

    /// Asks one replica of `shard`, trying the others on failure. Healthy replicas first in
    /// round-robin order; replicas marked down are tried last rather than never.
    async fn ask_shard(
        &self,
        node: &Node,
        version: &str,
        shard: u32,
        vector: &[f32],
        k: usize,
        lists: Vec<u32>,
    ) -> Result<quiver_proto::ShardSearchResponse, Status> {
        let pool = self.pool.load_full();
        let Some(replicas) = pool.shards.get(&shard).filter(|r| !r.is_empty()) else {
            node.metrics
                .shard_calls
                .get_or_create(&vec![
                    ("shard", shard.to_string()),
                    ("outcome", "no_replica".into()),
                ])
                .inc();
            return Err(Status::unavailable(format!(
                "shard {shard}: no replica known"
            )));
        };
        let now = self.now_ms();
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<&Arc<Replica>> = (0..replicas.len())
            .map(|i| &replicas[(start + i) % replicas.len()])
            .collect();
        order.sort_by_key(|r| r.down_until.load(Ordering::Relaxed) > now);
        let mut req = Some(ShardSearchRequest {
            version: version.to_string(),
            vector: vector.to_vec(),
            k: k as u32,
            lists,
        });
        let mut last = Status::unavailable(format!("shard {shard}: no replica answered"));
        let tries = order.len();
        for (attempt, rep) in order.into_iter().enumerate() {
            let started = Instant::now();
            // Copy the request only when another replica may still need it.
            let this = if attempt + 1 < tries {
                req.clone()
            } else {
                req.take()
            };
            let Some(this) = this else { break };
            // The deadline covers the wait for a batch slot as well as the call.
            let res = tokio::time::timeout(self.shard_timeout, rep.calls.call(this)).await;
            let outcome = match res {
                Ok(Ok(resp)) => {
                    if resp.version == version {
                        Ok(resp)
                    } else {
                        // Never merge an answer from another version.
                        Err(Status::internal(format!(
                            "replica {} answered version {} for {version}",
                            rep.addr, resp.version
                        )))
                    }
                }
                Ok(Err(s)) => Err(s),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "replica {} timed out",
                    rep.addr
                ))),
            };
            let labels = |o: &str| vec![("shard", shard.to_string()), ("outcome", o.to_string())];
            match outcome {
                Ok(resp) => {
                    node.metrics
                        .shard_seconds
                        .get_or_create(&vec![("shard", shard.to_string())])
                        .observe(started.elapsed().as_secs_f64());
                    node.metrics
                        .shard_calls
                        .get_or_create(&labels(if attempt == 0 { "ok" } else { "ok_after_retry" }))
                        .inc();
                    return Ok(resp);
                }
                Err(s) if s.code() == Code::InvalidArgument => {
                    // Our own request was wrong for this shard (shard map mismatch): retrying
                    // elsewhere would not help and must not be reported as the client's fault.
                    node.metrics
                        .shard_calls
                        .get_or_create(&labels("error"))
                        .inc();
                    self.log_failure(shard, rep, &s);
                    return Err(Status::internal(format!(
                        "shard {shard} replica {} rejected the request: {}",
                        rep.addr,
                        s.message()
                    )));
                }
                Err(s) => {
                    node.metrics
                        .shard_calls
                        .get_or_create(&labels("error"))
                        .inc();
                    self.log_failure(shard, rep, &s);
                    // A replica refusing this version (still loading it) is up and serves
                    // other versions: try the next one without marking it down.
                    if s.metadata().get(super::REFUSED_HEADER).is_none() {
                        rep.down_until.store(
                            self.now_ms() + DOWN_FOR.as_millis() as u64,
                            Ordering::Relaxed,
                        );
                    }
                    last = Status::unavailable(format!(
                        "shard {shard}: replica {} failed: {}",
                        rep.addr,
                        s.message()
                    ));
                }
            }
        }
        Err(last)
    }
}

/// Asks one replica whether it holds `version` warm.
async fn replica_holds(rep: &Replica, version: &str) -> Result<(), String> {
    let mut admin = rep.admin.clone();
    let mut req = Request::new(StatusRequest {});
    req.set_timeout(STATUS_TIMEOUT);
    let st = match tokio::time::timeout(STATUS_TIMEOUT, admin.status(req)).await {
        Ok(Ok(st)) => st.into_inner(),
        Ok(Err(e)) => return Err(format!("unreachable: {}", e.message())),
        Err(_) => return Err("status timed out".into()),
    };
    match st.versions.iter().find(|v| v.version == version) {
        Some(v) if v.state == PbState::Warm as i32 || v.state == PbState::Active as i32 => Ok(()),
        Some(v) if v.state == PbState::Failed as i32 => Err(format!("failed: {}", v.reason)),
        Some(v) if v.state == PbState::Loading as i32 => Err("loading".into()),
        Some(_) => Err("in an unknown state".into()),
        None => Err("does not hold it".into()),
    }
}

/// Deadline of one Admin status call to a replica before a version switch.
const STATUS_TIMEOUT: Duration = Duration::from_millis(1000);

/// Clients' queries (the Query service): live traffic.
fn live(allow_partial: bool) -> Asked {
    Asked {
        allow_partial,
        live: true,
    }
}

pub struct QuerySvc {
    pub state: Arc<RouterState>,
    pub node: Arc<Node>,
}

impl QuerySvc {
    fn params(
        &self,
        v: &RouterVersion,
        k: u32,
        nprobe: Option<u32>,
    ) -> Result<(usize, usize), Status> {
        let k = validate::k(k, self.state.ctx.max_k)?;
        let default = self.state.default_nprobe(v);
        let nprobe = validate::nprobe(nprobe, default, v.manifest.nlist)?;
        Ok((k, nprobe))
    }

    fn record<T>(&self, started: Instant, n: usize, r: &Result<T, Status>, version: Option<&str>) {
        match r {
            Ok(_) => {
                let per = started.elapsed().as_secs_f64() / n.max(1) as f64;
                for _ in 0..n {
                    self.node.metrics.query_seconds.observe(per);
                }
                if let Some(v) = version {
                    self.node
                        .metrics
                        .answers_by_version
                        .get_or_create(&vec![("version", v.to_string())])
                        .inc_by(n as u64);
                }
            }
            Err(s) => self.node.metrics.error(s.code()),
        }
    }
}

#[tonic::async_trait]
impl quiver_proto::query_server::Query for QuerySvc {
    async fn search(
        &self,
        req: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        self.node.metrics.inflight.inc();
        let r = async {
            let v = InFlight::new(self.state.pin(req.version.as_deref())?);
            validate::vector("vector", &req.vector, v.manifest.dim)?;
            let (k, nprobe) = self.params(&v, req.k, req.nprobe)?;
            self.state
                .search_one(
                    &self.node,
                    &v,
                    &req.vector,
                    k,
                    nprobe,
                    live(req.allow_partial),
                )
                .await
        }
        .await;
        self.node.metrics.inflight.dec();
        self.record(started, 1, &r, r.as_ref().ok().map(|r| r.version.as_str()));
        r.map(Response::new)
    }

    async fn batch_search(
        &self,
        req: Request<BatchSearchRequest>,
    ) -> Result<Response<BatchSearchResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let n = req.queries.len();
        self.node.metrics.inflight.inc();
        let r = async {
            if req.queries.is_empty() {
                return Err(Status::invalid_argument("queries: empty"));
            }
            if req.queries.len() > self.state.ctx.max_batch {
                return Err(Status::invalid_argument(format!(
                    "queries: {} exceeds the maximum batch of {}",
                    req.queries.len(),
                    self.state.ctx.max_batch
                )));
            }
            // One pin for the whole batch: every answer comes from the same version.
            let v = InFlight::new(self.state.pin(req.version.as_deref())?);
            let (k, nprobe) = self.params(&v, req.k, req.nprobe)?;
            for (i, q) in req.queries.iter().enumerate() {
                validate::vector(&format!("queries[{i}].values"), &q.values, v.manifest.dim)?;
            }
            let all = req.queries.iter().map(|q| {
                self.state.search_one(
                    &self.node,
                    &v,
                    &q.values,
                    k,
                    nprobe,
                    live(req.allow_partial),
                )
            });
            let results = futures::future::try_join_all(all).await?;
            Ok(BatchSearchResponse {
                results,
                version: v.name.clone(),
            })
        }
        .await;
        self.node.metrics.inflight.dec();
        self.record(started, n, &r, r.as_ref().ok().map(|r| r.version.as_str()));
        r.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 0..1000: the j-th edge is the ⌈50j⌉-th smallest, 50j − 1; every bucket then holds 50
    /// of the reference (49 and 51 at the ends, the edge value going to the bucket above).
    #[test]
    fn ventiles_of_a_uniform_reference() {
        let sorted: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let edges = ventile_edges(&sorted).expect("edges");
        let want: Vec<f32> = (1..20).map(|j| (50 * j - 1) as f32).collect();
        assert_eq!(edges, want);
        let mut counts = [0usize; DRIFT_BUCKETS];
        for &d in &sorted {
            counts[drift_bucket(&edges, d).expect("bucket")] += 1;
        }
        assert_eq!(counts[0], 49);
        assert!(counts[1..19].iter().all(|&c| c == 50), "{counts:?}");
        assert_eq!(counts[19], 51);
        assert_eq!(drift_bucket(&edges, -1.0), Some(0));
        assert_eq!(drift_bucket(&edges, 48.9), Some(0));
        assert_eq!(drift_bucket(&edges, 49.0), Some(1));
        assert_eq!(drift_bucket(&edges, 949.0), Some(19));
        assert_eq!(drift_bucket(&edges, f32::INFINITY), Some(19));
        assert_eq!(drift_bucket(&edges, f32::NAN), None);
    }

    /// Tied edges leave the buckets between them empty: a tied value goes to the highest.
    #[test]
    fn tied_reference_values() {
        let all_same = vec![5.0f32; 100];
        let edges = ventile_edges(&all_same).expect("edges");
        assert!(edges.iter().all(|&e| e == 5.0));
        assert_eq!(drift_bucket(&edges, 5.0), Some(19));
        assert_eq!(drift_bucket(&edges, 4.9), Some(0));

        // Half zeros, half ones: the 10th ventile (the 50th smallest) is still 0.
        let halves: Vec<f32> = (0..100).map(|i| if i < 50 { 0.0 } else { 1.0 }).collect();
        let edges = ventile_edges(&halves).expect("edges");
        assert_eq!(edges.iter().filter(|&&e| e == 0.0).count(), 10);
        assert_eq!(drift_bucket(&edges, 0.0), Some(10));
        assert_eq!(drift_bucket(&edges, 0.5), Some(10));
        assert_eq!(drift_bucket(&edges, 1.0), Some(19));
    }

    #[test]
    fn too_small_or_non_finite_references_give_none() {
        let sorted: Vec<f32> = (0..39).map(|i| i as f32).collect();
        assert_eq!(ventile_edges(&sorted), None);
        assert_eq!(ventile_edges(&[]), None);
        let forty: Vec<f32> = (0..40).map(|i| i as f32).collect();
        assert_eq!(ventile_edges(&forty).map(|e| e.len()), Some(19));

        // NaN and infinities are skipped before counting, in any input order.
        let mut d: Vec<f32> = (0..39).rev().map(|i| i as f32).collect();
        d.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        assert_eq!(reference_edges(d.clone()), None);
        d.push(39.0);
        assert_eq!(reference_edges(d), ventile_edges(&forty));
    }

    #[test]
    fn drift_records_into_its_bucket() {
        let sorted: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let drift = Drift::new(ventile_edges(&sorted).expect("edges"));
        assert_eq!(drift.counts.len(), DRIFT_BUCKETS);
        for d in [0.0, 60.0, 60.0, 5000.0, f32::NAN] {
            drift.record(d);
        }
        let mut want = vec![0u64; DRIFT_BUCKETS];
        (want[0], want[1], want[19]) = (1, 2, 1);
        assert_eq!(drift.counts(), want);
    }
}
