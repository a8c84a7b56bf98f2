//! Observe: what exists for an index (children and Jobs by the index label, owned by this
//! index's uid), its pods' readiness, and what node pods say through `Admin/Status`: shards
//! only while a version is warming, gating or draining, routers whenever a version serves
//! (for query drift), and the gate's `Admin/Evaluate`.
//! Reads only: an idle index costs list calls, never a write.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use quiver_api::keys::labels::{self, Role as NodeRole};
use quiver_api::ports;
use quiver_api::v1alpha1::{VectorIndex, VersionPhase};
use quiver_proto::admin_client::AdminClient;
use quiver_proto::{EvaluateRequest, ListStat, ListStatsRequest, StatusRequest, VersionState};
use serde::de::DeserializeOwned;

use crate::jobs::{self, JobState};
use crate::lifecycle::{GateOutcome, NodeReport};

/// How long one Admin call may take before the pod counts as unreachable.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);
/// The gate replays up to `evalQueries` queries; give it room.
const GATE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("listing {kind} of VectorIndex {index}: {source}")]
pub struct ObserveError {
    pub index: String,
    pub kind: &'static str,
    #[source]
    pub source: kube::Error,
}

/// The live children of one index (owned by it).
#[derive(Debug, Default)]
pub struct LiveChildren {
    pub service_accounts: Vec<ServiceAccount>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub statefulsets: Vec<StatefulSet>,
    pub services: Vec<Service>,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub deployments: Vec<Deployment>,
}

#[derive(Debug, Default)]
pub struct Observed {
    pub children: LiveChildren,
    pub jobs: Vec<Job>,
    pub job_states: BTreeMap<String, JobState>,
    pub shard_pods: Vec<Pod>,
    pub router_pods: Vec<Pod>,
    pub shard_nodes: Vec<NodeReport>,
    pub router_nodes: Vec<NodeReport>,
    pub gate: Option<GateOutcome>,
}

async fn owned<K>(
    client: &Client,
    vi: &VectorIndex,
    kind: &'static str,
    selector: &str,
) -> Result<Vec<K>, ObserveError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let ns = vi.namespace().unwrap_or_default();
    let uid = vi.uid().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|source| ObserveError {
            index: vi.name_any(),
            kind,
            source,
        })?;
    Ok(list
        .items
        .into_iter()
        .filter(|o| o.owner_references().iter().any(|r| r.uid == uid))
        .collect())
}

