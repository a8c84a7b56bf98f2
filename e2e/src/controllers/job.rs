//! Job: completions and parallelism, Indexed mode (completion index annotation, label and
//! JOB_COMPLETION_INDEX via the downward API), backoffLimit, Complete/Failed conditions.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    Result, controller_uid, drive, is_ready, is_terminating, name, now, owner_ref, phase,
    to_values, trigger_on, uid,
};

const INDEX: &str = "batch.kubernetes.io/job-completion-index";

pub async fn run(client: Client) {
    let (tx, rx) = mpsc::channel(1);
    let _w1 = trigger_on(Api::<Job>::all(client.clone()), tx.clone());
    let _w2 = trigger_on(Api::<Pod>::all(client.clone()), tx);
    drive("job", rx, Duration::from_secs(30), || pass(client.clone())).await;
}

async fn pass(client: Client) -> Result<()> {
    let jobs = to_values(
        Api::<Job>::all(client.clone())
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
    for job in jobs.iter().filter(|j| !is_terminating(j)) {
        let owned: Vec<&Value> = pods
            .iter()
            .filter(|p| controller_uid(p) == Some(uid(job)))
            .collect();
        if let Err(e) = reconcile(&client, job, &owned).await {
            tracing::debug!(job = name(job), error = %e, "reconcile failed");
        }
    }
    Ok(())
}

fn finished(job: &Value) -> bool {
    job["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
    })
}

fn pod_index(p: &Value) -> Option<i64> {
    p["metadata"]["annotations"][INDEX]
        .as_str()
        .and_then(|s| s.parse().ok())
}

/// "0-2,4" as Job status prints completed indexes.
fn format_indexes(set: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if end > start {
            format!("{start}-{end}")
        } else {
            start.to_string()
        });
    }
    out.join(",")
}

fn parse_indexes(s: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

fn build_pod(job: &Value, index: Option<i64>) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": job["spec"]["template"]["metadata"].clone(), "spec": job["spec"]["template"]["spec"].clone()});
    if !pod["metadata"].is_object() {
        pod["metadata"] = json!({});
    }
    if let Some(m) = pod["metadata"].as_object_mut() {
        m.remove("name");
    }
    let jname = name(job);
    // The labels a real cluster puts on every Job pod (the API server defaults them into the
    // Job's template and selector); clients find a Job's pods by them.
    let uid = job["metadata"]["uid"].clone();
    for (k, v) in [
        ("job-name", json!(jname)),
        ("batch.kubernetes.io/job-name", json!(jname)),
        ("controller-uid", uid.clone()),
        ("batch.kubernetes.io/controller-uid", uid),
    ] {
        pod["metadata"]["labels"][k] = v;
    }
    pod["metadata"]["ownerReferences"] = json!([owner_ref(job, "batch/v1", "Job")]);
    match index {
        Some(i) => {
            pod["metadata"]["generateName"] = json!(format!("{jname}-{i}-"));
            pod["metadata"]["annotations"][INDEX] = json!(i.to_string());
            pod["metadata"]["labels"][INDEX] = json!(i.to_string());
            pod["spec"]["hostname"] = json!(format!("{jname}-{i}"));
            let env = json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": format!("metadata.annotations['{INDEX}']")}}});
            for c in pod["spec"]["containers"]
                .as_array_mut()
                .map(Vec::as_mut_slice)
                .unwrap_or_default()
            {
                let list = &mut c["env"];
                if !list.is_array() {
                    *list = json!([]);
                }
                if let Some(a) = list.as_array_mut() {
                    a.push(env.clone());
                }
            }
        }
        None => pod["metadata"]["generateName"] = json!(format!("{jname}-")),
    }
    pod
}

async fn reconcile(client: &Client, job: &Value, owned: &[&Value]) -> Result<()> {
    let ns = job["metadata"]["namespace"].as_str().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let spec = &job["spec"];
    let indexed = spec["completionMode"].as_str() == Some("Indexed");
    let completions = spec["completions"].as_i64();
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1);
    let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
    let suspended = spec["suspend"].as_bool() == Some(true);

    let active: Vec<&Value> = owned
        .iter()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed") && !is_terminating(p))
        .copied()
        .collect();
    let succeeded_pods: Vec<&Value> = owned
        .iter()
        .filter(|p| phase(p) == "Succeeded")
        .copied()
        .collect();
    let restarts: i64 = owned
        .iter()
        .flat_map(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum();
    // Counts never go down: pods may be deleted after they were counted.
    let failed = (owned.iter().filter(|p| phase(p) == "Failed").count() as i64 + restarts)
        .max(job["status"]["failed"].as_i64().unwrap_or(0));
    let mut done_indexes = parse_indexes(
        job["status"]["completedIndexes"]
            .as_str()
            .unwrap_or_default(),
    );
    done_indexes.extend(succeeded_pods.iter().filter_map(|p| pod_index(p)));
    let succeeded = if indexed {
        done_indexes.len() as i64
    } else {
        (succeeded_pods.len() as i64).max(job["status"]["succeeded"].as_i64().unwrap_or(0))
    };

    let mut status = json!({
        "active": active.len(),
        "ready": active.iter().filter(|p| is_ready(p)).count(),
        "succeeded": succeeded,
        "failed": failed,
    });
    if indexed {
        status["completedIndexes"] = json!(format_indexes(&done_indexes));
    }
    status["startTime"] = if job["status"]["startTime"].is_null() {
        json!(now())
    } else {
        job["status"]["startTime"].clone()
    };

    if finished(job) {
        return Ok(());
    }
    let complete = match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    let mut conditions: Option<Value> = None;
    if failed > backoff_limit {
        for p in &active {
            pods.delete(name(p), &DeleteParams::default()).await?;
        }
        status["active"] = json!(0);
        conditions = Some(json!([
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastProbeTime": now(), "lastTransitionTime": now()},
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastProbeTime": now(), "lastTransitionTime": now()},
        ]));
    } else if complete {
        status["completionTime"] = json!(now());
        conditions = Some(json!([
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now(), "lastTransitionTime": now()},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now(), "lastTransitionTime": now()},
        ]));
    } else if !suspended {
        let slots = parallelism - active.len() as i64;
        if indexed {
            let total = completions.unwrap_or(parallelism);
            let running: BTreeSet<i64> = active.iter().filter_map(|p| pod_index(p)).collect();
            let todo: Vec<i64> = (0..total)
                .filter(|i| !done_indexes.contains(i) && !running.contains(i))
                .take(slots.max(0) as usize)
                .collect();
            for i in todo {
                pods.create(
                    &PostParams::default(),
                    &serde_json::from_value(build_pod(job, Some(i)))?,
                )
                .await?;
            }
        } else {
            let remaining =
                completions.map_or(slots, |c| (c - succeeded - active.len() as i64).min(slots));
            for _ in 0..remaining.max(0) {
                pods.create(
                    &PostParams::default(),
                    &serde_json::from_value(build_pod(job, None))?,
                )
                .await?;
            }
        }
    }
    if let Some(c) = conditions {
        status["conditions"] = c;
    }
    if !super::statefulset::status_matches(&job["status"], &status) {
        jobs.patch_status(
            name(job),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn completed_indexes_round_trip() {
        let set = super::parse_indexes("0-2,4,6-7");
        assert_eq!(
            set.iter().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 4, 6, 7]
        );
        assert_eq!(super::format_indexes(&set), "0-2,4,6-7");
    }
}
