//! The serving children of a `VectorIndex`, built from its spec alone (pure: no client, no
//! clock): per shard a StatefulSet, its headless Service and a PodDisruptionBudget; the router
//! Deployment, the query Service and a PodDisruptionBudget; and the node pods' ServiceAccount,
//! Role and RoleBinding. Versions are not in here: pods take them from the status
//! (`serve --kube`), so a new version never changes a pod template and never restarts a pod.
//!
//! Every object carries the index's labels and a controller ownerReference, so the garbage
//! collector removes it with the index, and the operator finds orphans by label.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use quiver_api::keys::labels::{self, Role as NodeRole};
use quiver_api::v1alpha1::{HotShard, PullPolicy, VectorIndex};

use crate::hotreplicas::replicas_of;
use quiver_api::{env, names, ports};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// What the operator was started with that shapes its children.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildConfig {
    /// index-node image when `spec.pods.image` is not set.
    pub node_image: String,
}

/// One shard's objects.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardChildren {
    pub statefulset: StatefulSet,
    /// Headless: stable pod DNS names (`<pod>.<index>-shard-<i>`), no load balancing.
    pub service: Service,
    pub pdb: PodDisruptionBudget,
}

/// Every serving child of one index. The apply step destructures it without `..`, so a child
/// added here cannot be forgotten there.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub shards: Vec<ShardChildren>,
    pub router: Deployment,
    pub query_service: Service,
    pub router_pdb: PodDisruptionBudget,
}

#[derive(Debug, thiserror::Error)]
pub enum ChildrenError {
    /// The object has not been stored yet (no uid): nothing can be owned by it.
    #[error("VectorIndex {0} has no {1} yet")]
    NotStored(String, &'static str),
    #[error("building {what} of VectorIndex {index}: {source}")]
    Build {
        index: String,
        what: String,
        source: serde_json::Error,
    },
}

/// The children `vi` should have; `hot` shards run more replicas than `spec.replicas`.
pub fn build(
    vi: &VectorIndex,
    cfg: &ChildConfig,
    hot: &[HotShard],
) -> Result<Children, ChildrenError> {
    let index = vi.name_any();
    let owner = owner_ref(vi)?;
    let b = Builder {
        vi,
        cfg,
        index: &index,
        owner: &owner,
        hot,
    };
    let shards = (0..vi.spec.shards)
        .map(|s| b.shard(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Children {
        service_account: b.service_account()?,
        role: b.role()?,
        role_binding: b.role_binding()?,
        shards,
        router: b.router()?,
        query_service: b.query_service()?,
        router_pdb: b.pdb(
            &names::router_deployment(&index),
            labels::for_role(&index, NodeRole::Router),
        )?,
    })
}

fn owner_ref(vi: &VectorIndex) -> Result<OwnerReference, ChildrenError> {
    let name = vi.name_any();
    if vi.meta().uid.is_none() {
        return Err(ChildrenError::NotStored(name, "uid"));
    }
    vi.controller_owner_ref(&())
        .ok_or(ChildrenError::NotStored(name, "name"))
}

/// Threads a node should run from its CPU limit (whole cores, at least 1); 0 (one per core
/// of the machine) when there is no limit.
pub fn worker_threads(cpu_limit: Option<&str>) -> u32 {
    let Some(q) = cpu_limit.map(str::trim).filter(|q| !q.is_empty()) else {
        return 0;
    };
    let cores = match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
        None => q.parse::<f64>().ok(),
    };
    match cores {
        Some(c) if c.is_finite() && c > 0.0 => (c.ceil() as u32).max(1),
        _ => 0,
    }
}

struct Builder<'a> {
    vi: &'a VectorIndex,
    cfg: &'a ChildConfig,
    index: &'a str,
    owner: &'a OwnerReference,
    hot: &'a [HotShard],
}