/// Lists the index's children, Jobs and pods, and asks nodes what they hold when the
/// lifecycle needs it.
pub async fn observe(client: &Client, vi: &VectorIndex) -> Result<Observed, ObserveError> {
    let index = vi.name_any();
    let sel = format!("{}={index}", labels::INDEX);
    let children = LiveChildren {
        service_accounts: owned(client, vi, "ServiceAccounts", &sel).await?,
        roles: owned(client, vi, "Roles", &sel).await?,
        role_bindings: owned(client, vi, "RoleBindings", &sel).await?,
        statefulsets: owned(client, vi, "StatefulSets", &sel).await?,
        services: owned(client, vi, "Services", &sel).await?,
        pdbs: owned(client, vi, "PodDisruptionBudgets", &sel).await?,
        deployments: owned(client, vi, "Deployments", &sel).await?,
    };
    let jobs: Vec<Job> = owned(client, vi, "Jobs", &sel).await?;

    // Pods are owned by StatefulSets, ReplicaSets and Jobs, not by the index: select by label.
    let ns = vi.namespace().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pods = pods_api
        .list(&ListParams::default().labels(&sel))
        .await
        .map_err(|source| ObserveError {
            index: index.clone(),
            kind: "Pods",
            source,
        })?
        .items;
    let role_of = |p: &Pod| {
        p.labels()
            .get(labels::ROLE)
            .and_then(|r| NodeRole::parse(r))
    };
    let mut job_states = BTreeMap::new();
    for j in &jobs {
        let name = j.name_any();
        let message = pods
            .iter()
            .filter(|p| {
                p.labels().get("job-name") == Some(&name)
                    || p.labels().get("batch.kubernetes.io/job-name") == Some(&name)
                    || p.owner_references().iter().any(|o| o.name == name)
            })
            .find_map(failed_message);
        job_states.insert(name, jobs::state_of(j, message.as_deref()));
    }
    let shard_pods: Vec<Pod> = pods
        .iter()
        .filter(|p| role_of(p) == Some(NodeRole::Shard))
        .cloned()
        .collect();
    let router_pods: Vec<Pod> = pods
        .iter()
        .filter(|p| role_of(p) == Some(NodeRole::Router))
        .cloned()
        .collect();

    let status = vi.status.clone().unwrap_or_default();
    let needs_nodes = status.versions.iter().any(|v| {
        matches!(
            v.phase,
            VersionPhase::Warming | VersionPhase::Gating | VersionPhase::Draining
        )
    });
    // Routers are asked whenever a version serves: their query drift is published even on
    // an idle index (a read per router and reconcile; no write unless the figure changed).
    let shard_nodes = if needs_nodes {
        futures::future::join_all(shard_pods.iter().map(report)).await
    } else {
        Vec::new()
    };
    let router_nodes = if needs_nodes || status.active_version.is_some() {
        futures::future::join_all(router_pods.iter().map(report)).await
    } else {
        Vec::new()
    };
    let gate = match status
        .versions
        .iter()
        .find(|v| v.phase == VersionPhase::Gating)
    {
        Some(v) => Some(evaluate(vi, &v.name, &router_pods, &router_nodes).await),
        None => None,
    };
    Ok(Observed {
        children,
        jobs,
        job_states,
        shard_pods,
        router_pods,
        shard_nodes,
        router_nodes,
        gate,
    })
}

/// The cleanup Job of a deleted index, when there is one, and its state. A cleanup Job left
/// by an earlier resource of the same name (another uid) is reported as `Foreign`.
pub async fn cleanup_job(client: &Client, vi: &VectorIndex) -> Result<Cleanup, ObserveError> {
    let index = vi.name_any();
    let ns = vi.namespace().unwrap_or_default();
    let name = quiver_api::names::cleanup_job(&index);
    let err = |kind| {
        let index = index.clone();
        move |source| ObserveError {
            index,
            kind,
            source,
        }
    };
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let Some(job) = api.get_opt(&name).await.map_err(err("Jobs"))? else {
        return Ok(Cleanup::Ours(None, JobState::Absent));
    };
    if job.annotations().get(jobs::CLEANUP_UID_ANNOTATION) != vi.uid().as_ref() {
        return Ok(Cleanup::Foreign(job));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let message = pods
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await
        .map_err(err("Pods"))?
        .items
        .iter()
        .find_map(failed_message);
    let state = jobs::state_of(&job, message.as_deref());
    Ok(Cleanup::Ours(Some(job), state))
}

/// What [`cleanup_job`] found.
#[derive(Debug)]
pub enum Cleanup {
    /// This resource's cleanup Job (None: there is none) and its state.
    Ours(Option<Job>, JobState),
    /// A Job of that name made for another resource.
    Foreign(Job),
}

/// The termination message of a failed container of `pod`, if any.
fn failed_message(pod: &Pod) -> Option<String> {
    let st = pod.status.as_ref()?;
    st.container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .filter(|t| t.exit_code != 0)
        .find_map(|t| {
            t.message
                .clone()
                .or_else(|| t.reason.clone())
                .map(|m| format!("{m} (exit code {})", t.exit_code))
                .or_else(|| Some(format!("exit code {}", t.exit_code)))
        })
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .pod_ip
        .clone()
        .filter(|ip| !ip.is_empty())
}

fn admin_uri(ip: &str) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{}", ports::ADMIN)
    } else {
        format!("http://{ip}:{}", ports::ADMIN)
    }
}

