//! Controllers a real control plane runs: garbage collector, StatefulSet, Deployment
//! (with ReplicaSets), Job, EndpointSlice and pod GC. They use only the Kubernetes API through kube-rs, so they
//! behave the same against any API server.

pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod job;
pub mod podgc;
pub mod serviceaccounts;
pub mod statefulset;

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object encoding: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, ControllerError>;

pub fn spawn_all(client: Client) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(gc::run(client.clone())),
        tokio::spawn(statefulset::run(client.clone())),
        tokio::spawn(deployment::run(client.clone())),
        tokio::spawn(deployment::run_replicasets(client.clone())),
        tokio::spawn(job::run(client.clone())),
        tokio::spawn(endpoints::run(client.clone())),
        tokio::spawn(podgc::run(client)),
    ]
}

/// A task aborted when this handle is dropped (watchers and listeners of a stopped loop).
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The objects of one namespace, or of all when `ns` is None (a node limited to a namespace).
pub fn scoped_api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Sends a unit on `tx` for every watch event of `api`, re-listing when the watch ends.
pub fn trigger_on<K>(api: Api<K>, tx: mpsc::Sender<()>) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    trigger_on_filtered(api, tx, |_| true)
}

/// Like [`trigger_on`], for the events `interesting` accepts.
pub fn trigger_on_filtered<K>(
    api: Api<K>,
    tx: mpsc::Sender<()>,
    interesting: fn(&WatchEvent<K>) -> bool,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let rv = match api.list(&ListParams::default().limit(1)).await {
                Ok(l) => l.metadata.resource_version.unwrap_or_default(),
                Err(e) => {
                    tracing::debug!(error = %e, "list for watch failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let _ = tx.try_send(());
            let stream = match api.watch(&WatchParams::default().timeout(290), &rv).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "watch failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(WatchEvent::Bookmark(_)) => {}
                    Ok(WatchEvent::Error(_)) | Err(_) => break,
                    Ok(ev) => {
                        if !interesting(&ev) {
                            continue;
                        }
                        if tx.is_closed() {
                            return;
                        }
                        // A full channel already holds a pending trigger.
                        let _ = tx.try_send(());
                    }
                }
            }
        }
    })
}

/// Runs `pass` whenever a trigger arrives (coalesced) and at least every `resync`.
pub async fn drive<F, Fut>(name: &str, mut rx: mpsc::Receiver<()>, resync: Duration, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    loop {
        tokio::select! {
            r = rx.recv() => if r.is_none() { return },
            _ = tokio::time::sleep(resync) => {}
        }
        // Let a burst of events land before reconciling once.
        tokio::time::sleep(Duration::from_millis(30)).await;
        while rx.try_recv().is_ok() {}
        if let Err(e) = pass().await {
            tracing::debug!(controller = name, error = %e, "reconcile pass failed; retrying");
            // Conflicts and races resolve by re-reading on the next pass.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub fn to_values<K: serde::Serialize>(items: Vec<K>) -> Result<Vec<Value>> {
    items
        .into_iter()
        .map(|i| serde_json::to_value(i).map_err(ControllerError::from))
        .collect()
}

pub fn uid(v: &Value) -> &str {
    v["metadata"]["uid"].as_str().unwrap_or_default()
}

pub fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn controller_uid(v: &Value) -> Option<&str> {
    v["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))
        .and_then(|r| r["uid"].as_str())
}

pub fn owner_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": name(owner), "uid": uid(owner), "controller": true, "blockOwnerDeletion": true})
}

pub fn is_terminating(v: &Value) -> bool {
    !v["metadata"]["deletionTimestamp"].is_null()
}

pub fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("Pending")
}

pub fn is_terminal(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Whether `labels` match a LabelSelector (matchLabels and matchExpressions).
pub fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let ml = selector["matchLabels"]
        .as_object()
        .map(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .unwrap_or(true);
    let me = selector["matchExpressions"].as_array().map(|es| {
        es.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let vals: Vec<&str> = e["values"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let cur = labels.get(key).and_then(Value::as_str);
            match e["operator"].as_str() {
                Some("In") => cur.is_some_and(|c| vals.contains(&c)),
                Some("NotIn") => cur.is_none_or(|c| !vals.contains(&c)),
                Some("Exists") => cur.is_some(),
                Some("DoesNotExist") => cur.is_none(),
                _ => false,
            }
        })
    });
    ml && me.unwrap_or(true)
}

/// A short stable hash of a pod template, as pod-template-hash / controller-revision-hash.
pub fn template_hash(template: &Value) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in template.to_string().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    let mut x = u64::from(h);
    for _ in 0..9 {
        out.push(ALPHABET[(x % ALPHABET.len() as u64) as usize] as char);
        x /= ALPHABET.len() as u64;
    }
    out
}

/// Resolves an int-or-percent (maxSurge, maxUnavailable) against `total`.
pub fn int_or_percent(v: &Value, total: i64, round_up: bool, default: i64) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(default),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if round_up => (p * total + 99) / 100,
            Some(p) => p * total / 100,
            None => s.parse().unwrap_or(default),
        },
        _ => default,
    }
}

pub fn now() -> String {
    crate::apiserver::time::now_rfc3339()
}
