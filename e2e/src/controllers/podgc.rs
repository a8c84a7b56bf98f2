//! What kube-controller-manager's `podgc` controller does for pods no kubelet will finish:
//! pods bound to a Node that no longer exists (after a quarantine, since a Node may be
//! re-registering) and pods being deleted that were never scheduled are force-deleted (grace
//! period 0). Without it a namespace whose node left (a test's kubelet-only node) stays
//! Terminating forever, as it would on a real cluster without this controller.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams};

use super::{Result, drive, is_terminating, name, to_values, trigger_on};

/// The real controller's quarantine before an orphan is deleted (it re-checks the Node).
const QUARANTINE: Duration = Duration::from_secs(40);
/// Its check period.
const PERIOD: Duration = Duration::from_secs(20);

pub async fn run(client: Client) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let _nodes = trigger_on(Api::<Node>::all(client.clone()), tx);
    // First seen missing, per node name.
    let missing: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    drive("podgc", rx, PERIOD, || {
        let client = client.clone();
        let missing = missing.clone();
        async move { pass(&client, &missing).await }
    })
    .await;
}

async fn pass(client: &Client, missing: &Mutex<HashMap<String, Instant>>) -> Result<()> {
    let nodes: HashSet<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let pods = to_values(
        Api::<Pod>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items,
    )?;
    let now = Instant::now();
    let doomed: Vec<&serde_json::Value> = {
        let mut missing = missing.lock().unwrap_or_else(|p| p.into_inner());
        missing.retain(|n, _| !nodes.contains(n));
        pods.iter()
            .filter(|pod| {
                let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
                if node.is_empty() {
                    is_terminating(pod)
                } else if nodes.contains(node) {
                    false
                } else {
                    let since = *missing.entry(node.to_string()).or_insert(now);
                    now.duration_since(since) >= QUARANTINE
                }
            })
            .collect()
    };
    for pod in doomed {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        tracing::info!(
            namespace = ns,
            pod = name(pod),
            node,
            "podgc: force-deleting a pod no kubelet will finish"
        );
        match api
            .delete(name(pod), &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
