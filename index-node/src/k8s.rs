//! Desired state from Kubernetes (`serve --kube`):
//!
//! * [`KubeVersions`]: the node watches its own `VectorIndex` and holds exactly the versions
//!   its status lists as Warming, Gating, Active or Draining, with `status.activeVersion` as
//!   the active one. Needs `get`, `list` and `watch` on `vectorindexes` in its namespace.
//! * [`PodReplicas`]: a router watches its index's shard pods (by the `quiver.dev/index` and
//!   `quiver.dev/role=shard` labels) and routes to the Ready ones by pod IP. Needs `get`,
//!   `list` and `watch` on `pods`.
//!
//! What the objects mean is decided by pure functions ([`desired_from_status`],
//! [`replicas_from_pods`]); the watch loops only follow the API. Both sources say "not known
//! yet" (`None`) until their first list, and keep their last state through API outages and
//! re-lists, so a node never drops what it holds because the API server was unreachable.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use quiver_api::keys::labels;
use quiver_api::{VectorIndex, VectorIndexStatus, ports};
use tokio::sync::watch;

use crate::discovery::{ReplicaSource, Replicas};
use crate::versions::{Desired, VersionSource};

/// What a node with shard number `shard` (`None`: a router) holds for `status`.
///
/// * Versions in a held phase, newest first as the status lists them; a shard skips
///   versions whose shard map has no shard of its number (`versions[].shards`).
/// * Names that are not DNS-1123 labels are skipped: they cannot be storage directories
///   the operator wrote, and must not become paths.
/// * `active` is `status.activeVersion` only when it is among the held versions.
/// * `nprobe` is the spec's query-time default (`spec.index.nprobe`), passed through.
pub fn desired_from_status(
    status: Option<&VectorIndexStatus>,
    shard: Option<u32>,
    nprobe: Option<u32>,
) -> Desired {
    let Some(st) = status else {
        // An index without a status yet: known, and nothing to hold.
        return Desired {
            nprobe,
            ..Desired::default()
        };
    };
    let versions: Vec<String> = st
        .held_versions()
        .filter(|v| match (shard, v.shards) {
            (Some(s), Some(n)) => s < n,
            _ => true,
        })
        .map(|v| v.name.clone())
        .filter(|n| quiver_api::names::is_dns1123_label(n))
        .collect();
    let active = st.active_version.clone().filter(|a| versions.contains(a));
    Desired {
        versions,
        active,
        nprobe,
    }
}

/// The Ready shard pods among `pods`, as shard number → `podIP:port`, each shard's
/// addresses in pod-name order. A pod counts when its `Ready` condition is `True`, it has a
/// pod IP and a `quiver.dev/shard` label, and it is not being deleted (a terminating pod
/// stops taking new queries at once, as EndpointSlices mark it not ready). The port is the
/// container port named `shard`, else the default gRPC port.
pub fn replicas_from_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Replicas {
    let mut named: Vec<(&str, u32, String)> = Vec::new();
    for p in pods {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(status) = &p.status else { continue };
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready {
            continue;
        }
        let Some(ip) = status
            .pod_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let Some(shard) = p
            .labels()
            .get(labels::SHARD)
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let port = p
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|cp| cp.name.as_deref() == Some(ports::SHARD_NAME))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .unwrap_or(ports::SHARD);
        named.push((
            p.metadata.name.as_deref().unwrap_or_default(),
            shard,
            SocketAddr::new(ip, port).to_string(),
        ));
    }
    named.sort();
    let mut out = Replicas::new();
    for (_, shard, addr) in named {
        out.entry(shard).or_default().push(addr);
    }
    out
}

/// Logs watch errors without flooding: a new message at once, the same one again at most
/// every 30 s.
struct ErrorLog {
    last: String,
    at: Option<Instant>,
}

impl ErrorLog {
    fn new() -> Self {
        Self {
            last: String::new(),
            at: None,
        }
    }

    fn report(&mut self, what: &str, e: &watcher::Error) {
        let msg = e.to_string();
        let due = self
            .at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(30));
        if msg != self.last || due {
            tracing::warn!(watch = what, error = %msg,
                "Kubernetes watch failed; retrying with backoff, keeping the last state");
            self.last = msg;
            self.at = Some(Instant::now());
        }
    }
}

/// Versions from the node's own `VectorIndex` status.
pub struct KubeVersions {
    pub client: Client,
    pub namespace: String,
    pub index: String,
    /// The node's shard number (`None` for a router).
    pub shard: Option<u32>,
}