async fn report(pod: &Pod) -> NodeReport {
    let mut r = NodeReport {
        pod: pod.name_any(),
        shard: pod.labels().get(labels::SHARD).and_then(|s| s.parse().ok()),
        ready: is_ready(pod),
        ..NodeReport::default()
    };
    let Some(ip) = pod_ip(pod) else {
        r.unreachable = Some("no pod IP yet".into());
        return r;
    };
    let call = async {
        let mut c = AdminClient::connect(admin_uri(&ip)).await?;
        let st = c.status(StatusRequest {}).await?.into_inner();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(st)
    };
    match tokio::time::timeout(ADMIN_TIMEOUT, call).await {
        Err(_) => r.unreachable = Some("Admin/Status timed out".into()),
        Ok(Err(e)) => r.unreachable = Some(e.to_string()),
        Ok(Ok(st)) => {
            for v in st.versions {
                match VersionState::try_from(v.state) {
                    Ok(VersionState::Warm | VersionState::Active) => {
                        if !v.drift_counts.is_empty() {
                            r.drift.insert(v.version.clone(), v.drift_counts.clone());
                        }
                        if v.inflight > 0 {
                            r.inflight.insert(v.version.clone(), v.inflight);
                        }
                        r.warm.insert(v.version, v.vectors);
                    }
                    Ok(VersionState::Failed) => {
                        r.failed.insert(v.version, v.reason);
                    }
                    _ => {}
                }
            }
            r.active = Some(st.active_version).filter(|a| !a.is_empty());
        }
    }
    r
}

/// Every Ready router's per-list counters of `version` (`Admin/ListStats`): routers run the
/// coarse step of every query, so each one sees every list's probes. Routers that do not
/// answer are left out (logged); their traffic is counted again once they do.
pub async fn list_stats(routers: &[Pod], version: &str) -> Vec<(String, Vec<ListStat>)> {
    let asks = routers
        .iter()
        .filter(|p| is_ready(p))
        .map(|pod| async move {
            let name = pod.name_any();
            let ip = pod_ip(pod)?;
            let call = async {
                let mut c = AdminClient::connect(admin_uri(&ip)).await?;
                let r = c
                    .list_stats(ListStatsRequest {
                        version: version.to_string(),
                    })
                    .await?
                    .into_inner();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(r.lists)
            };
            match tokio::time::timeout(ADMIN_TIMEOUT, call).await {
                Ok(Ok(lists)) => Some((name, lists)),
                Ok(Err(e)) => {
                    tracing::debug!(pod = %name, version, error = %e, "ListStats failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(pod = %name, version, "ListStats timed out");
                    None
                }
            }
        });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The gate: a router that holds `version` warm measures its recall on the stored evaluation
/// queries (`spec.rollout.evalK`, the version's default nprobe).
async fn evaluate(
    vi: &VectorIndex,
    version: &str,
    pods: &[Pod],
    reports: &[NodeReport],
) -> GateOutcome {
    let Some(pod) = pods.iter().find(|p| {
        reports
            .iter()
            .any(|r| r.pod == p.name_any() && r.warm.contains_key(version))
    }) else {
        return GateOutcome::Error(format!("no router holds {version} warm yet"));
    };
    let Some(ip) = pod_ip(pod) else {
        return GateOutcome::Error(format!("router {} has no pod IP", pod.name_any()));
    };
    let req = EvaluateRequest {
        version: version.to_string(),
        k: vi.spec.rollout.eval_k,
        nprobe: None,
        max_queries: vi.spec.rollout.eval_queries,
    };
    let call = async {
        let mut c = AdminClient::connect(admin_uri(&ip)).await?;
        let r = c.evaluate(req).await?.into_inner();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(r)
    };
    match tokio::time::timeout(GATE_TIMEOUT, call).await {
        Err(_) => GateOutcome::Error(format!("Evaluate on {} timed out", pod.name_any())),
        Ok(Err(e)) => GateOutcome::Error(format!("Evaluate on {}: {e}", pod.name_any())),
        Ok(Ok(r)) if r.queries == 0 => {
            GateOutcome::Error(format!("{version} has no evaluation queries"))
        }
        Ok(Ok(r)) => GateOutcome::Measured {
            recall: r.recall,
            k: r.k,
            nprobe: r.nprobe,
            queries: r.queries,
        },
    }
}
