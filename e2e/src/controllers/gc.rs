//! Garbage collector: deletes dependents whose owners are gone (background), deletes
//! dependents before their owner (foreground, `foregroundDeletion` finalizer), and
//! orphans dependents (`orphan` finalizer), following ownerReferences by uid.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, WatchEvent,
};
use kube::discovery::{Discovery, Scope, verbs};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Result, is_terminating, name, trigger_on_filtered, uid};

struct Kind {
    ar: ApiResource,
    namespaced: bool,
}

struct Obj {
    kind: usize,
    v: Value,
}

fn interesting(ev: &WatchEvent<DynamicObject>) -> bool {
    match ev {
        WatchEvent::Deleted(_) => true,
        WatchEvent::Added(o) | WatchEvent::Modified(o) => o.metadata.deletion_timestamp.is_some(),
        _ => false,
    }
}

pub async fn run(client: Client) {
    let (tx, mut rx) = mpsc::channel(1);
    let mut kinds: Vec<Kind> = Vec::new();
    let mut watchers: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut last_discovery: Option<tokio::time::Instant> = None;
    loop {
        // Rediscover now and then so custom resources are collected too.
        if last_discovery.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            match discover(&client).await {
                Ok(k) => {
                    for kind in &k {
                        let key = format!("{}/{}", kind.ar.api_version, kind.ar.plural);
                        watchers.entry(key).or_insert_with(|| {
                            trigger_on_filtered(
                                Api::<DynamicObject>::all_with(client.clone(), &kind.ar),
                                tx.clone(),
                                interesting,
                            )
                        });
                    }
                    kinds = k;
                }
                Err(e) => tracing::debug!(error = %e, "gc discovery failed"),
            }
            last_discovery = Some(tokio::time::Instant::now());
        }
        if let Err(e) = pass(&client, &kinds).await {
            tracing::debug!(error = %e, "gc pass failed");
        }
        tokio::select! {
            r = rx.recv() => if r.is_none() { return },
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        while rx.try_recv().is_ok() {}
    }
}

async fn discover(client: &Client) -> Result<Vec<Kind>> {
    let d = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for g in d.groups() {
        for (ar, caps) in g.recommended_resources() {
            if caps.supports_operation(verbs::LIST)
                && caps.supports_operation(verbs::WATCH)
                && caps.supports_operation(verbs::DELETE)
            {
                // Events never own anything and churn; skip them.
                if ar.plural == "events" {
                    continue;
                }
                out.push(Kind {
                    namespaced: caps.scope == Scope::Namespaced,
                    ar,
                });
            }
        }
    }
    Ok(out)
}

fn api(client: &Client, kind: &Kind, v: &Value) -> Api<DynamicObject> {
    match v["metadata"]["namespace"].as_str() {
        Some(ns) if kind.namespaced => Api::namespaced_with(client.clone(), ns, &kind.ar),
        _ => Api::all_with(client.clone(), &kind.ar),
    }
}

fn finalizers(v: &Value) -> Vec<String> {
    v["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn pass(client: &Client, kinds: &[Kind]) -> Result<()> {
    let mut objs = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        let list = match Api::<DynamicObject>::all_with(client.clone(), &k.ar)
            .list(&ListParams::default())
            .await
        {
            Ok(l) => l,
            // A CRD removed since discovery; skip it.
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(e.into()),
        };
        for o in list.items {
            objs.push(Obj {
                kind: i,
                v: serde_json::to_value(o)?,
            });
        }
    }
    let by_uid: HashMap<&str, &Obj> = objs.iter().map(|o| (uid(&o.v), o)).collect();
    let known_kinds: HashSet<(String, String)> = kinds
        .iter()
        .map(|k| (k.ar.api_version.clone(), k.ar.kind.clone()))
        .collect();
    let mut has_dependents: HashMap<String, bool> = HashMap::new();

    for o in &objs {
        let Some(refs) = o.v["metadata"]["ownerReferences"].as_array() else {
            continue;
        };
        if refs.is_empty() {
            continue;
        }
        let mut keep = Vec::new();
        let mut foreground = false;
        let mut all_gone = true;
        for r in refs {
            let ruid = r["uid"].as_str().unwrap_or_default();
            match by_uid.get(ruid) {
                Some(owner) => {
                    let fins = finalizers(&owner.v);
                    if is_terminating(&owner.v) && fins.iter().any(|f| f == "orphan") {
                        continue;
                    }
                    all_gone = false;
                    if is_terminating(&owner.v) && fins.iter().any(|f| f == "foregroundDeletion") {
                        foreground = true;
                    }
                    let blocking = r["blockOwnerDeletion"].as_bool() == Some(true);
                    let e = has_dependents.entry(ruid.to_string()).or_insert(false);
                    *e |= blocking;
                    keep.push(r.clone());
                }
                None => {
                    let kind = (
                        r["apiVersion"].as_str().unwrap_or_default().to_string(),
                        r["kind"].as_str().unwrap_or_default().to_string(),
                    );
                    if !known_kinds.contains(&kind) {
                        // An owner of a kind we cannot list is assumed to exist.
                        all_gone = false;
                        keep.push(r.clone());
                    }
                }
            }
        }
        let a = api(client, &kinds[o.kind], &o.v);
        if keep.len() < refs.len() && !all_gone {
            // Drop references to orphaning owners (and to owners that are gone).
            a.patch(name(&o.v), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"ownerReferences": keep, "resourceVersion": o.v["metadata"]["resourceVersion"]}}))).await?;
            continue;
        }
        if is_terminating(&o.v) {
            continue;
        }
        let dp = if foreground {
            Some(DeleteParams::foreground())
        } else if all_gone {
            let orphaned_only = refs
                .iter()
                .all(|r| by_uid.contains_key(r["uid"].as_str().unwrap_or_default()));
            if orphaned_only {
                // Every owner is orphaning: drop the references instead of deleting.
                a.patch(name(&o.v), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"ownerReferences": null, "resourceVersion": o.v["metadata"]["resourceVersion"]}}))).await?;
                continue;
            }
            Some(DeleteParams::background())
        } else {
            None
        };
        if let Some(dp) = dp {
            tracing::debug!(kind = %kinds[o.kind].ar.kind, name = name(&o.v), "collecting dependent");
            match a.delete(name(&o.v), &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    for o in objs.iter().filter(|o| is_terminating(&o.v)) {
        let fins = finalizers(&o.v);
        let dependents = objs.iter().any(|d| {
            d.v["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|r| r["uid"].as_str() == Some(uid(&o.v))))
        });
        let blocking = has_dependents.get(uid(&o.v)).copied().unwrap_or(false);
        let remove: Vec<&str> = fins
            .iter()
            .map(String::as_str)
            .filter(|f| {
                (*f == "orphan" && !dependents) || (*f == "foregroundDeletion" && !blocking)
            })
            .collect();
        if remove.is_empty() {
            continue;
        }
        let left: Vec<&String> = fins
            .iter()
            .filter(|f| !remove.contains(&f.as_str()))
            .collect();
        let a = api(client, &kinds[o.kind], &o.v);
        match a.patch(name(&o.v), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": left, "resourceVersion": o.v["metadata"]["resourceVersion"]}}))).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
