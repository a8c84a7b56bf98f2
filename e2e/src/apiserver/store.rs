//! The object store: one map per resource, a global resourceVersion counter, an event log
//! for watches, and the write semantics of the real API server (generation, status
//! subresource, finalizers, graceful pod deletion, namespace termination, CRD registration).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::apply;
use super::error::ApiError;
use super::patch;
use super::registry::{Registry, ResourceInfo, from_crd};
use super::schema::validate_custom_resource;
use super::selectors::Selector;
use super::services;
use super::time::{new_uid, now_rfc3339, random_suffix, rfc3339, unix_now};

const CRD_KEY: &str = "apiextensions.k8s.io/customresourcedefinitions";
const NS_KEY: &str = "/namespaces";
const POD_KEY: &str = "/pods";
const SVC_KEY: &str = "/services";

#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub key: String,
    pub ns: String,
    pub etype: &'static str,
    pub object: Value,
    /// The object before a modification, so watches with selectors can see it leave.
    pub old: Option<Value>,
}

#[derive(Clone)]
struct Inner {
    registry: Registry,
    objects: HashMap<String, BTreeMap<(String, String), Value>>,
    rv: u64,
    log: VecDeque<Arc<Event>>,
    /// Watches from below this resourceVersion are told 410 (history compacted).
    floor: u64,
    window: usize,
}

/// How a write is attributed in managedFields.
pub enum Manager<'a> {
    Update(&'a str),
    /// managedFields already computed by server-side apply.
    Applied,
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply { force: bool },
}

/// What a new watch sends first, its live subscription, and the version it starts at.
pub type WatchStart = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>, u64);

pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Event>>,
}

pub fn rv_of(obj: &Value) -> Option<u64> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    o
}

fn without_volatile(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        if let Some(Value::Array(entries)) = m.get_mut("managedFields") {
            for e in entries {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
    }
    o
}

/// 409 Conflict when `sent` names a resourceVersion (empty means unconditional) other than
/// the stored object's, as for every write with a precondition.
pub fn check_resource_version(
    res: &ResourceInfo,
    name: &str,
    sent: &Value,
    current: &Value,
) -> Result<(), ApiError> {
    match sent["metadata"]["resourceVersion"]
        .as_str()
        .filter(|rv| !rv.is_empty())
    {
        Some(rv) if Some(rv) != current["metadata"]["resourceVersion"].as_str() => {
            Err(ApiError::conflict(
                &res.group,
                &res.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ))
        }
        _ => Ok(()),
    }
}

fn set_default(obj: &mut Value, path: &[&str], v: Value) {
    let mut cur = obj;
    for p in &path[..path.len() - 1] {
        if !cur[*p].is_object() {
            if !cur[*p].is_null() {
                return;
            }
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
    let last = path[path.len() - 1];
    if cur[last].is_null() {
        cur[last] = v;
    }
}

/// The elements of the array at `key`, without inserting the key when it is absent
/// (indexing a `Value` mutably would store a `null` there, which the real API server never does).
fn items_mut<'a>(obj: &'a mut Value, key: &str) -> &'a mut [Value] {
    obj.get_mut(key)
        .and_then(Value::as_array_mut)
        .map(Vec::as_mut_slice)
        .unwrap_or_default()
}

fn default_pod_spec(spec: &mut Value) {
    if spec.is_object() {
        set_default(spec, &["restartPolicy"], json!("Always"));
        set_default(spec, &["terminationGracePeriodSeconds"], json!(30));
        set_default(spec, &["dnsPolicy"], json!("ClusterFirst"));
        set_default(spec, &["schedulerName"], json!("default-scheduler"));
        for list in ["containers", "initContainers"] {
            for c in items_mut(spec, list) {
                default_container(c);
            }
        }
    }
}

fn default_container(c: &mut Value) {
    set_default(
        c,
        &["terminationMessagePath"],
        json!("/dev/termination-log"),
    );
    set_default(c, &["terminationMessagePolicy"], json!("File"));
    set_default(c, &["imagePullPolicy"], json!("IfNotPresent"));
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if c[probe].is_object() {
            set_default(c, &[probe, "timeoutSeconds"], json!(1));
            set_default(c, &[probe, "periodSeconds"], json!(10));
            set_default(c, &[probe, "successThreshold"], json!(1));
            set_default(c, &[probe, "failureThreshold"], json!(3));
            if c[probe]["httpGet"].is_object() {
                set_default(c, &[probe, "httpGet", "scheme"], json!("HTTP"));
                set_default(c, &[probe, "httpGet", "path"], json!("/"));
            }
        }
    }
    for port in items_mut(c, "ports") {
        set_default(port, &["protocol"], json!("TCP"));
    }
    for e in items_mut(c, "env") {
        if e["valueFrom"]["fieldRef"].is_object() {
            set_default(e, &["valueFrom", "fieldRef", "apiVersion"], json!("v1"));
        }
    }
}

