//! The table of served resources: built-in kinds plus those added by CRDs.

use std::collections::BTreeMap;

use serde_json::Value;

use super::scale::{self, ScalePaths};

/// One served resource (a group/plural pair, served in one or more versions).
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub group: String,
    /// Served versions, preferred first.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `status` subresource (status is kept apart from the main resource).
    pub status: bool,
    /// metadata.generation is maintained.
    pub generation: bool,
    /// Defined by a CRD: version → openAPIV3Schema.
    pub schemas: Option<BTreeMap<String, Value>>,
    /// Defined by a CRD: version → `additionalPrinterColumns` (an empty array when none).
    pub printer_columns: BTreeMap<String, Value>,
    /// Serves the `scale` subresource, with where the replica counts live.
    pub scale: Option<ScalePaths>,
}

impl ResourceInfo {
    /// The store key: objects are stored once per group/plural, served in every version.
    pub fn key(&self) -> String {
        if super::convert::is_events_api(self) {
            // One store for both Event APIs, as a real server keeps them.
            return "/events".into();
        }
        format!("{}/{}", self.group, self.plural)
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn is_crd_defined(&self) -> bool {
        self.schemas.is_some()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    resources: Vec<ResourceInfo>,
}

struct B(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    bool,
);

// group, version, plural, kind, namespaced, short names, status subresource
const BUILTIN: &[B] = &[
    B("", "v1", "pods", "Pod", true, &["po"], true),
    B("", "v1", "services", "Service", true, &["svc"], true),
    B("", "v1", "configmaps", "ConfigMap", true, &["cm"], false),
    B("", "v1", "secrets", "Secret", true, &[], false),
    B("", "v1", "namespaces", "Namespace", false, &["ns"], true),
    B("", "v1", "nodes", "Node", false, &["no"], true),
    B(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
        true,
    ),
    B(
        "",
        "v1",
        "persistentvolumes",
        "PersistentVolume",
        false,
        &["pv"],
        true,
    ),
    B(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        &["sa"],
        false,
    ),
    B("", "v1", "events", "Event", true, &["ev"], false),
    B("", "v1", "endpoints", "Endpoints", true, &["ep"], false),
    B(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        true,
        &["deploy"],
        true,
    ),
    B(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        true,
        &["sts"],
        true,
    ),
    B(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        true,
        &["rs"],
        true,
    ),
    B("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"], true),
    B(
        "apps",
        "v1",
        "controllerrevisions",
        "ControllerRevision",
        true,
        &[],
        false,
    ),
    B("batch", "v1", "jobs", "Job", true, &[], true),
    B("batch", "v1", "cronjobs", "CronJob", true, &["cj"], true),
    B(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        &[],
        false,
    ),
    B(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
    ),
    B(
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        true,
        &["ev"],
        false,
    ),
    B(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        true,
    ),
    B(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        &[],
        false,
    ),
    B(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        &[],
        false,
    ),
    B(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        &[],
        false,
    ),
    B(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        &[],
        false,
    ),
    B(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        &[],
        false,
    ),
];

const ALL_CATEGORY: &[&str] = &[
    "pods",
    "services",
    "deployments",
    "statefulsets",
    "replicasets",
    "daemonsets",
    "jobs",
    "cronjobs",
];

impl Registry {
    pub fn builtin() -> Self {
        let resources = BUILTIN
            .iter()
            .map(|b| ResourceInfo {
                group: b.0.into(),
                versions: vec![b.1.into()],
                plural: b.2.into(),
                singular: b.3.to_lowercase(),
                kind: b.3.into(),
                namespaced: b.4,
                short_names: b.5.iter().map(|s| s.to_string()).collect(),
                categories: if ALL_CATEGORY.contains(&b.2) {
                    vec!["all".into()]
                } else {
                    vec![]
                },
                status: b.6,
                generation: b.6 && !matches!(b.2, "pods" | "namespaces" | "nodes" | "services"),
                schemas: None,
                printer_columns: BTreeMap::new(),
                scale: scale::builtin(b.0, b.2),
            })
            .collect();
        Self { resources }
    }

