//! EndpointSlice controller: for every Service with a selector, EndpointSlices
//! (`discovery.k8s.io/v1`) listing the pods that match it, as the real
//! `endpointslice-controller.k8s.io` writes them: one endpoint per pod with an IP (terminal
//! pods left out), conditions ready/serving/terminating, `targetRef` and `nodeName`, ports
//! resolved from the Service's `targetPort` (a name against the pod's container ports).
//! Pods whose ports resolve differently go into different slices; pods on a Node that does
//! not exist are left out (unless `publishNotReadyAddresses`). Services without a
//! selector are left alone: their slices belong to the user.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::{
    AbortOnDrop, Result, drive, is_ready, is_terminal, is_terminating, name, owner_ref,
    selector_matches, to_values, trigger_on,
};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";

pub async fn run(client: Client) {
    let (tx, rx) = mpsc::channel(1);
    let _watches = [
        AbortOnDrop(trigger_on(Api::<Service>::all(client.clone()), tx.clone())),
        AbortOnDrop(trigger_on(Api::<Pod>::all(client.clone()), tx.clone())),
        AbortOnDrop(trigger_on(
            Api::<EndpointSlice>::all(client.clone()),
            tx.clone(),
        )),
        AbortOnDrop(trigger_on(Api::<Node>::all(client.clone()), tx)),
    ];
    drive("endpointslice", rx, Duration::from_secs(30), || {
        pass(client.clone())
    })
    .await;
}

