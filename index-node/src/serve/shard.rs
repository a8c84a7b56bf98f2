//! Shard role: holds the lists the shard map gives this shard, per version, and scans them for
//! routers. A version it does not hold warm is refused with UNAVAILABLE; it never answers from
//! another version.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use quiver_ivf::IvfIndex;
use quiver_proto::shard_batch_result::Result as BatchResult;
use quiver_proto::{
    ShardBatchResult, ShardBatchSearchRequest, ShardBatchSearchResponse, ShardQueryError,
    ShardSearchRequest, ShardSearchResponse,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::holder::{self, Loader, VersionHolder};
use super::metrics::VersionGauges;
use super::{Ctx, Node, validate};
use crate::loader::{self, Held, ListSource, LoadedLists};
use crate::manifest::Manifest;
use crate::versions::Desired;

pub struct ShardVersion {
    pub manifest: Manifest,
    pub index: IvfIndex,
    /// list id -> served by this shard.
    pub owned: Vec<bool>,
    /// list id -> entries held here.
    pub sizes: Vec<u64>,
    /// list id -> the files its entries came from (a later version reuses equal ones).
    pub sources: Vec<ListSource>,
    pub probes: Vec<AtomicU64>,
    pub vectors: u64,
    pub bytes: u64,
}

/// Loads this shard's lists of a version and warms them.
pub struct ShardLoader {
    pub ctx: Ctx,
    pub shard: u32,
}

impl Loader for ShardLoader {
    type Version = ShardVersion;

    fn who(&self) -> String {
        format!("shard {}", self.shard)
    }

    async fn load(
        &self,
        version: &str,
        held: Vec<Arc<ShardVersion>>,
    ) -> anyhow::Result<ShardVersion> {
        let c = &self.ctx;
        let m = loader::read_manifest(&c.storage, &c.namespace, &c.index, version).await?;
        let entry = m.shard(self.shard).ok_or_else(|| {
            anyhow::anyhow!(
                "shard {} is not in the shard map of version {version} ({} shards)",
                self.shard,
                m.shards.len()
            )
        })?;
        let lists = entry.lists.clone();
        let reuse: Vec<Held<'_>> = held
            .iter()
            .map(|h| Held {
                index: &h.index,
                sources: &h.sources,
            })
            .collect();
        let LoadedLists {
            index,
            sizes,
            bytes,
            sources,
            reused,
        } = loader::load_lists(&c.storage, &c.namespace, &c.index, &m, &lists, &reuse).await?;
        drop(reuse);
        if reused > 0 {
            tracing::info!(
                version,
                shard = self.shard,
                reused,
                fetched = lists.len() - reused,
                bytes_fetched = bytes,
                "lists reused from a held version's memory"
            );
        }
        let mut owned = vec![false; m.nlist];
        for &l in &lists {
            owned[l as usize] = true;
        }
        let vectors = sizes.iter().sum();
        let v = ShardVersion {
            probes: (0..m.nlist).map(|_| AtomicU64::new(0)).collect(),
            manifest: m,
            index,
            owned,
            sizes,
            sources,
            vectors,
            bytes,
        };
        // Warm: replay the evaluation queries that hit our lists (touches the pages and the
        // code paths a real query takes) before reporting the version warm.
        let eval = loader::read_eval(&c.storage, &c.namespace, &c.index, &v.manifest).await?;
        let v = tokio::task::spawn_blocking(move || {
            if let Some(eval) = eval {
                let nprobe = v.manifest.default_nprobe.max(1);
                for i in 0..eval.queries.len() {
                    let q = eval.queries.row(i);
                    let Ok(probed) = v.index.probe(q, nprobe) else {
                        continue;
                    };
                    let mine: Vec<u32> = probed
                        .into_iter()
                        .filter(|&l| v.owned[l as usize])
                        .collect();
                    if !mine.is_empty() {
                        let _ = v.index.search_lists(q, 10, &mine, 0);
                    }
                }
            }
            v
        })
        .await?;
        Ok(v)
    }

    fn size(v: &ShardVersion) -> (u64, Option<u64>) {
        (v.vectors, Some(v.bytes))
    }
}

pub type Slot = holder::Slot<ShardVersion>;

pub struct ShardState {
    pub ctx: Ctx,
    pub shard: u32,
    pub holder: Arc<VersionHolder<ShardLoader>>,
    pub active: ArcSwap<Option<String>>,
}

impl ShardState {
    pub fn new(ctx: Ctx, shard: u32, gauges: VersionGauges) -> Arc<Self> {
        Arc::new(Self {
            holder: VersionHolder::new(
                ShardLoader {
                    ctx: ctx.clone(),
                    shard,
                },
                gauges,
            ),
            ctx,
            shard,
            active: ArcSwap::from_pointee(None),
        })
    }

    /// Ready when the active version (or, with none, every held version) is loaded.
    pub fn readiness(&self) -> (bool, String) {
        let versions = self.holder.slots();
        let active = self.active.load();
        match active.as_ref() {
            Some(a) => match versions.get(a).map(|s| s.as_ref()) {
                Some(Slot::Warm(_)) => (true, format!("serving {a}")),
                Some(Slot::Loading) => (false, format!("active version {a} is loading")),
                Some(Slot::Failed(f)) => {
                    (false, format!("active version {a} failed: {}", f.reason))
                }
                None => (false, format!("active version {a} is not held")),
            },
            None => {
                if versions.values().any(|s| matches!(**s, Slot::Loading)) {
                    (false, "loading".into())
                } else if versions.values().any(|s| matches!(**s, Slot::Warm(_))) {
                    (true, "serving".into())
                } else {
                    (false, "no version loaded".into())
                }
            }
        }
    }

    /// Converges to the desired versions: load new ones in the background, drop removed ones.
    /// While the desired state is unknown (`None`) it holds what it has.
    pub fn start(self: Arc<Self>, mut desired: watch::Receiver<Option<Desired>>) {
        tokio::spawn(async move {
            let mut closed = false;
            loop {
                let d = desired.borrow_and_update().clone();
                if let Some(d) = &d {
                    self.active.store(Arc::new(d.active.clone()));
                }
                self.holder.converge(d.as_ref());
                self.holder.publish(self.active.load().as_deref());
                self.holder.wait(&mut desired, &mut closed).await;
            }
        });
    }

    pub fn get(&self, version: &str) -> Result<Arc<ShardVersion>, Status> {
        let r = match self.holder.get(version).as_deref() {
            Some(Slot::Warm(v)) => Ok(v.clone()),
            Some(Slot::Loading) => Err(Status::unavailable(format!(
                "version {version} is still loading on shard {}",
                self.shard
            ))),
            Some(Slot::Failed(f)) => Err(Status::unavailable(format!(
                "version {version} failed to load on shard {}: {}",
                self.shard, f.reason
            ))),
            None => Err(Status::unavailable(format!(
                "shard {} does not hold version {version}",
                self.shard
            ))),
        };
        r.map_err(refused)
    }
}

/// Marks a refusal for a version (the replica is up, it just does not serve that version),
/// so routers try another replica without treating this one as down.
fn refused(mut s: Status) -> Status {
    s.metadata_mut().insert(
        super::REFUSED_HEADER,
        tonic::metadata::MetadataValue::from_static("version"),
    );
    s
}

pub struct ShardSvc {
    pub state: Arc<ShardState>,
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl quiver_proto::shard_server::Shard for ShardSvc {
    async fn shard_search(
        &self,
        req: Request<ShardSearchRequest>,
    ) -> Result<Response<ShardSearchResponse>, Status> {
        let started = Instant::now();
        self.node.metrics.inflight.inc();
        let r = self.search(req.into_inner());
        self.node.metrics.inflight.dec();
        match &r {
            Ok(_) => self
                .node
                .metrics
                .query_seconds
                .observe(started.elapsed().as_secs_f64()),
            Err(s) => self.node.metrics.error(s.code()),
        }
        r.map(Response::new)
    }

    async fn shard_batch_search(
        &self,
        req: Request<ShardBatchSearchRequest>,
    ) -> Result<Response<ShardBatchSearchResponse>, Status> {
        let started = Instant::now();
        let queries = req.into_inner().queries;
        if queries.is_empty() {
            return Err(Status::invalid_argument("queries: empty"));
        }
        if queries.len() > self.state.ctx.max_batch {
            return Err(Status::invalid_argument(format!(
                "queries: {} exceeds the maximum batch of {}",
                queries.len(),
                self.state.ctx.max_batch
            )));
        }
        self.node.metrics.inflight.inc();
        // Each query is answered (or refused) on its own, from its own version: one bad or
        // refused query does not fail the others.
        let results: Vec<ShardBatchResult> = queries
            .into_iter()
            .map(|q| {
                let result = match self.search(q) {
                    Ok(r) => BatchResult::Response(r),
                    Err(s) => {
                        self.node.metrics.error(s.code());
                        BatchResult::Error(query_error(&s))
                    }
                };
                ShardBatchResult {
                    result: Some(result),
                }
            })
            .collect();
        self.node.metrics.inflight.dec();
        let ok = results
            .iter()
            .filter(|r| matches!(r.result, Some(BatchResult::Response(_))))
            .count();
        let per = started.elapsed().as_secs_f64() / results.len() as f64;
        for _ in 0..ok {
            self.node.metrics.query_seconds.observe(per);
        }
        Ok(Response::new(ShardBatchSearchResponse { results }))
    }
}

/// The per-query form of a status ShardSearch would have returned, refusal mark included.
pub fn query_error(s: &Status) -> ShardQueryError {
    ShardQueryError {
        code: s.code() as i32,
        message: s.message().to_string(),
        refused: s.metadata().get(super::REFUSED_HEADER).is_some(),
    }
}

impl ShardSvc {
    fn search(&self, req: ShardSearchRequest) -> Result<ShardSearchResponse, Status> {
        validate::version_name(&req.version)?;
        let v = self.state.get(&req.version)?;
        validate::vector("vector", &req.vector, v.manifest.dim)?;
        let k = validate::k(req.k, self.state.ctx.max_k)?;
        let lists = validate::lists(req.lists, v.manifest.nlist, &req.version)?;
        let mut candidates = 0u64;
        for &l in &lists {
            if !v.owned.get(l as usize).copied().unwrap_or(false) {
                return Err(Status::invalid_argument(format!(
                    "lists: list {l} is not served by shard {} in version {}",
                    self.state.shard, req.version
                )));
            }
            candidates += v.sizes[l as usize];
            v.probes[l as usize].fetch_add(1, Ordering::Relaxed);
        }
        // Scans are short (a few lists) so they run on the request task: a hop to the
        // blocking pool would cost more than it frees.
        let (hits, _stats) = v
            .index
            .search_lists(&req.vector, k, &lists, 0)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.node.metrics.nprobe.observe(lists.len() as f64);
        self.node.metrics.candidates.observe(candidates as f64);
        Ok(ShardSearchResponse {
            ids: hits.iter().map(|n| n.id).collect(),
            distances: hits.iter().map(|n| n.distance).collect(),
            version: req.version,
            shard: self.state.shard,
            candidates_scanned: candidates,
        })
    }
}
