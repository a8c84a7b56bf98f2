//! Deployment → ReplicaSet → Pods. The Deployment controller keeps one ReplicaSet per
//! template (named and labelled with pod-template-hash) and rolls from old to new within
//! maxSurge/maxUnavailable; the ReplicaSet controller keeps the pod count.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::statefulset::status_matches;
use super::{
    Result, controller_uid, drive, int_or_percent, is_ready, is_terminal, is_terminating, name,
    now, owner_ref, template_hash, to_values, trigger_on, uid,
};

const HASH: &str = "pod-template-hash";

pub async fn run(client: Client) {
    let (tx, rx) = mpsc::channel(1);
    let _w1 = trigger_on(Api::<Deployment>::all(client.clone()), tx.clone());
    let _w2 = trigger_on(Api::<ReplicaSet>::all(client.clone()), tx);
    drive("deployment", rx, Duration::from_secs(30), || {
        pass(client.clone())
    })
    .await;
}

pub async fn run_replicasets(client: Client) {
    let (tx, rx) = mpsc::channel(1);
    let _w1 = trigger_on(Api::<ReplicaSet>::all(client.clone()), tx.clone());
    let _w2 = trigger_on(Api::<Pod>::all(client.clone()), tx);
    drive("replicaset", rx, Duration::from_secs(30), || {
        rs_pass(client.clone())
    })
    .await;
}

fn ns_of(v: &Value) -> &str {
    v["metadata"]["namespace"].as_str().unwrap_or_default()
}

async fn pass(client: Client) -> Result<()> {
    let deps = to_values(
        Api::<Deployment>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items,
    )?;
    let sets = to_values(
        Api::<ReplicaSet>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items,
    )?;
    for d in deps.iter().filter(|d| !is_terminating(d)) {
        let owned: Vec<&Value> = sets
            .iter()
            .filter(|r| controller_uid(r) == Some(uid(d)))
            .collect();
        if let Err(e) = reconcile(&client, d, &owned).await {
            tracing::debug!(deployment = name(d), error = %e, "reconcile failed");
        }
    }
    Ok(())
}

fn replicas(v: &Value) -> i64 {
    v["spec"]["replicas"].as_i64().unwrap_or(1)
}

fn st(v: &Value, k: &str) -> i64 {
    v["status"][k].as_i64().unwrap_or(0)
}