fn ns_of(v: &Value) -> &str {
    v["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// The Service's selector when it has a non-empty one.
fn selector(svc: &Value) -> Option<Value> {
    svc["spec"]["selector"]
        .as_object()
        .filter(|m| !m.is_empty())
        .map(|m| json!({"matchLabels": m}))
}

async fn pass(client: Client) -> Result<()> {
    let list = ListParams::default();
    let services = to_values(Api::<Service>::all(client.clone()).list(&list).await?.items)?;
    let pods = to_values(Api::<Pod>::all(client.clone()).list(&list).await?.items)?;
    let nodes: std::collections::HashSet<String> = Api::<Node>::all(client.clone())
        .list(&list)
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let slices = to_values(
        Api::<EndpointSlice>::all(client.clone())
            .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={CONTROLLER_NAME}")))
            .await?
            .items,
    )?;
    for svc in services.iter().filter(|s| !is_terminating(s)) {
        let Some(sel) = selector(svc) else { continue };
        let ns = ns_of(svc);
        // As the real controller: a pod on a Node that does not exist is left out, unless the
        // Service publishes not-ready addresses.
        let publish = svc["spec"]["publishNotReadyAddresses"].as_bool() == Some(true);
        let matching: Vec<&Value> = pods
            .iter()
            .filter(|p| ns_of(p) == ns && selector_matches(&sel, &p["metadata"]["labels"]))
            .filter(|p| {
                publish
                    || p["spec"]["nodeName"]
                        .as_str()
                        .is_some_and(|n| nodes.contains(n))
            })
            .collect();
        let existing: Vec<&Value> = slices
            .iter()
            .filter(|s| {
                ns_of(s) == ns
                    && s["metadata"]["labels"][SERVICE_NAME_LABEL] == svc["metadata"]["name"]
            })
            .collect();
        if let Err(e) = reconcile(&client, svc, &matching, &existing).await {
            tracing::debug!(namespace = ns, service = name(svc), error = %e, "endpointslice reconcile failed");
        }
    }
    Ok(())
}

/// One slice's worth: its ports (Null for a Service with no endpoints) and endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceContent {
    pub ports: Value,
    pub endpoints: Vec<Value>,
}

/// The container port a Service port's `targetPort` names on `pod` (a number as is, a name
/// looked up among the containers' ports with the same protocol), as the real controller.
pub fn resolve_port(svc_port: &Value, pod: &Value) -> Option<i64> {
    let protocol = svc_port["protocol"].as_str().unwrap_or("TCP");
    match &svc_port["targetPort"] {
        Value::Number(n) => n.as_i64().filter(|p| *p > 0),
        Value::String(port_name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().map(Vec::as_slice).unwrap_or_default())
            .find(|p| {
                p["name"].as_str() == Some(port_name.as_str())
                    && p["protocol"].as_str().unwrap_or("TCP") == protocol
            })
            .and_then(|p| p["containerPort"].as_i64()),
        _ => svc_port["port"].as_i64(),
    }
}

/// The endpoint for a pod, with the conditions the real controller computes.
pub fn endpoint(pod: &Value, publish_not_ready: bool) -> Value {
    let serving = is_ready(pod);
    let terminating = is_terminating(pod);
    let ready = publish_not_ready || (serving && !terminating);
    let mut ep = json!({
        "addresses": [pod["status"]["podIP"]],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        "targetRef": {"kind": "Pod", "namespace": pod["metadata"]["namespace"], "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
    });
    if let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        ep["nodeName"] = json!(node);
    }
    ep
}

/// The slices a Service should have for `pods` (those matching its selector): endpoints
/// grouped by resolved ports, each group sorted by pod name; one empty slice when none.
pub fn desired(svc: &Value, pods: &[&Value]) -> Vec<SliceContent> {
    let publish = svc["spec"]["publishNotReadyAddresses"].as_bool() == Some(true);
    let svc_ports = svc["spec"]["ports"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut groups: BTreeMap<String, SliceContent> = BTreeMap::new();
    let mut pods: Vec<&&Value> = pods
        .iter()
        .filter(|p| {
            !is_terminal(p)
                && p["status"]["podIP"]
                    .as_str()
                    .is_some_and(|ip| !ip.is_empty())
        })
        .collect();
    pods.sort_by_key(|p| name(p).to_string());
    for pod in pods {
        let ports: Vec<Value> = svc_ports
            .iter()
            .filter_map(|sp| {
                let port = resolve_port(sp, pod)?;
                let mut p = json!({
                    "name": sp["name"].as_str().unwrap_or_default(),
                    "port": port,
                    "protocol": sp["protocol"].as_str().unwrap_or("TCP"),
                });
                if let Some(ap) = sp["appProtocol"].as_str() {
                    p["appProtocol"] = json!(ap);
                }
                Some(p)
            })
            .collect();
        let ports = Value::Array(ports);
        groups
            .entry(ports.to_string())
            .or_insert_with(|| SliceContent {
                ports,
                endpoints: Vec::new(),
            })
            .endpoints
            .push(endpoint(pod, publish));
    }
    if groups.is_empty() {
        return vec![SliceContent {
            ports: Value::Null,
            endpoints: Vec::new(),
        }];
    }
    groups.into_values().collect()
}

fn labels(svc: &Value) -> Value {
    let mut l: Map<String, Value> = svc["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    l.insert(SERVICE_NAME_LABEL.into(), svc["metadata"]["name"].clone());
    l.insert(MANAGED_BY_LABEL.into(), json!(CONTROLLER_NAME));
    if svc["spec"]["clusterIP"] == "None" {
        l.insert("service.kubernetes.io/headless".into(), json!(""));
    }
    Value::Object(l)
}

fn content_of(slice: &Value) -> SliceContent {
    SliceContent {
        ports: slice["ports"].clone(),
        endpoints: slice["endpoints"].as_array().cloned().unwrap_or_default(),
    }
}

fn with_content(mut slice: Value, c: &SliceContent, labels: &Value) -> Value {
    slice["endpoints"] = Value::Array(c.endpoints.clone());
    match &c.ports {
        Value::Null => {
            if let Some(m) = slice.as_object_mut() {
                m.remove("ports");
            }
        }
        p => slice["ports"] = p.clone(),
    }
    slice["metadata"]["labels"] = labels.clone();
    slice
}

async fn reconcile(
    client: &Client,
    svc: &Value,
    pods: &[&Value],
    existing: &[&Value],
) -> Result<()> {
    let ns = ns_of(svc);
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let labels = labels(svc);
    let mut unused: Vec<&Value> = existing.to_vec();
    for want in desired(svc, pods) {
        let pos = unused
            .iter()
            .position(|s| s["ports"] == want.ports)
            .or(if unused.is_empty() { None } else { Some(0) });
        match pos {
            Some(i) => {
                let have = unused.remove(i);
                if content_of(have) == want && have["metadata"]["labels"] == labels {
                    continue;
                }
                let new = with_content(have.clone(), &want, &labels);
                let obj: EndpointSlice = serde_json::from_value(new)?;
                api.replace(name(have), &PostParams::default(), &obj)
                    .await?;
                tracing::debug!(
                    namespace = ns,
                    service = name(svc),
                    slice = name(have),
                    "endpointslice updated"
                );
            }
            None => {
                let new = with_content(
                    json!({
                        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"generateName": format!("{}-", name(svc)), "namespace": ns,
                                     "ownerReferences": [owner_ref(svc, "v1", "Service")]},
                        "addressType": "IPv4",
                    }),
                    &want,
                    &labels,
                );
                let obj: EndpointSlice = serde_json::from_value(new)?;
                api.create(&PostParams::default(), &obj).await?;
                tracing::debug!(namespace = ns, service = name(svc), "endpointslice created");
            }
        }
    }
    for extra in unused {
        api.delete(name(extra), &DeleteParams::default()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: Option<&str>, ready: bool) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        })
    }

    fn svc(ports: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid"},
               "spec": {"selector": {"app": "web"}, "clusterIP": "127.96.0.9", "ports": ports}})
    }

    #[test]
    fn ports_resolve_by_name_or_number() {
        let p = pod("a", Some("127.0.1.1"), true);
        assert_eq!(
            resolve_port(
                &json!({"port": 80, "targetPort": "http", "protocol": "TCP"}),
                &p
            ),
            Some(8080)
        );
        assert_eq!(
            resolve_port(&json!({"port": 80, "targetPort": 9000}), &p),
            Some(9000)
        );
        assert_eq!(
            resolve_port(&json!({"port": 80, "targetPort": "nope"}), &p),
            None
        );
        assert_eq!(
            resolve_port(
                &json!({"port": 80, "targetPort": "http", "protocol": "UDP"}),
                &p
            ),
            None
        );
        assert_eq!(resolve_port(&json!({"port": 80}), &p), Some(80));
    }

    #[test]
    fn endpoints_carry_conditions_and_refs() {
        let ready = endpoint(&pod("a", Some("127.0.1.1"), true), false);
        assert_eq!(ready["addresses"], json!(["127.0.1.1"]));
        assert_eq!(
            ready["conditions"],
            json!({"ready": true, "serving": true, "terminating": false})
        );
        assert_eq!(
            ready["targetRef"],
            json!({"kind": "Pod", "namespace": "ns", "name": "a", "uid": "uid-a"})
        );
        assert_eq!(ready["nodeName"], "node-a");
        let not_ready = endpoint(&pod("b", Some("127.0.1.2"), false), false);
        assert_eq!(
            not_ready["conditions"],
            json!({"ready": false, "serving": false, "terminating": false})
        );
        let mut going = pod("c", Some("127.0.1.3"), true);
        going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(
            endpoint(&going, false)["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
        assert_eq!(
            endpoint(&going, true)["conditions"]["ready"],
            true,
            "publishNotReadyAddresses"
        );
    }

    #[test]
    fn desired_slices_group_by_ports_and_skip_pods_without_ip() {
        let s = svc(json!([{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}]));
        let (a, b, none) = (
            pod("b", Some("127.0.1.2"), true),
            pod("a", Some("127.0.1.1"), false),
            pod("c", None, true),
        );
        let mut done = pod("d", Some("127.0.1.4"), true);
        done["status"]["phase"] = json!("Succeeded");
        let mut other = pod("e", Some("127.0.1.5"), true);
        other["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(9090);
        let slices = desired(&s, &[&a, &b, &none, &done, &other]);
        assert_eq!(slices.len(), 2, "{slices:?}");
        let first = slices
            .iter()
            .find(|c| c.ports[0]["port"] == 8080)
            .expect("8080 slice");
        assert_eq!(
            first.ports,
            json!([{"name": "web", "port": 8080, "protocol": "TCP"}])
        );
        let names: Vec<&Value> = first
            .endpoints
            .iter()
            .map(|e| &e["targetRef"]["name"])
            .collect();
        assert_eq!(names, [&json!("a"), &json!("b")], "sorted by pod name");
        let empty = desired(&s, &[]);
        assert_eq!(
            empty,
            vec![SliceContent {
                ports: Value::Null,
                endpoints: vec![]
            }]
        );
    }

    #[test]
    fn unchanged_content_compares_equal() {
        let s = svc(json!([{"name": "", "port": 80, "targetPort": 8080, "protocol": "TCP"}]));
        let a = pod("a", Some("127.0.1.1"), true);
        let want = desired(&s, &[&a]).remove(0);
        let stored = with_content(
            json!({"metadata": {"name": "web-x"}, "addressType": "IPv4"}),
            &want,
            &labels(&s),
        );
        assert_eq!(content_of(&stored), want);
        assert_eq!(
            stored["metadata"]["labels"][MANAGED_BY_LABEL],
            CONTROLLER_NAME
        );
        assert_eq!(stored["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
    }
}