impl VersionSource for KubeVersions {
    fn watch(self: Box<Self>) -> watch::Receiver<Option<Desired>> {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let api: Api<VectorIndex> = Api::namespaced(self.client, &self.namespace);
            let cfg = watcher::Config::default().fields(&format!("metadata.name={}", self.index));
            let what = format!("vectorindexes/{}/{}", self.namespace, self.index);
            let mut events = watcher::watcher(api, cfg).default_backoff().boxed();
            let mut errors = ErrorLog::new();
            let mut listed_it = false;
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(Event::Init) => listed_it = false,
                    Ok(Event::InitApply(vi) | Event::Apply(vi)) => {
                        listed_it = true;
                        let d = desired_from_status(
                            vi.status.as_ref(),
                            self.shard,
                            vi.spec.index.nprobe,
                        );
                        tx.send_if_modified(|cur| {
                            if cur.as_ref() == Some(&d) {
                                return false;
                            }
                            tracing::info!(versions = ?d.versions, active = ?d.active,
                                nprobe = ?d.nprobe, "desired state changed (VectorIndex)");
                            *cur = Some(d);
                            true
                        });
                    }
                    Ok(Event::InitDone) => {
                        if !listed_it {
                            tracing::warn!(vectorindex = %what,
                                "VectorIndex not found; holding what is loaded until it exists");
                        }
                    }
                    Ok(Event::Delete(_)) => {
                        // The pods go with it (ownerReferences); until then serve what is held.
                        tracing::warn!(vectorindex = %what,
                            "VectorIndex deleted; holding what is loaded");
                    }
                    Err(e) => errors.report(&what, &e),
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }
}

/// A router's shard replicas from its index's Ready shard pods.
pub struct PodReplicas {
    pub client: Client,
    pub namespace: String,
    pub index: String,
}

impl ReplicaSource for PodReplicas {
    fn watch(self: Box<Self>) -> watch::Receiver<Option<Replicas>> {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let api: Api<Pod> = Api::namespaced(self.client, &self.namespace);
            let selector = labels::role_selector(&self.index, labels::Role::Shard);
            let what = format!("pods/{} -l {selector}", self.namespace);
            let mut events = watcher::watcher(api, watcher::Config::default().labels(&selector))
                .default_backoff()
                .boxed();
            let mut errors = ErrorLog::new();
            let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
            // A re-list builds a fresh set and swaps it in whole at its end, so replicas
            // do not disappear and come back while it runs.
            let mut relist: Option<BTreeMap<String, Pod>> = None;
            let mut listed = false;
            while let Some(ev) = events.next().await {
                let changed = match ev {
                    Ok(Event::Init) => {
                        relist = Some(BTreeMap::new());
                        false
                    }
                    Ok(Event::InitApply(p)) => {
                        relist
                            .get_or_insert_with(BTreeMap::new)
                            .insert(p.name_any(), p);
                        false
                    }
                    Ok(Event::InitDone) => {
                        pods = relist.take().unwrap_or_default();
                        listed = true;
                        true
                    }
                    Ok(Event::Apply(p)) => {
                        pods.insert(p.name_any(), p);
                        listed
                    }
                    Ok(Event::Delete(p)) => {
                        pods.remove(&p.name_any());
                        listed
                    }
                    Err(e) => {
                        errors.report(&what, &e);
                        false
                    }
                };
                if changed {
                    let r = replicas_from_pods(pods.values());
                    tx.send_if_modified(|cur| {
                        if cur.as_ref() == Some(&r) {
                            return false;
                        }
                        tracing::info!(replicas = ?r, "shard replicas changed (Ready shard pods)");
                        *cur = Some(r);
                        true
                    });
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_api::{VersionPhase, VersionStatus};
    use serde_json::json;

    fn status(
        versions: &[(&str, VersionPhase, Option<u32>)],
        active: Option<&str>,
    ) -> VectorIndexStatus {
        let mut st: VectorIndexStatus = serde_json::from_value(json!({})).expect("empty status");
        st.versions = versions
            .iter()
            .map(|(n, p, s)| {
                let mut v = VersionStatus::pending(*n);
                v.phase = *p;
                v.shards = *s;
                v
            })
            .collect();
        st.active_version = active.map(String::from);
        st
    }

    fn names(d: &Desired) -> Vec<&str> {
        d.versions.iter().map(String::as_str).collect()
    }

    #[test]
    fn holds_exactly_the_held_phases() {
        use VersionPhase::*;
        let st = status(
            &[
                ("v7-aaaaaaaa", Pending, None),
                ("v6-aaaaaaaa", Training, None),
                ("v5-aaaaaaaa", Building, None),
                ("v4-aaaaaaaa", Warming, None),
                ("v3-aaaaaaaa", Gating, None),
                ("v2-aaaaaaaa", Active, None),
                ("v1-aaaaaaaa", Draining, None),
                ("v0-aaaaaaaa", Retired, None),
                ("v9-aaaaaaaa", Failed, None),
            ],
            Some("v2-aaaaaaaa"),
        );
        for shard in [None, Some(0)] {
            let d = desired_from_status(Some(&st), shard, None);
            assert_eq!(
                names(&d),
                ["v4-aaaaaaaa", "v3-aaaaaaaa", "v2-aaaaaaaa", "v1-aaaaaaaa"]
            );
            assert_eq!(d.active.as_deref(), Some("v2-aaaaaaaa"));
        }
    }

    #[test]
    fn no_status_is_known_and_empty() {
        assert_eq!(desired_from_status(None, Some(0), None), Desired::default());
        assert_eq!(desired_from_status(None, None, None), Desired::default());
    }

    #[test]
    fn active_must_be_held() {
        use VersionPhase::*;
        let st = status(&[("v2-aaaaaaaa", Failed, None)], Some("v2-aaaaaaaa"));
        let d = desired_from_status(Some(&st), None, None);
        assert!(d.versions.is_empty());
        assert_eq!(d.active, None);
        let st = status(&[("v1-aaaaaaaa", Active, None)], Some("v9-aaaaaaaa"));
        assert_eq!(desired_from_status(Some(&st), None, None).active, None);
    }

    #[test]
    fn shards_skip_versions_without_their_number() {
        use VersionPhase::*;
        let st = status(
            &[
                ("v2-aaaaaaaa", Warming, Some(2)),
                ("v1-aaaaaaaa", Active, Some(4)),
            ],
            Some("v1-aaaaaaaa"),
        );
        assert_eq!(
            names(&desired_from_status(Some(&st), Some(1), None)),
            ["v2-aaaaaaaa", "v1-aaaaaaaa"]
        );
        let d = desired_from_status(Some(&st), Some(3), None);
        assert_eq!(names(&d), ["v1-aaaaaaaa"]);
        let d = desired_from_status(Some(&st), Some(5), None);
        assert!(d.versions.is_empty());
        assert_eq!(d.active, None);
        // Routers hold every version (they need each one's centroids).
        assert_eq!(names(&desired_from_status(Some(&st), None, None)).len(), 2);
    }

    #[test]
    fn names_that_are_not_labels_are_skipped() {
        use VersionPhase::*;
        let st = status(
            &[
                ("../etc", Active, None),
                ("V1", Warming, None),
                ("v1-aaaaaaaa", Warming, None),
            ],
            Some("../etc"),
        );
        let d = desired_from_status(Some(&st), None, None);
        assert_eq!(names(&d), ["v1-aaaaaaaa"]);
        assert_eq!(d.active, None);
    }

    fn pod(name: &str, shard: Option<&str>, ip: Option<&str>, ready: &str) -> Pod {
        let mut labels = serde_json::Map::new();
        if let Some(s) = shard {
            labels.insert(labels::SHARD.into(), json!(s));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "node", "ports": [{"name": "metrics", "containerPort": 7001}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]},
        }))
        .expect("pod")
    }

