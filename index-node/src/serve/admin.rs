//! Admin/status API for the operator: role, versions and their state, list statistics and
//! recall evaluation (routers).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use quiver_proto::{
    EvaluateRequest, EvaluateResponse, ListStat, ListStatsRequest, ListStatsResponse,
    StatusRequest, StatusResponse, VersionState, VersionStatus,
};
use tonic::{Request, Response, Status};

use super::holder::{Slot, Slots};
use super::router::Drift;
use super::{Node, RoleState, validate};
use crate::manifest::imbalance;

/// The holder's one state per version, as the status reports it; `fill` adds what the role
/// knows of a warm version (sizes, in-flight queries, drift).
fn versions<V>(
    slots: &Slots<V>,
    active: &str,
    fill: impl Fn(&V, &mut VersionStatus),
) -> Vec<VersionStatus> {
    slots
        .iter()
        .map(|(name, slot)| {
            let mut vs = VersionStatus {
                version: name.clone(),
                ..Default::default()
            };
            match slot.as_ref() {
                Slot::Loading => vs.state = VersionState::Loading as i32,
                Slot::Failed(f) => {
                    vs.state = VersionState::Failed as i32;
                    vs.reason = f.reason.clone();
                }
                Slot::Warm(v) => {
                    vs.state = if active == name {
                        VersionState::Active as i32
                    } else {
                        VersionState::Warm as i32
                    };
                    fill(v, &mut vs);
                }
            }
            vs
        })
        .collect()
}

pub struct AdminSvc {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl quiver_proto::admin_server::Admin for AdminSvc {
    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let (ready, _) = self.node.readiness();
        let mut out = StatusResponse {
            role: 0,
            shard: 0,
            node: self.node.name.clone(),
            versions: Vec::new(),
            active_version: String::new(),
            ready,
            pending_active_version: String::new(),
            pending_reason: String::new(),
        };
        match &self.node.inner {
            RoleState::Shard(s) => {
                out.role = quiver_proto::Role::Shard as i32;
                out.shard = s.shard;
                out.active_version = s.active.load().as_ref().clone().unwrap_or_default();
                out.versions = versions(&s.holder.slots(), &out.active_version, |v, vs| {
                    vs.vectors = v.vectors;
                    vs.bytes = v.bytes;
                    vs.lists = v.owned.iter().filter(|o| **o).count() as u32;
                });
            }
            RoleState::Router(r) => {
                out.role = quiver_proto::Role::Router as i32;
                out.active_version = r
                    .active
                    .load()
                    .as_ref()
                    .map(|v| v.name.clone())
                    .unwrap_or_default();
                out.versions = versions(&r.holder.slots(), &out.active_version, |v, vs| {
                    vs.vectors = v.manifest.ntotal;
                    vs.lists = v.manifest.nlist as u32;
                    vs.inflight = v.inflight.load(Ordering::Relaxed);
                    vs.drift_counts = v.drift.as_ref().map(Drift::counts).unwrap_or_default();
                });
                if let Some(p) = r.pending.load().as_ref() {
                    out.pending_active_version = p.version.clone();
                    out.pending_reason = p.reason.clone();
                }
            }
        }
        Ok(Response::new(out))
    }

    async fn list_stats(
        &self,
        req: Request<ListStatsRequest>,
    ) -> Result<Response<ListStatsResponse>, Status> {
        let version = req.into_inner().version;
        validate::version_name(&version)?;
        let (lists, imb) = match &self.node.inner {
            RoleState::Shard(s) => {
                let v = s
                    .get(&version)
                    .map_err(|e| Status::not_found(e.message().to_string()))?;
                let lists = (0..v.manifest.nlist)
                    .filter(|&l| v.owned[l])
                    .map(|l| ListStat {
                        list: l as u32,
                        size: v.sizes[l],
                        probes: v.probes[l].load(Ordering::Relaxed),
                        shard: s.shard,
                    })
                    .collect();
                (lists, imbalance(&v.manifest.list_sizes))
            }
            RoleState::Router(r) => {
                let v = r.pin(Some(&version))?;
                let lists = (0..v.manifest.nlist)
                    .map(|l| ListStat {
                        list: l as u32,
                        size: v.manifest.list_sizes[l],
                        probes: v.probes[l].load(Ordering::Relaxed),
                        shard: v.owners.get(l).copied().unwrap_or_default(),
                    })
                    .collect();
                (lists, imbalance(&v.manifest.list_sizes))
            }
        };
        Ok(Response::new(ListStatsResponse {
            version,
            lists,
            imbalance: imb,
        }))
    }

    async fn evaluate(
        &self,
        req: Request<EvaluateRequest>,
    ) -> Result<Response<EvaluateResponse>, Status> {
        let RoleState::Router(r) = &self.node.inner else {
            return Err(Status::failed_precondition(
                "Evaluate is served by routers, not shards",
            ));
        };
        let req = req.into_inner();
        let v = r.pin(Some(&req.version))?;
        let Some(eval) = &v.eval else {
            return Err(Status::failed_precondition(format!(
                "version {} has no evaluation queries",
                v.name
            )));
        };
        let k = validate::k(req.k, r.ctx.max_k)?;
        if k > eval.k {
            return Err(Status::invalid_argument(format!(
                "k: {k} exceeds the {} stored exact neighbours",
                eval.k
            )));
        }
        let nprobe = validate::nprobe(req.nprobe, r.default_nprobe(&v), v.manifest.nlist)?;
        let mut n = eval.queries.len();
        if req.max_queries > 0 {
            n = n.min(req.max_queries as usize);
        }
        let started = Instant::now();
        let (recall, n) = super::eval::recall(r, &self.node, &v, k, nprobe, 0..n).await?;
        Ok(Response::new(EvaluateResponse {
            version: v.name.clone(),
            k: k as u32,
            nprobe: nprobe as u32,
            queries: n as u32,
            recall,
            mean_latency_ms: started.elapsed().as_secs_f64() * 1000.0 / n.max(1) as f64,
        }))
    }
}
