//! StatefulSet: ordinal pods with stable names, OrderedReady or Parallel management,
//! volumeClaimTemplates → PVCs, rolling replacement on template change, status counts.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    Result, controller_uid, drive, is_ready, is_terminal, is_terminating, name, owner_ref,
    template_hash, to_values, trigger_on, uid,
};

pub async fn run(client: Client) {
    let (tx, rx) = mpsc::channel(1);
    let _w1 = trigger_on(Api::<StatefulSet>::all(client.clone()), tx.clone());
    let _w2 = trigger_on(Api::<Pod>::all(client.clone()), tx);
    drive("statefulset", rx, Duration::from_secs(30), || {
        pass(client.clone())
    })
    .await;
}

async fn pass(client: Client) -> Result<()> {
    let sets = to_values(
        Api::<StatefulSet>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items,
    )?;
    let pods = to_values(
        Api::<Pod>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items,
    )?;
    for sts in sets.iter().filter(|s| !is_terminating(s)) {
        let owned: Vec<&Value> = pods
            .iter()
            .filter(|p| controller_uid(p) == Some(uid(sts)))
            .collect();
        if let Err(e) = reconcile(&client, sts, &owned).await {
            tracing::debug!(statefulset = name(sts), error = %e, "reconcile failed");
        }
    }
    Ok(())
}

fn ordinal(sts: &str, pod: &str) -> Option<i64> {
    pod.strip_prefix(sts)?.strip_prefix('-')?.parse().ok()
}

fn build_pod(sts: &Value, i: i64, hash: &str) -> Value {
    let sname = name(sts);
    let pname = format!("{sname}-{i}");
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": sts["spec"]["template"]["metadata"].clone(), "spec": sts["spec"]["template"]["spec"].clone()});
    if !pod["metadata"].is_object() {
        pod["metadata"] = json!({});
    }
    pod["metadata"]["name"] = json!(pname);
    if let Some(m) = pod["metadata"].as_object_mut() {
        m.remove("namespace");
        m.remove("generateName");
    }
    let labels = &mut pod["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    labels["statefulset.kubernetes.io/pod-name"] = json!(pname);
    labels["apps.kubernetes.io/pod-index"] = json!(i.to_string());
    labels["controller-revision-hash"] = json!(hash);
    pod["metadata"]["ownerReferences"] = json!([owner_ref(sts, "apps/v1", "StatefulSet")]);
    pod["spec"]["hostname"] = json!(pname);
    if let Some(svc) = sts["spec"]["serviceName"].as_str() {
        pod["spec"]["subdomain"] = json!(svc);
    }
    for t in sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let vname = t["metadata"]["name"].as_str().unwrap_or_default();
        let vol = json!({"name": vname, "persistentVolumeClaim": {"claimName": format!("{vname}-{pname}")}});
        let vols = &mut pod["spec"]["volumes"];
        if !vols.is_array() {
            *vols = json!([]);
        }
        if let Some(a) = vols.as_array_mut() {
            a.retain(|v| v["name"] != vname);
            a.push(vol);
        }
    }
    pod
}

async fn ensure_pvcs(client: &Client, ns: &str, sts: &Value, pod_name: &str) -> Result<()> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    for t in sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let vname = t["metadata"]["name"].as_str().unwrap_or_default();
        let pvc_name = format!("{vname}-{pod_name}");
        if api.get_opt(&pvc_name).await?.is_some() {
            continue;
        }
        let mut pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": t["metadata"].clone(), "spec": t["spec"].clone()});
        pvc["metadata"]["name"] = json!(pvc_name);
        let labels = &mut pvc["metadata"]["labels"];
        if !labels.is_object() {
            *labels = json!({});
        }
        for (k, v) in sts["spec"]["selector"]["matchLabels"]
            .as_object()
            .cloned()
            .unwrap_or_default()
        {
            labels[k] = v;
        }
        match api
            .create(&PostParams::default(), &serde_json::from_value(pvc)?)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn reconcile(client: &Client, sts: &Value, owned: &[&Value]) -> Result<()> {
    let ns = sts["metadata"]["namespace"].as_str().unwrap_or_default();
    let sname = name(sts);
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1);
    let parallel = sts["spec"]["podManagementPolicy"].as_str() == Some("Parallel");
    let hash = template_hash(&sts["spec"]["template"]);
    let mut by_ord: BTreeMap<i64, &Value> = BTreeMap::new();
    for p in owned {
        if let Some(i) = ordinal(sname, name(p)) {
            by_ord.insert(i, p);
        }
    }
    // Terminal pods are replaced, as a StatefulSet's pods must keep running.
    for (i, p) in &by_ord {
        if is_terminal(p) && !is_terminating(p) && *i < replicas {
            pods_api.delete(name(p), &DeleteParams::default()).await?;
        }
    }
    let mut blocked = false;
    for i in 0..replicas {
        match by_ord.get(&i) {
            Some(p) => {
                if !parallel && (!is_ready(p) || is_terminating(p)) {
                    blocked = true;
                    break;
                }
            }
            None => {
                let pname = format!("{sname}-{i}");
                ensure_pvcs(client, ns, sts, &pname).await?;
                let pod: Pod = serde_json::from_value(build_pod(sts, i, &hash))?;
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                if !parallel {
                    blocked = true;
                    break;
                }
            }
        }
    }
    // Scale down: highest ordinal first; OrderedReady waits for each to go.
    let extra: Vec<(&i64, &&Value)> = by_ord
        .iter()
        .filter(|(i, _)| **i >= replicas)
        .rev()
        .collect();
    for (_, p) in &extra {
        if !is_terminating(p) {
            pods_api.delete(name(p), &DeleteParams::default()).await?;
        }
        if !parallel {
            break;
        }
    }
    // Rolling update: replace the highest outdated pod once all are ready.
    let all_ready = by_ord.len() as i64 == replicas
        && by_ord.values().all(|p| is_ready(p) && !is_terminating(p));
    if all_ready
        && !blocked
        && extra.is_empty()
        && let Some((_, p)) = by_ord.iter().rev().find(|(_, p)| {
            p["metadata"]["labels"]["controller-revision-hash"].as_str() != Some(hash.as_str())
        })
    {
        pods_api.delete(name(p), &DeleteParams::default()).await?;
    }
    let live: Vec<&&Value> = by_ord.values().filter(|p| !is_terminating(p)).collect();
    let ready = live.iter().filter(|p| is_ready(p)).count();
    let updated = live
        .iter()
        .filter(|p| {
            p["metadata"]["labels"]["controller-revision-hash"].as_str() == Some(hash.as_str())
        })
        .count();
    let status = json!({"status": {
        "observedGeneration": sts["metadata"]["generation"],
        "replicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "currentReplicas": updated,
        "updatedReplicas": updated,
        "currentRevision": format!("{sname}-{hash}"),
        "updateRevision": format!("{sname}-{hash}"),
        "collisionCount": 0,
    }});
    if !status_matches(&sts["status"], &status["status"]) {
        Api::<StatefulSet>::namespaced(client.clone(), ns)
            .patch_status(sname, &PatchParams::default(), &Patch::Merge(status))
            .await?;
    }
    Ok(())
}

/// Skips no-op status writes so idle controllers stay quiet.
pub fn status_matches(current: &Value, wanted: &Value) -> bool {
    wanted
        .as_object()
        .is_some_and(|w| w.iter().all(|(k, v)| current.get(k) == Some(v)))
}