    #[test]
    fn only_ready_pods_with_an_ip_and_a_shard_route() {
        let mut terminating = pod("s0-2", Some("0"), Some("10.0.0.9"), "True");
        terminating.metadata = serde_json::from_value(json!({
            "name": "s0-2", "labels": {labels::SHARD: "0"},
            "deletionTimestamp": "2026-01-01T00:00:00Z",
        }))
        .expect("metadata");
        let pods = [
            pod("s0-1", Some("0"), Some("10.0.0.2"), "True"),
            pod("s0-0", Some("0"), Some("10.0.0.1"), "True"),
            pod("s1-0", Some("1"), Some("10.0.0.3"), "False"),
            pod("s1-1", Some("1"), None, "True"),
            pod("s1-2", None, Some("10.0.0.5"), "True"),
            pod("s1-3", Some("x"), Some("10.0.0.6"), "True"),
            pod("s2-0", Some("2"), Some("fd00::7"), "True"),
            terminating,
        ];
        let r = replicas_from_pods(&pods);
        assert_eq!(
            r,
            Replicas::from([
                (
                    0,
                    vec!["10.0.0.1:7000".to_string(), "10.0.0.2:7000".to_string()]
                ),
                (2, vec!["[fd00::7]:7000".to_string()]),
            ])
        );
    }

    #[test]
    fn the_port_named_shard_wins() {
        let mut p = pod("s0-0", Some("0"), Some("10.0.0.1"), "True");
        if let Some(spec) = p.spec.as_mut() {
            spec.containers[0].ports = Some(vec![
                serde_json::from_value(json!({"name": "shard", "containerPort": 7100}))
                    .expect("port"),
            ]);
        }
        assert_eq!(
            replicas_from_pods([&p])[&0],
            vec!["10.0.0.1:7100".to_string()]
        );
    }
}