    pub fn all(&self) -> &[ResourceInfo] {
        &self.resources
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.resources.iter().find(|r| {
            r.group == group && r.plural == plural && r.versions.iter().any(|v| v == version)
        })
    }

    pub fn find_by_key(&self, key: &str) -> Option<&ResourceInfo> {
        self.resources.iter().find(|r| r.key() == key)
    }

    /// Groups in order with their served versions (preferred first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in &self.resources {
            let entry = match out.iter_mut().position(|(g, _)| *g == r.group) {
                Some(i) => &mut out[i].1,
                None => {
                    out.push((r.group.clone(), Vec::new()));
                    let last = out.len() - 1;
                    &mut out[last].1
                }
            };
            for v in &r.versions {
                if !entry.contains(v) {
                    entry.push(v.clone());
                }
            }
        }
        for (_, vs) in &mut out {
            vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        out
    }

    /// Adds or replaces the resource a CRD defines.
    pub fn register_crd(&mut self, info: ResourceInfo) {
        self.resources.retain(|r| r.key() != info.key());
        self.resources.push(info);
    }

    pub fn unregister(&mut self, key: &str) {
        self.resources
            .retain(|r| r.key() != key || !r.is_crd_defined());
    }
}

/// Kubernetes version priority: GA > beta > alpha, then higher numbers first.
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let Ok(major) = digits.parse::<u32>() else {
        return (0, 0, 0);
    };
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        return (3, major, 0);
    }
    let (level, num) = if let Some(n) = tail.strip_prefix("beta") {
        (2, n)
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n)
    } else {
        return (0, 0, 0);
    };
    match num.parse::<u32>() {
        Ok(n) => (level, major, n),
        Err(_) => (0, 0, 0),
    }
}

/// Builds the resource a CRD object defines; `Err` carries validation messages.
pub fn from_crd(crd: &Value) -> Result<ResourceInfo, Vec<String>> {
    let spec = &crd["spec"];
    let mut errs = Vec::new();
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    if group.is_empty() {
        errs.push("spec.group: Required value".to_string());
    }
    if plural.is_empty() {
        errs.push("spec.names.plural: Required value".to_string());
    }
    if kind.is_empty() {
        errs.push("spec.names.kind: Required value".to_string());
    }
    let expected = format!("{plural}.{group}");
    if crd["metadata"]["name"].as_str() != Some(expected.as_str()) {
        errs.push(format!(
            "metadata.name: Invalid value: must be spec.names.plural+\".\"+spec.group ({expected})"
        ));
    }
    let mut versions = Vec::new();
    let mut schemas = BTreeMap::new();
    let mut printer_columns = BTreeMap::new();
    let mut status = false;
    let mut scale_paths = None;
    for (i, v) in spec["versions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        // CEL rules that do not compile, uniqueItems, bad patterns: refused with the CRD.
        errs.extend(super::cel::check_crd_schema(
            &v["schema"]["openAPIV3Schema"],
            &format!("spec.versions[{i}].schema.openAPIV3Schema"),
        ));
        let Some(name) = v["name"].as_str() else {
            continue;
        };
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        versions.push(name.to_string());
        schemas.insert(name.to_string(), v["schema"]["openAPIV3Schema"].clone());
        let cols = match &v["additionalPrinterColumns"] {
            Value::Array(a) => Value::Array(a.clone()),
            _ => Value::Array(vec![]),
        };
        printer_columns.insert(name.to_string(), cols);
        if v["subresources"]["status"].is_object() {
            status = true;
        }
        // One stored object serves every version, so the first declared scale applies.
        if scale_paths.is_none() {
            scale_paths = scale::from_crd(&v["subresources"]["scale"]);
        }
    }
    if versions.is_empty() {
        errs.push("spec.versions: Invalid value: must have at least one served version".into());
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(ResourceInfo {
        group,
        versions,
        singular: names["singular"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| kind.to_lowercase()),
        plural,
        kind,
        namespaced: spec["scope"].as_str() != Some("Cluster"),
        short_names: strs(&names["shortNames"]),
        categories: strs(&names["categories"]),
        status,
        generation: true,
        schemas: Some(schemas),
        printer_columns,
        scale: scale_paths,
    })
}