/// The defaults a real API server fills in that controllers and clients read back.
fn apply_defaults(key: &str, obj: &mut Value, uid: &str) {
    match key {
        "/pods" => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
            }
        }
        "apps/deployments" => {
            set_default(obj, &["spec", "replicas"], json!(1));
            set_default(
                obj,
                &["spec", "strategy"],
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            set_default(obj, &["spec", "progressDeadlineSeconds"], json!(600));
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        "apps/statefulsets" => {
            set_default(obj, &["spec", "replicas"], json!(1));
            set_default(obj, &["spec", "podManagementPolicy"], json!("OrderedReady"));
            set_default(
                obj,
                &["spec", "updateStrategy"],
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        "apps/replicasets" => {
            set_default(obj, &["spec", "replicas"], json!(1));
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        "batch/jobs" => {
            let spec = &mut obj["spec"];
            if spec["parallelism"].is_null() {
                spec["parallelism"] = json!(1);
                set_default(spec, &["completions"], json!(1));
            }
            set_default(spec, &["backoffLimit"], json!(6));
            set_default(spec, &["completionMode"], json!("NonIndexed"));
            set_default(spec, &["suspend"], json!(false));
            if spec["manualSelector"].as_bool() != Some(true) && spec["selector"].is_null() {
                spec["selector"] =
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
                let name = obj["metadata"]["name"].clone();
                let labels = &mut obj["spec"]["template"]["metadata"]["labels"];
                if !labels.is_object() {
                    *labels = json!({});
                }
                labels["batch.kubernetes.io/controller-uid"] = json!(uid);
                labels["controller-uid"] = json!(uid);
                labels["batch.kubernetes.io/job-name"] = name.clone();
                labels["job-name"] = name;
            }
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        "/services" => {
            set_default(obj, &["spec", "type"], json!("ClusterIP"));
            set_default(obj, &["spec", "sessionAffinity"], json!("None"));
            services::default_ports(obj);
        }
        "/persistentvolumeclaims" => {
            set_default(obj, &["spec", "volumeMode"], json!("Filesystem"));
        }
        _ => {}
    }
}

fn crd_status(crd: &Value) -> Value {
    let now = now_rfc3339();
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    json!({
        "acceptedNames": crd["spec"]["names"],
        "storedVersions": storage,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ]
    })
}

impl Store {
    /// A copy of this store that nobody watches: a `dryRun=All` request runs against it, so
    /// admission, defaulting, validation and apply run as for a real write, and nothing is
    /// stored or sent to watches.
    pub fn scratch(&self) -> Store {
        let mut inner = self.lock().clone();
        inner.log.clear();
        Store {
            inner: Mutex::new(inner),
            tx: broadcast::channel(1).0,
        }
    }

    pub fn new(window: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let store = Store {
            inner: Mutex::new(Inner {
                registry: Registry::builtin(),
                objects: HashMap::new(),
                rv: 0,
                log: VecDeque::new(),
                floor: 0,
                window: window.max(16),
            }),
            tx,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let res = store.resolve("", "v1", "namespaces");
            if let Some(res) = res {
                // Cannot fail: the names are valid and the store is empty.
                let _ = store.create(
                    &res,
                    "",
                    json!({"metadata": {"name": ns}}),
                    "quiver-apiserver",
                );
            }
        }
        store
    }

    /// The `default/kubernetes` Service a real API server keeps, with its Endpoints and
    /// EndpointSlice pointing at `api` (the API server's own address).
    pub fn add_kubernetes_service(&self, api: std::net::SocketAddr) {
        let (svc, endpoints, slice) = services::kubernetes_objects(api);
        for (group, plural, obj) in [
            ("", "services", svc),
            ("", "endpoints", endpoints),
            ("discovery.k8s.io", "endpointslices", slice),
        ] {
            if let Some(res) = self.resolve(group, "v1", plural)
                && let Err(e) = self.create(&res, "default", obj, "kube-apiserver")
            {
                tracing::warn!(resource = plural, error = %e, "could not create the kubernetes service");
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps (writes are last), so go on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<ResourceInfo> {
        self.lock().registry.find(group, version, plural).cloned()
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, res: &ResourceInfo, ns: &str, name: &str) -> Result<Value, ApiError> {
        let inner = self.lock();
        inner.get(res, ns, name).cloned()
    }

    /// Lists in (namespace, name) order; `cont` is an offset from an earlier page.
    pub fn list(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        sel: &Selector,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<(Vec<Value>, u64, Option<String>), ApiError> {
        let inner = self.lock();
        let start: usize = match cont {
            Some(c) if !c.is_empty() => c
                .parse()
                .map_err(|_| ApiError::bad_request("invalid continue token"))?,
            _ => 0,
        };
        let items: Vec<&Value> = inner
            .objects
            .get(&res.key())
            .map(|m| {
                m.iter()
                    .filter(|((n, _), v)| ns.is_none_or(|ns| ns == n) && sel.matches(v))
                    .map(|(_, v)| v)
                    .collect()
            })
            .unwrap_or_default();
        let end = limit
            .filter(|l| *l > 0)
            .map_or(items.len(), |l| (start + l).min(items.len()));
        let page = items
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .map(|v| (*v).clone())
            .collect();
        let next = (end < items.len()).then(|| end.to_string());
        Ok((page, inner.rv, next))
    }

    pub fn create(
        &self,
        res: &ResourceInfo,
        ns: &str,
        obj: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let mut obj = obj;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be an object"));
        }
        let uid = new_uid();
        inner.admit(res, ns, &mut obj)?;
        apply_defaults(&res.key(), &mut obj, &uid);
        let mut fresh = obj.clone();
        if let Some(m) = fresh["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        apply::record_update(&json!({}), &mut fresh, manager, "", res.status);
        inner.insert_new(&self.tx, res, ns, fresh, uid)
    }

    /// PUT of the main resource or the status subresource.
    pub fn replace(
        &self,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        obj: Value,
        sub: &str,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        if name_of(&obj) != name {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let old = inner.get(res, ns, name)?.clone();
        check_resource_version(res, name, &obj, &old)?;
        inner.commit(&self.tx, res, ns, old, obj, sub, Manager::Update(manager))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        sub: &str,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let current = match inner.get(res, ns, name) {
            Ok(v) => v.clone(),
            Err(e) => {
                let PatchKind::Apply { force } = kind else {
                    return Err(e);
                };
                if !sub.is_empty() {
                    return Err(e);
                }
                // Apply creates the object when it does not exist.
                if name_of(body) != name {
                    return Err(ApiError::bad_request(
                        "the name of the object does not match the name on the URL",
                    ));
                }
                let uid = new_uid();
                let mut applied = body.clone();
                inner.admit(res, ns, &mut applied)?;
                apply_defaults(&res.key(), &mut applied, &uid);
                let created = apply::apply(
                    &json!({"metadata": {}}),
                    &applied,
                    manager,
                    force,
                    "",
                    res.status,
                )?;
                return inner.insert_new(&self.tx, res, ns, created, uid);
            }
        };
        let new = match kind {
            PatchKind::Merge => {
                let mut n = current.clone();
                patch::merge_patch(&mut n, body);
                n
            }
            PatchKind::Strategic => {
                if res.is_crd_defined() {
                    return Err(ApiError::unsupported_media(
                        "application/strategic-merge-patch+json",
                    ));
                }
                let mut n = current.clone();
                patch::strategic_merge(&mut n, body);
                n
            }
            PatchKind::Json => {
                let mut n = current.clone();
                patch::json_patch(&mut n, body)?;
                n
            }
            PatchKind::Apply { force } => {
                // A real server merges the applied configuration into the live object
                // and checks the name of the result: a configuration without a name (as
                // kube-lease-manager sends) takes the live one; another name is refused.
                if !name_of(body).is_empty() && name_of(body) != name {
                    return Err(ApiError::bad_request(
                        "the name of the object does not match the name on the URL",
                    ));
                }
                let out = apply::apply(&current, body, manager, force, sub, res.status)?;
                return inner.commit(&self.tx, res, ns, current, out, sub, Manager::Applied);
            }
        };
        check_resource_version(res, name, &new, &current)?;
        inner.commit(
            &self.tx,
            res,
            ns,
            current,
            new,
            sub,
            Manager::Update(manager),
        )
    }

    /// pods/binding: sets spec.nodeName, as the scheduler does.
    pub fn bind(
        &self,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        node: &str,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let old = inner.get(res, ns, name)?.clone();
        if old["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
        {
            return Err(ApiError::conflict(
                "",
                "pods",
                name,
                &format!(
                    "pod {name} is already assigned to node {}",
                    old["spec"]["nodeName"]
                ),
            ));
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(node);
        inner.commit(
            &self.tx,
            res,
            ns,
            old,
            new,
            "",
            Manager::Update("quiver-scheduler"),
        )
    }

    pub fn delete(
        &self,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        inner.delete(&self.tx, res, ns, name, opts)
    }

    pub fn delete_collection(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        sel: &Selector,
        opts: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let mut inner = self.lock();
        let names: Vec<(String, String)> = inner
            .objects
            .get(&res.key())
            .map(|m| {
                m.iter()
                    .filter(|((n, _), v)| ns.is_none_or(|ns| ns == n) && sel.matches(v))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        for (n, name) in names {
            out.push(inner.delete(&self.tx, res, &n, &name, opts)?);
        }
        Ok(out)
    }

    /// Starts a watch: returns events to send first and a live subscription with no gap.
    pub fn watch(&self, res: &ResourceInfo, from: Option<u64>) -> Result<WatchStart, ApiError> {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let key = res.key();
        let backlog = match from {
            None | Some(0) => inner
                .objects
                .get(&key)
                .map(|m| {
                    m.iter()
                        .map(|((ns, _), v)| {
                            Arc::new(Event {
                                rv: inner.rv,
                                key: key.clone(),
                                ns: ns.clone(),
                                etype: "ADDED",
                                object: v.clone(),
                                old: None,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Some(rv) if rv < inner.floor => {
                return Err(ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    inner.floor + 1
                )));
            }
            Some(rv) => inner
                .log
                .iter()
                .filter(|e| e.rv > rv && e.key == key)
                .cloned()
                .collect(),
        };
        Ok((backlog, rx, inner.rv))
    }
}

impl Inner {
    /// Mutating admission of a new object (pods: the ServiceAccount plugin).
    fn admit(&self, res: &ResourceInfo, ns: &str, obj: &mut Value) -> Result<(), ApiError> {
        if res.key() != "/pods" {
            return Ok(());
        }
        let accounts = self.objects.get("/serviceaccounts");
        let suffix = super::time::random_suffix();
        super::admission::admit_pod(obj, ns, &suffix, |sa| {
            accounts
                .and_then(|m| m.get(&(ns.to_string(), sa.to_string())))
                .cloned()
        })
    }

    fn get(&self, res: &ResourceInfo, ns: &str, name: &str) -> Result<&Value, ApiError> {
        self.objects
            .get(&res.key())
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))
    }

    /// Cluster IPs held by Services (all but `except`); freed when a Service is removed.
    fn service_ips(
        &self,
        except: Option<(&str, &str)>,
    ) -> std::collections::HashSet<std::net::Ipv4Addr> {
        self.objects
            .get(SVC_KEY)
            .map(|m| {
                m.iter()
                    .filter(|((n, s), _)| except.is_none_or(|(en, es)| en != n || es != s))
                    .filter_map(|(_, v)| services::allocated(v))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(&mut self, tx: &broadcast::Sender<Arc<Event>>, ev: Event) {
        let ev = Arc::new(ev);
        self.log.push_back(ev.clone());
        while self.log.len() > self.window {
            if let Some(old) = self.log.pop_front() {
                self.floor = old.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = tx.send(ev);
    }

    fn version_schema(&self, res: &ResourceInfo, obj: &Value) -> Option<Value> {
        let schemas = res.schemas.as_ref()?;
        let version = obj["apiVersion"]
            .as_str()
            .and_then(|a| a.rsplit('/').next())
            .unwrap_or_default();
        schemas
            .get(version)
            .or_else(|| schemas.values().next())
            .cloned()
    }

    /// Schema and CEL validation of a custom resource; `old` is the stored object on updates.
    fn validate(
        &self,
        res: &ResourceInfo,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if let Some(schema) = self.version_schema(res, obj) {
            let errs = validate_custom_resource(obj, old, &schema);
            if !errs.is_empty() {
                return Err(ApiError::invalid_fields(
                    &res.group,
                    &res.kind,
                    name_of(obj),
                    &errs,
                ));
            }
        }
        Ok(())
    }

    fn insert_new(
        &mut self,
        tx: &broadcast::Sender<Arc<Event>>,
        res: &ResourceInfo,
        ns: &str,
        mut obj: Value,
        uid: String,
    ) -> Result<Value, ApiError> {
        if let Some(k) = obj["kind"].as_str()
            && k != res.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({k}) does not match the resource ({})",
                res.kind
            )));
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let meta = &mut obj["metadata"];
        if meta["name"].as_str().is_none_or(str::is_empty) {
            match meta["generateName"].as_str() {
                Some(prefix) => meta["name"] = json!(format!("{prefix}{}", random_suffix())),
                None => {
                    return Err(ApiError::invalid(
                        &res.kind,
                        "",
                        &[
                            "metadata.name: Required value: name or generateName is required"
                                .into(),
                        ],
                    ));
                }
            }
        }
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        if !is_dns_subdomain(&name) {
            return Err(ApiError::invalid(
                &res.kind,
                &name,
                &[format!(
                    "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
                )],
            ));
        }
        if res.namespaced {
            if let Some(bns) = meta["namespace"].as_str().filter(|s| !s.is_empty())
                && bns != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta["namespace"] = json!(ns);
            let nsres = self.registry.find("", "v1", "namespaces").cloned();
            if let Some(nsres) = nsres {
                match self.get(&nsres, "", ns) {
                    Err(_) => return Err(ApiError::not_found("", "namespaces", ns)),
                    Ok(n) if !n["metadata"]["deletionTimestamp"].is_null() => {
                        return Err(ApiError {
                            code: 403,
                            reason: "Forbidden",
                            message: format!(
                                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                                res.plural
                            ),
                            details: None,
                        });
                    }
                    Ok(_) => {}
                }
            }
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        let key = res.key();
        if self
            .objects
            .get(&key)
            .is_some_and(|m| m.contains_key(&(ns.to_string(), name.clone())))
        {
            return Err(ApiError::already_exists(&res.group, &res.plural, &name));
        }
        if let Some(m) = obj.as_object_mut()
            && res.status
        {
            m.remove("status");
        }
        match key.as_str() {
            POD_KEY => obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"}),
            NS_KEY => obj["status"] = json!({"phase": "Active"}),
            _ => {}
        }
        if key == SVC_KEY {
            let used = self.service_ips(None);
            services::on_write(None, &mut obj, &used, &name)?;
        }
        self.validate(res, &mut obj, None)?;
        let crd_info = if key == CRD_KEY {
            let info = from_crd(&obj)
                .map_err(|errs| ApiError::invalid("CustomResourceDefinition", &name, &errs))?;
            if let Some(other) = self
                .registry
                .find(&info.group, &info.versions[0], &info.plural)
                && !other.is_crd_defined()
            {
                return Err(ApiError::invalid(
                    "CustomResourceDefinition",
                    &name,
                    &[
                        "spec.names.plural: Invalid value: already served by a built-in resource"
                            .into(),
                    ],
                ));
            }
            obj["status"] = crd_status(&obj);
            Some(info)
        } else {
            None
        };
        let rv = self.next_rv();
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uid);
        meta["resourceVersion"] = json!(rv.to_string());
        meta["creationTimestamp"] = json!(now_rfc3339());
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
        }
        if res.generation {
            meta["generation"] = json!(1);
        }
        if let Some(info) = crd_info {
            self.registry.register_crd(info);
        }
        self.objects
            .entry(key.clone())
            .or_default()
            .insert((ns.to_string(), name), obj.clone());
        self.emit(
            tx,
            Event {
                rv,
                key,
                ns: ns.to_string(),
                etype: "ADDED",
                object: obj.clone(),
                old: None,
            },
        );
        Ok(obj)
    }

    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        tx: &broadcast::Sender<Arc<Event>>,
        res: &ResourceInfo,
        ns: &str,
        old: Value,
        new: Value,
        sub: &str,
        manager: Manager<'_>,
    ) -> Result<Value, ApiError> {
        let name = name_of(&old).to_string();
        let mut result = if sub == "status" {
            let mut r = old.clone();
            match new.get("status") {
                Some(s) => r["status"] = s.clone(),
                None => {
                    if let Some(m) = r.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            if let Manager::Applied = manager {
                r["metadata"]["managedFields"] = new["metadata"]["managedFields"].clone();
            }
            r
        } else {
            let mut r = new;
            if !r["metadata"].is_object() {
                r["metadata"] = json!({});
            }
            if res.status {
                match old.get("status") {
                    Some(s) => r["status"] = s.clone(),
                    None => {
                        if let Some(m) = r.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            r
        };
        if let Some(k) = result["kind"].as_str()
            && k != res.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({k}) does not match the resource ({})",
                res.kind
            )));
        }
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "generateName",
        ] {
            match old["metadata"].get(k) {
                Some(v) => result["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = result["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        if let Manager::Update(m) = manager {
            result["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
            if result["metadata"]["managedFields"].is_null()
                && let Some(meta) = result["metadata"].as_object_mut()
            {
                meta.remove("managedFields");
            }
            apply::record_update(&old, &mut result, m, sub, res.status);
        }
        if sub.is_empty() {
            // The real API server defaults every write, not only creates.
            let uid = old["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            apply_defaults(&res.key(), &mut result, &uid);
            if res.key() == SVC_KEY {
                let used = self.service_ips(Some((ns, &name)));
                services::on_write(Some(&old), &mut result, &used, &name)?;
            }
        }
        self.validate(res, &mut result, Some(&old))?;
        let key = res.key();
        if key == CRD_KEY && sub != "status" {
            let info = from_crd(&result)
                .map_err(|errs| ApiError::invalid("CustomResourceDefinition", &name, &errs))?;
            self.registry.register_crd(info);
        }
        let finalize = !result["metadata"]["deletionTimestamp"].is_null()
            && result["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty)
            && (key != POD_KEY
                || result["metadata"]["deletionGracePeriodSeconds"].as_i64() == Some(0));
        result["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if without_volatile(&result) == without_volatile(&old) && !finalize {
            return Ok(old);
        }
        if res.generation && spec_part(&result) != spec_part(&old) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0);
            result["metadata"]["generation"] = json!(g + 1);
        }
        if finalize {
            return self.remove(tx, res, ns, &name, Some(result));
        }
        let rv = self.next_rv();
        result["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects
            .entry(key.clone())
            .or_default()
            .insert((ns.to_string(), name), result.clone());
        self.emit(
            tx,
            Event {
                rv,
                key,
                ns: ns.to_string(),
                etype: "MODIFIED",
                object: result.clone(),
                old: Some(old),
            },
        );
        Ok(result)
    }

    /// Removes an object for good (finalizers done). `last` is its final state.
    fn remove(
        &mut self,
        tx: &broadcast::Sender<Arc<Event>>,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        last: Option<Value>,
    ) -> Result<Value, ApiError> {
        let key = res.key();
        let stored = self
            .objects
            .get_mut(&key)
            .and_then(|m| m.remove(&(ns.to_string(), name.to_string())))
            .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))?;
        let mut obj = last.unwrap_or(stored);
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.emit(
            tx,
            Event {
                rv,
                key: key.clone(),
                ns: ns.to_string(),
                etype: "DELETED",
                object: obj.clone(),
                old: None,
            },
        );
        if key == CRD_KEY {
            // The CRD's resource goes away with all its objects.
            if let Ok(info) = from_crd(&obj) {
                let ckey = info.key();
                let gone: Vec<((String, String), Value)> = self
                    .objects
                    .remove(&ckey)
                    .map(|m| m.into_iter().collect())
                    .unwrap_or_default();
                for ((cns, _), mut o) in gone {
                    let rv = self.next_rv();
                    o["metadata"]["resourceVersion"] = json!(rv.to_string());
                    self.emit(
                        tx,
                        Event {
                            rv,
                            key: ckey.clone(),
                            ns: cns,
                            etype: "DELETED",
                            object: o,
                            old: None,
                        },
                    );
                }
                self.registry.unregister(&ckey);
            }
        }
        if res.namespaced {
            self.maybe_finish_namespace(tx, ns);
        }
        Ok(obj)
    }

    fn namespace_empty(&self, ns: &str) -> bool {
        self.registry
            .all()
            .iter()
            .filter(|r| r.namespaced)
            .all(|r| {
                self.objects
                    .get(&r.key())
                    .is_none_or(|m| !m.keys().any(|(n, _)| n == ns))
            })
    }

    fn maybe_finish_namespace(&mut self, tx: &broadcast::Sender<Arc<Event>>, ns: &str) {
        let Some(nsres) = self.registry.find("", "v1", "namespaces").cloned() else {
            return;
        };
        let terminating = self
            .get(&nsres, "", ns)
            .is_ok_and(|n| !n["metadata"]["deletionTimestamp"].is_null());
        if terminating && self.namespace_empty(ns) {
            let _ = self.remove(tx, &nsres, "", ns, None);
        }
    }

    fn delete(
        &mut self,
        tx: &broadcast::Sender<Arc<Event>>,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let old = self.get(res, ns, name)?.clone();
        if let Some(uid) = &opts.precondition_uid
            && old["metadata"]["uid"].as_str() != Some(uid.as_str())
        {
            return Err(ApiError::conflict(
                &res.group,
                &res.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old["metadata"]["uid"]
                ),
            ));
        }
        if let Some(rv) = &opts.precondition_rv {
            check_resource_version(
                res,
                name,
                &json!({"metadata": {"resourceVersion": rv}}),
                &old,
            )?;
        }
        let key = res.key();
        let now = unix_now();
        if key == NS_KEY {
            // Namespace termination: delete everything inside, finish when it is empty.
            let mut new = old.clone();
            if new["metadata"]["deletionTimestamp"].is_null() {
                new["metadata"]["deletionTimestamp"] = json!(rfc3339(now));
                new["status"]["phase"] = json!("Terminating");
                let rv = self.next_rv();
                new["metadata"]["resourceVersion"] = json!(rv.to_string());
                self.objects
                    .entry(key.clone())
                    .or_default()
                    .insert((String::new(), name.to_string()), new.clone());
                self.emit(
                    tx,
                    Event {
                        rv,
                        key,
                        ns: String::new(),
                        etype: "MODIFIED",
                        object: new.clone(),
                        old: Some(old),
                    },
                );
                let inside: Vec<(ResourceInfo, String)> = self
                    .registry
                    .all()
                    .iter()
                    .filter(|r| r.namespaced)
                    .flat_map(|r| {
                        self.objects
                            .get(&r.key())
                            .map(|m| {
                                m.keys()
                                    .filter(|(n, _)| n == name)
                                    .map(|(_, o)| (r.clone(), o.clone()))
                                    .collect::<Vec<_>>()
                            })
                            .unwrap_or_default()
                    })
                    .collect();
                for (r, o) in inside {
                    let _ = self.delete(tx, &r, name, &o, &DeleteOptions::default());
                }
            }
            self.maybe_finish_namespace(tx, name);
            return Ok(self.get(res, ns, name).cloned().unwrap_or(new));
        }
        let mut new = old.clone();
        if key == POD_KEY {
            let bound = old["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty());
            let terminal = matches!(
                old["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            );
            let grace = opts
                .grace_period
                .or(old["metadata"]["deletionGracePeriodSeconds"].as_i64())
                .unwrap_or_else(|| {
                    old["spec"]["terminationGracePeriodSeconds"]
                        .as_i64()
                        .unwrap_or(30)
                });
            if bound && !terminal && grace > 0 {
                // Graceful: the kubelet stops the containers, then deletes with grace 0.
                let current = old["metadata"]["deletionGracePeriodSeconds"].as_i64();
                if current.is_none_or(|c| grace < c) {
                    new["metadata"]["deletionTimestamp"] = json!(rfc3339(now + grace));
                    new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                }
                self.add_propagation_finalizer(&mut new, opts);
                return self.store_modified(tx, res, ns, name, old, new);
            }
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        }
        self.add_propagation_finalizer(&mut new, opts);
        let has_finalizers = new["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if new["metadata"]["deletionTimestamp"].is_null() {
                new["metadata"]["deletionTimestamp"] = json!(rfc3339(now));
                if new["metadata"]["deletionGracePeriodSeconds"].is_null() {
                    new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                }
            }
            return self.store_modified(tx, res, ns, name, old, new);
        }
        if new["metadata"]["deletionTimestamp"].is_null() {
            new["metadata"]["deletionTimestamp"] = json!(rfc3339(now));
        }
        self.remove(tx, res, ns, name, Some(new))
    }

    fn add_propagation_finalizer(&self, obj: &mut Value, opts: &DeleteOptions) {
        let fin = match opts.propagation.as_deref() {
            Some("Foreground") => "foregroundDeletion",
            Some("Orphan") => "orphan",
            _ => return,
        };
        if !obj["metadata"]["deletionTimestamp"].is_null()
            && obj["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty)
        {
            return;
        }
        let list = &mut obj["metadata"]["finalizers"];
        if !list.is_array() {
            *list = json!([]);
        }
        if let Some(a) = list.as_array_mut()
            && !a.iter().any(|f| f == fin)
        {
            a.push(json!(fin));
        }
    }

    fn store_modified(
        &mut self,
        tx: &broadcast::Sender<Arc<Event>>,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        old: Value,
        mut new: Value,
    ) -> Result<Value, ApiError> {
        if new == old {
            return Ok(old);
        }
        let rv = self.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = res.key();
        self.objects
            .entry(key.clone())
            .or_default()
            .insert((ns.to_string(), name.to_string()), new.clone());
        self.emit(
            tx,
            Event {
                rv,
                key,
                ns: ns.to_string(),
                etype: "MODIFIED",
                object: new.clone(),
                old: Some(old),
            },
        );
        Ok(new)
    }
}
