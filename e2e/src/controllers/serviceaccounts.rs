//! What kube-controller-manager's `serviceaccount` and `root-ca-cert-publisher` controllers
//! do: every active namespace gets the ServiceAccount `default` and the ConfigMap
//! `kube-root-ca.crt` (the cluster CA, which pods mount as `ca.crt`).

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent};
use serde_json::json;
use tokio::sync::mpsc;

use super::{Result, drive, is_terminating, name, to_values, trigger_on, trigger_on_filtered};

fn event_name<K: kube::Resource>(e: &WatchEvent<K>) -> Option<&str> {
    match e {
        WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
            o.meta().name.as_deref()
        }
        _ => None,
    }
}

pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The annotation the real publisher sets on the ConfigMap.
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

pub async fn run(client: Client, ca_pem: String) {
    let (tx, rx) = mpsc::channel(1);
    let _ns = trigger_on(Api::<Namespace>::all(client.clone()), tx.clone());
    // Only the objects this controller keeps wake it (not every ConfigMap write).
    let _sa = trigger_on_filtered(
        Api::<ServiceAccount>::all(client.clone()),
        tx.clone(),
        |e| event_name(e) == Some("default"),
    );
    let _cm = trigger_on_filtered(Api::<ConfigMap>::all(client.clone()), tx, |e| {
        event_name(e) == Some(ROOT_CA_CONFIGMAP)
    });
    drive("serviceaccounts", rx, Duration::from_secs(30), || {
        pass(&client, &ca_pem)
    })
    .await;
}

async fn pass(client: &Client, ca_pem: &str) -> Result<()> {
    let namespaces = to_values(
        Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items,
    )?;
    for ns in namespaces.iter().filter(|n| !is_terminating(n)) {
        let ns = name(ns);
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        if sas.get_opt("default").await?.is_none() {
            let sa: ServiceAccount =
                serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
            match sas.create(&PostParams::default(), &sa).await {
                // Lost a race with a namespace being deleted or another writer: next pass.
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let current = cms.get_opt(ROOT_CA_CONFIGMAP).await?;
        let up_to_date = current.as_ref().is_some_and(|cm| {
            cm.data
                .as_ref()
                .and_then(|d| d.get("ca.crt"))
                .is_some_and(|c| c == ca_pem)
        });
        if !up_to_date {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROOT_CA_CONFIGMAP, "annotations": {"kubernetes.io/description": DESCRIPTION}},
                "data": {"ca.crt": ca_pem}});
            let pp = PatchParams::apply("kube-controller-manager").force();
            match cms.patch(ROOT_CA_CONFIGMAP, &pp, &Patch::Apply(cm)).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