async fn reconcile(client: &Client, d: &Value, owned: &[&Value]) -> Result<()> {
    let ns = ns_of(d);
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let want = replicas(d);
    let mut template = d["spec"]["template"].clone();
    let hash = template_hash(&template);
    let new_rs = owned
        .iter()
        .find(|r| r["metadata"]["labels"][HASH].as_str() == Some(hash.as_str()))
        .copied();
    let olds: Vec<&Value> = owned
        .iter()
        .filter(|r| r["metadata"]["labels"][HASH].as_str() != Some(hash.as_str()))
        .copied()
        .collect();
    let old_total: i64 = olds.iter().map(|r| replicas(r)).sum();
    let surge = int_or_percent(
        &d["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        want,
        true,
        1,
    );
    let unavailable = int_or_percent(
        &d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        want,
        false,
        0,
    );
    let recreate = d["spec"]["strategy"]["type"].as_str() == Some("Recreate");
    let (surge, unavailable) = if surge == 0 && unavailable == 0 {
        (1, 0)
    } else {
        (surge, unavailable)
    };

    let new_rs = match new_rs {
        Some(r) => r.clone(),
        None => {
            let labels = &mut template["metadata"]["labels"];
            if !labels.is_object() {
                *labels = json!({});
            }
            labels[HASH] = json!(hash);
            let mut selector = d["spec"]["selector"].clone();
            selector["matchLabels"][HASH] = json!(hash);
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": format!("{}-{hash}", name(d)), "labels": template["metadata"]["labels"].clone(),
                             "ownerReferences": [owner_ref(d, "apps/v1", "Deployment")],
                             "annotations": {"deployment.kubernetes.io/desired-replicas": want.to_string()}},
                "spec": {"replicas": 0, "selector": selector, "template": template, "minReadySeconds": d["spec"]["minReadySeconds"].clone()},
            });
            let created = api
                .create(&PostParams::default(), &serde_json::from_value(rs)?)
                .await?;
            serde_json::to_value(created)?
        }
    };
    let new_ready = st(&new_rs, "readyReplicas");
    let old_ready: i64 = olds.iter().map(|r| st(r, "readyReplicas")).sum();
    // Scale the new ReplicaSet up within the surge budget.
    let new_target = if recreate {
        if olds.iter().all(|r| st(r, "replicas") == 0) {
            want
        } else {
            0
        }
    } else {
        want.min((want + surge - old_total).max(replicas(&new_rs)))
    };
    if replicas(&new_rs) != new_target {
        scale(&api, name(&new_rs), new_target).await?;
    }
    // Scale old ReplicaSets down while keeping want - maxUnavailable ready pods.
    let mut budget = if recreate {
        old_total
    } else {
        (new_ready + old_ready - (want - unavailable)).max(0)
    };
    if !recreate {
        // Old pods that are not ready hold up nothing; they can go at once.
        budget += olds
            .iter()
            .map(|r| (replicas(r) - st(r, "readyReplicas")).max(0))
            .sum::<i64>();
    }
    for r in &olds {
        if budget <= 0 {
            break;
        }
        let cur = replicas(r);
        let cut = cur.min(budget);
        if cut > 0 {
            scale(&api, name(r), cur - cut).await?;
            budget -= cut;
        }
    }
    let total: i64 = owned
        .iter()
        .map(|r| st(r, "replicas"))
        .sum::<i64>()
        .max(st(&new_rs, "replicas"));
    let ready: i64 = owned
        .iter()
        .map(|r| st(r, "readyReplicas"))
        .sum::<i64>()
        .max(new_ready);
    let updated = st(&new_rs, "replicas");
    let available_ok = ready >= want - unavailable;
    let mut conditions = vec![
        json!({"type": "Available", "status": if available_ok { "True" } else { "False" },
        "reason": if available_ok { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
        "lastUpdateTime": now(), "lastTransitionTime": now()}),
    ];
    let complete = updated == want && total == want && ready == want;
    conditions.push(json!({"type": "Progressing", "status": "True",
        "reason": if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
        "lastUpdateTime": now(), "lastTransitionTime": now()}));
    let counts = json!({
        "observedGeneration": d["metadata"]["generation"],
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": (want - ready).max(0),
    });
    let cond_types = |v: &Value| -> Vec<(String, String, String)> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            c["type"].as_str().unwrap_or_default().to_string(),
                            c["status"].as_str().unwrap_or_default().to_string(),
                            c["reason"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let conditions = Value::Array(conditions);
    if !status_matches(&d["status"], &counts)
        || cond_types(&d["status"]["conditions"]) != cond_types(&conditions)
    {
        let mut s = counts;
        s["conditions"] = conditions;
        Api::<Deployment>::namespaced(client.clone(), ns)
            .patch_status(
                name(d),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": s})),
            )
            .await?;
    }
    Ok(())
}

async fn scale(api: &Api<ReplicaSet>, rs: &str, n: i64) -> Result<()> {
    api.patch(
        rs,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": n}})),
    )
    .await?;
    Ok(())
}

async fn rs_pass(client: Client) -> Result<()> {
    let sets = to_values(
        Api::<ReplicaSet>::all(client.clone())
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
    for rs in sets.iter().filter(|r| !is_terminating(r)) {
        let owned: Vec<&Value> = pods
            .iter()
            .filter(|p| controller_uid(p) == Some(uid(rs)))
            .collect();
        if let Err(e) = rs_reconcile(&client, rs, &owned).await {
            tracing::debug!(replicaset = name(rs), error = %e, "reconcile failed");
        }
    }
    Ok(())
}

async fn rs_reconcile(client: &Client, rs: &Value, owned: &[&Value]) -> Result<()> {
    let ns = ns_of(rs);
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let want = replicas(rs);
    for p in owned
        .iter()
        .filter(|p| is_terminal(p) && !is_terminating(p))
    {
        api.delete(name(p), &DeleteParams::default()).await?;
    }
    let mut live: Vec<&Value> = owned
        .iter()
        .filter(|p| !is_terminating(p) && !is_terminal(p))
        .copied()
        .collect();
    let have = live.len() as i64;
    if have < want {
        for _ in have..want {
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": rs["spec"]["template"]["metadata"].clone(), "spec": rs["spec"]["template"]["spec"].clone()});
            if !pod["metadata"].is_object() {
                pod["metadata"] = json!({});
            }
            pod["metadata"]["generateName"] = json!(format!("{}-", name(rs)));
            if let Some(m) = pod["metadata"].as_object_mut() {
                m.remove("name");
            }
            pod["metadata"]["ownerReferences"] = json!([owner_ref(rs, "apps/v1", "ReplicaSet")]);
            api.create(&PostParams::default(), &serde_json::from_value(pod)?)
                .await?;
        }
    } else if have > want {
        // Remove not-ready pods first, then the newest.
        live.sort_by_key(|p| {
            (
                is_ready(p),
                std::cmp::Reverse(
                    p["metadata"]["creationTimestamp"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ),
            )
        });
        for p in live.iter().take((have - want) as usize) {
            api.delete(name(p), &DeleteParams::default()).await?;
        }
    }
    let live: Vec<&Value> = owned
        .iter()
        .filter(|p| !is_terminating(p) && !is_terminal(p))
        .copied()
        .collect();
    let ready = live.iter().filter(|p| is_ready(p)).count();
    let status = json!({"observedGeneration": rs["metadata"]["generation"], "replicas": live.len(), "readyReplicas": ready, "availableReplicas": ready, "fullyLabeledReplicas": live.len()});
    if !status_matches(&rs["status"], &status) {
        Api::<ReplicaSet>::namespaced(client.clone(), ns)
            .patch_status(
                name(rs),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
    }
    Ok(())
}