impl Builder<'_> {
    fn object<T: DeserializeOwned>(&self, what: &str, v: Value) -> Result<T, ChildrenError> {
        serde_json::from_value(v).map_err(|source| ChildrenError::Build {
            index: self.index.to_string(),
            what: what.to_string(),
            source,
        })
    }

    fn metadata(&self, name: &str, labels: &BTreeMap<String, String>) -> Value {
        json!({
            "name": name,
            "namespace": self.vi.namespace(),
            "labels": labels,
            "ownerReferences": [self.owner],
        })
    }

    fn service_account(&self) -> Result<ServiceAccount, ChildrenError> {
        let name = names::node_service_account(self.index);
        self.object(
            "ServiceAccount",
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": self.metadata(&name, &labels::for_index(self.index))}),
        )
    }

    /// Read-only: the node's own VectorIndex (by name) and the pods of the namespace (a
    /// Role cannot narrow a list/watch by label; routers select their shards by label).
    fn role(&self) -> Result<Role, ChildrenError> {
        let name = names::node_service_account(self.index);
        self.object(
            "Role",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": self.metadata(&name, &labels::for_index(self.index)),
            "rules": [
                {"apiGroups": ["quiver.dev"], "resources": ["vectorindexes"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            ]}),
        )
    }

    fn role_binding(&self) -> Result<RoleBinding, ChildrenError> {
        let name = names::node_service_account(self.index);
        self.object(
            "RoleBinding",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": self.metadata(&name, &labels::for_index(self.index)),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name,
                              "namespace": self.vi.namespace()}]}),
        )
    }

    /// The node container of a role: `serve --kube`, everything else from the environment.
    fn container(&self, role: NodeRole, shard: Option<u32>) -> Value {
        let spec = &self.vi.spec;
        let resources = match role {
            NodeRole::Shard => spec.pods.resources.shard.as_ref(),
            _ => spec.pods.resources.router.as_ref(),
        };
        let cpu_limit = resources
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("cpu"))
            .map(|q| q.0.as_str());
        let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
        let mut envs = vec![
            json!({"name": env::INDEX, "value": self.index}),
            json!({"name": env::NAMESPACE, "valueFrom": field("metadata.namespace")}),
            json!({"name": env::POD_NAME, "valueFrom": field("metadata.name")}),
            json!({"name": env::LISTEN_IP, "valueFrom": field("status.podIP")}),
            json!({"name": env::STORAGE, "value": spec.storage.uri}),
            json!({"name": env::WORKER_THREADS, "value": worker_threads(cpu_limit).to_string()}),
            json!({"name": "QUIVER_LOG_FORMAT", "value": "json"}),
        ];
        if let Some(s) = shard {
            envs.push(json!({"name": env::SHARD, "value": s.to_string()}));
        }
        let (port_name, mut args) = match role {
            NodeRole::Shard => (
                ports::SHARD_NAME,
                vec!["serve", "--role", "shard", "--kube"],
            ),
            _ => (
                ports::QUERY_NAME,
                vec!["serve", "--role", "router", "--kube"],
            ),
        };
        let max_k = spec.router.max_k.to_string();
        args.extend(["--max-k", &max_k]);
        let mut c = json!({
            "name": "node",
            "image": spec.pods.image.as_deref().unwrap_or(&self.cfg.node_image),
            "args": args,
            "env": envs,
            "ports": [
                {"name": port_name, "containerPort": ports::GRPC, "protocol": "TCP"},
                {"name": ports::METRICS_NAME, "containerPort": ports::METRICS, "protocol": "TCP"},
            ],
            // Ready once the active version is warm (shards) or switched to (routers).
            "readinessProbe": {"httpGet": {"path": ports::READINESS_PATH, "port": ports::METRICS_NAME},
                               "periodSeconds": 2, "failureThreshold": 1},
            // Up while loading: a shard warming a large version must not be restarted for it.
            "livenessProbe": {"httpGet": {"path": ports::LIVENESS_PATH, "port": ports::METRICS_NAME},
                              "periodSeconds": 10, "failureThreshold": 3},
            "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]}},
        });
        if let Some(r) = resources {
            c["resources"] = json!(r);
        }
        if let Some(p) = spec.pods.image_pull_policy {
            c["imagePullPolicy"] = json!(match p {
                PullPolicy::Always => "Always",
                PullPolicy::IfNotPresent => "IfNotPresent",
                PullPolicy::Never => "Never",
            });
        }
        if let Some(secret) = &spec.storage.secret_ref {
            c["envFrom"] = json!([{"secretRef": {"name": secret.name}}]);
        }
        c
    }

    fn pod_spec(&self, container: Value) -> Value {
        let spec = &self.vi.spec;
        let mut p = json!({
            "serviceAccountName": names::node_service_account(self.index),
            // A shard stops taking queries first (readiness), then finishes what it has.
            "terminationGracePeriodSeconds": 30,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
        });
        if !spec.pods.node_selector.is_empty() {
            p["nodeSelector"] = json!(spec.pods.node_selector);
        }
        if !spec.pods.tolerations.is_empty() {
            p["tolerations"] = json!(spec.pods.tolerations);
        }
        p
    }

    fn shard(&self, shard: u32) -> Result<ShardChildren, ChildrenError> {
        let name = names::shard_statefulset(self.index, shard);
        let pod_labels = labels::for_shard(self.index, shard);
        let statefulset = self.object(
            &format!("StatefulSet {name}"),
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": self.metadata(&name, &pod_labels),
            "spec": {
                "replicas": replicas_of(self.hot, shard, self.vi.spec.replicas),
                "serviceName": name,
                // Replicas are interchangeable: start and stop them together.
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": pod_labels},
                "template": {"metadata": {"labels": pod_labels},
                             "spec": self.pod_spec(self.container(NodeRole::Shard, Some(shard)))},
            }}),
        )?;
        let service = self.object(
            &format!("Service {name}"),
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": self.metadata(&name, &pod_labels),
                "spec": {"clusterIP": "None", "selector": pod_labels,
                         // Routers reach pods by IP; DNS should list pods that are warming too.
                         "publishNotReadyAddresses": true,
                         "ports": [{"name": ports::SHARD_NAME, "port": ports::SHARD,
                                    "targetPort": ports::SHARD_NAME, "protocol": "TCP"}]}}),
        )?;
        let pdb = self.pdb(&name, pod_labels)?;
        Ok(ShardChildren {
            statefulset,
            service,
            pdb,
        })
    }

    fn router(&self) -> Result<Deployment, ChildrenError> {
        let name = names::router_deployment(self.index);
        let pod_labels = labels::for_role(self.index, NodeRole::Router);
        self.object(
            &format!("Deployment {name}"),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": self.metadata(&name, &pod_labels),
            "spec": {
                "replicas": self.vi.spec.router.replicas,
                "selector": {"matchLabels": pod_labels},
                // Never below the desired count of serving routers during a rollout.
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {"metadata": {"labels": pod_labels},
                             "spec": self.pod_spec(self.container(NodeRole::Router, None))},
            }}),
        )
    }

    fn query_service(&self) -> Result<Service, ChildrenError> {
        let name = names::query_service(self.index);
        self.object(
            &format!("Service {name}"),
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": self.metadata(&name, &labels::for_role(self.index, NodeRole::Router)),
                "spec": {"type": "ClusterIP",
                         "selector": labels::for_role(self.index, NodeRole::Router),
                         "ports": [{"name": ports::QUERY_NAME, "port": ports::QUERY,
                                    "targetPort": ports::QUERY_NAME, "protocol": "TCP",
                                    "appProtocol": "grpc"}]}}),
        )
    }

    /// At most one pod of a role away by voluntary disruption (drains, upgrades) at a time.
    /// `maxUnavailable`, not `minAvailable`: with one replica a drain can still proceed.
    fn pdb(
        &self,
        name: &str,
        pod_labels: BTreeMap<String, String>,
    ) -> Result<PodDisruptionBudget, ChildrenError> {
        self.object(
            &format!("PodDisruptionBudget {name}"),
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": self.metadata(name, &pod_labels),
                "spec": {"maxUnavailable": 1,
                         "selector": {"matchLabels": pod_labels}}}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(edit: impl FnOnce(&mut Value)) -> VectorIndex {
        let mut v = json!({
            "apiVersion": "quiver.dev/v1alpha1", "kind": "VectorIndex",
            "metadata": {"name": "docs", "namespace": "search", "uid": "7f3a9c2e-0000-4000-8000-000000000001"},
            "spec": {"dimension": 128, "source": {"uri": "s3://b/v.npy"},
                     "storage": {"uri": "s3://b/idx"}, "shards": 3, "replicas": 2,
                     "router": {"replicas": 2}}
        });
        edit(&mut v);
        serde_json::from_value(v).expect("vectorindex")
    }

    fn cfg() -> ChildConfig {
        ChildConfig {
            node_image: "ghcr.io/quiver/index-node:0.1.0".into(),
        }
    }

    fn container(pod: &k8s_openapi::api::core::v1::PodTemplateSpec) -> Value {
        let spec = pod.spec.as_ref().expect("pod spec");
        serde_json::to_value(&spec.containers[0]).expect("container")
    }

    fn env_of(c: &Value, name: &str) -> Value {
        c["env"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    }

    #[test]
    fn one_statefulset_service_and_pdb_per_shard() -> Result<(), ChildrenError> {
        let c = build(&index(|_| {}), &cfg(), &[])?;
        let names: Vec<_> = c.shards.iter().map(|s| s.statefulset.name_any()).collect();
        assert_eq!(names, ["docs-shard-0", "docs-shard-1", "docs-shard-2"]);
        for (i, s) in c.shards.iter().enumerate() {
            let spec = &s.statefulset.spec;
            assert_eq!(spec.replicas, Some(2));
            let want = labels::for_shard("docs", i as u32);
            assert_eq!(spec.selector.match_labels.as_ref(), Some(&want));
            assert_eq!(s.service.name_any(), s.statefulset.name_any());
            assert_eq!(s.pdb.name_any(), s.statefulset.name_any());
            let c = container(&spec.template);
            assert_eq!(env_of(&c, env::SHARD)["value"], i.to_string());
            assert_eq!(c["args"][2], "shard");
        }
        Ok(())
    }

    #[test]
    fn every_child_is_owned_and_labelled() -> Result<(), ChildrenError> {
        let c = build(&index(|_| {}), &cfg(), &[])?;
        let Children {
            service_account,
            role,
            role_binding,
            shards,
            router,
            query_service,
            router_pdb,
        } = c;
        let mut metas = vec![
            service_account.metadata,
            role.metadata,
            role_binding.metadata,
            router.metadata,
            query_service.metadata,
            router_pdb.metadata,
        ];
        for s in shards {
            metas.extend([s.statefulset.metadata, s.service.metadata, s.pdb.metadata]);
        }
        for m in metas {
            assert_eq!(m.namespace.as_deref(), Some("search"));
            let owners = m.owner_references.unwrap_or_default();
            assert_eq!(owners.len(), 1, "{:?}", m.name);
            assert_eq!(owners[0].kind, "VectorIndex");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(owners[0].uid, "7f3a9c2e-0000-4000-8000-000000000001");
            let l = m.labels.unwrap_or_default();
            assert_eq!(
                l.get(labels::INDEX).map(String::as_str),
                Some("docs"),
                "{:?}",
                m.name
            );
        }
        Ok(())
    }

    #[test]
    fn pods_follow_kubernetes_and_carry_no_version() -> Result<(), ChildrenError> {
        let c = build(&index(|_| {}), &cfg(), &[])?;
        let router = container(&c.router.spec.template);
        assert_eq!(
            router["args"],
            json!(["serve", "--role", "router", "--kube", "--max-k", "1000"])
        );
        assert_eq!(router["image"], "ghcr.io/quiver/index-node:0.1.0");
        assert_eq!(env_of(&router, env::STORAGE)["value"], "s3://b/idx");
        assert_eq!(
            env_of(&router, env::LISTEN_IP)["valueFrom"]["fieldRef"]["fieldPath"],
            "status.podIP"
        );
        assert_eq!(env_of(&router, env::WORKER_THREADS)["value"], "0");
        assert!(
            env_of(&router, env::VERSION).is_null(),
            "versions come from the status"
        );
        let sa = c.service_account.name_any();
        let pod = c.router.spec.template.spec.as_ref().expect("pod");
        assert_eq!(pod.service_account_name.as_deref(), Some(sa.as_str()));
        assert_eq!(
            c.role_binding.subjects.as_ref().map(|s| s[0].name.clone()),
            Some(sa)
        );
        Ok(())
    }

    #[test]
    fn node_rbac_is_read_only() -> Result<(), ChildrenError> {
        let c = build(&index(|_| {}), &cfg(), &[])?;
        for rule in c.role.rules.unwrap_or_default() {
            assert_eq!(rule.verbs, ["get", "list", "watch"], "{rule:?}");
        }
        Ok(())
    }

    #[test]
    fn pod_settings_reach_the_pods() -> Result<(), ChildrenError> {
        let vi = index(|v| {
            v["spec"]["pods"] = json!({
                "image": "registry.local/index-node:dev", "imagePullPolicy": "Never",
                "resources": {"shard": {"limits": {"cpu": "1500m", "memory": "4Gi"}}},
                "nodeSelector": {"pool": "search"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "search", "effect": "NoSchedule"}]});
            v["spec"]["storage"]["secretRef"] = json!({"name": "s3-creds"});
        });
        let c = build(&vi, &cfg(), &[])?;
        let tmpl = c.shards[0].statefulset.spec.template.clone();
        let shard = container(&tmpl);
        assert_eq!(shard["image"], "registry.local/index-node:dev");
        assert_eq!(shard["imagePullPolicy"], "Never");
        assert_eq!(shard["resources"]["limits"]["memory"], "4Gi");
        assert_eq!(env_of(&shard, env::WORKER_THREADS)["value"], "2");
        assert_eq!(shard["envFrom"][0]["secretRef"]["name"], "s3-creds");
        let pod = tmpl.spec.expect("pod");
        assert_eq!(
            pod.node_selector.map(|n| n["pool"].clone()).as_deref(),
            Some("search")
        );
        assert_eq!(pod.tolerations.map(|t| t.len()), Some(1));
        // The router has no limit: one thread per core.
        let router = container(&c.router.spec.template);
        assert_eq!(env_of(&router, env::WORKER_THREADS)["value"], "0");
        Ok(())
    }

    #[test]
    fn worker_threads_from_cpu_limits() {
        for (q, want) in [
            (None, 0),
            (Some(""), 0),
            (Some("1"), 1),
            (Some("2"), 2),
            (Some("500m"), 1),
            (Some("1500m"), 2),
            (Some("0.25"), 1),
            (Some("4000m"), 4),
            (Some("lots"), 0),
            (Some("-1"), 0),
        ] {
            assert_eq!(worker_threads(q), want, "{q:?}");
        }
    }

    #[test]
    fn an_unstored_index_owns_nothing() {
        let vi = index(|v| {
            v["metadata"].as_object_mut().map(|m| m.remove("uid"));
        });
        assert!(matches!(
            build(&vi, &cfg(), &[]),
            Err(ChildrenError::NotStored(_, "uid"))
        ));
    }

    #[test]
    fn scaling_changes_replicas_only() -> Result<(), ChildrenError> {
        let a = build(&index(|_| {}), &cfg(), &[])?;
        let b = build(&index(|v| v["spec"]["replicas"] = json!(4)), &cfg(), &[])?;
        for (x, y) in a.shards.iter().zip(&b.shards) {
            let (xs, ys) = (&x.statefulset.spec, &y.statefulset.spec);
            assert_eq!((xs.replicas, ys.replicas), (Some(2), Some(4)));
            assert_eq!(xs.template, ys.template, "the pods are not replaced");
        }
        Ok(())
    }

    #[test]
    fn a_hot_shard_runs_its_own_replica_count() -> Result<(), ChildrenError> {
        let hot = [HotShard {
            shard: 1,
            replicas: 5,
            cool_since: None,
        }];
        let a = build(&index(|_| {}), &cfg(), &[])?;
        let c = build(&index(|_| {}), &cfg(), &hot)?;
        let replicas: Vec<Option<i32>> = c
            .shards
            .iter()
            .map(|s| s.statefulset.spec.replicas)
            .collect();
        assert_eq!(replicas, [Some(2), Some(5), Some(2)]);
        assert_eq!(
            c.shards[1].statefulset.spec.template, a.shards[1].statefulset.spec.template,
            "only the count changes"
        );
        Ok(())
    }
}
