//! What `quiver-local up` installs into a fresh cluster: the `VectorIndex` CRD and the operator
//! from `operator/deploy/operator.yaml` (its Namespace, ServiceAccount, ClusterRole, binding and
//! Deployment: the same manifests a real cluster gets). The kubelet runs the operator's pod
//! from the binary its image table maps `quiver-operator` to.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::Scope;

use crate::local::LocalError;

/// The operator's in-cluster manifests, as shipped.
pub const OPERATOR_MANIFEST: &str = include_str!("../../operator/deploy/operator.yaml");
/// Where those manifests put the operator.
pub const OPERATOR_NAMESPACE: &str = "quiver-system";
pub const OPERATOR_DEPLOYMENT: &str = "quiver-operator";
/// The field manager of what quiver-local applies.
const MANAGER: &str = "quiver-local";

/// Installs the `VectorIndex` CRD (one that exists is left in place: on a real cluster it is
/// cluster-wide and may be shared) and waits until the API serves it.
pub async fn install_crd(client: &Client) -> Result<(), LocalError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds
        .create(&PostParams::default(), &quiver_api::crd())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => {
            return Err(LocalError::Client(format!(
                "creating the VectorIndex CRD: {e}"
            )));
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let served: Api<quiver_api::VectorIndex> = Api::all(client.clone());
    loop {
        let established = crd_established(client, "vectorindexes.quiver.dev").await;
        // Discovery may lag Established by a moment on a real server.
        if established && served.list(&ListParams::default().limit(1)).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(LocalError::Client(
                "the VectorIndex CRD is not served after 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the CRD `name` exists and is Established (false on any error).
pub async fn crd_established(client: &Client, name: &str) -> bool {
    Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.status?.conditions)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// The objects of a multi-document YAML manifest, in order (empty documents skipped).
pub fn parse_manifest(yaml: &str) -> Result<Vec<DynamicObject>, LocalError> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml)
        .map_err(|e| LocalError::Client(format!("manifest: {e}")))?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|d| {
            serde_json::from_value(d)
                .map_err(|e| LocalError::Client(format!("manifest object: {e}")))
        })
        .collect()
}

/// Server-side applies each object (kinds resolved by discovery; namespaced objects without a
/// namespace go to `default`) and returns `kind/name` of each.
pub async fn apply_objects(
    client: &Client,
    objects: &[DynamicObject],
) -> Result<Vec<String>, LocalError> {
    let mut applied = Vec::new();
    for obj in objects {
        let types = obj
            .types
            .as_ref()
            .ok_or_else(|| LocalError::Client("a manifest object has no apiVersion/kind".into()))?;
        let (group, version) = types
            .api_version
            .split_once('/')
            .unwrap_or(("", &types.api_version));
        let gvk = GroupVersionKind::gvk(group, version, &types.kind);
        let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .map_err(|e| LocalError::Client(format!("{}: {e}", types.kind)))?;
        let name = obj
            .metadata
            .name
            .clone()
            .ok_or_else(|| LocalError::Client(format!("a {} has no name", types.kind)))?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &ar),
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.metadata.namespace.as_deref().unwrap_or("default"),
                &ar,
            ),
        };
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(|e| LocalError::Client(format!("applying {} {name}: {e}", types.kind)))?;
        applied.push(format!("{}/{name}", types.kind));
    }
    Ok(applied)
}

/// The CRD, then the operator's manifests; returns what was applied.
pub async fn install_operator(client: &Client) -> Result<Vec<String>, LocalError> {
    install_crd(client).await?;
    apply_objects(client, &parse_manifest(OPERATOR_MANIFEST)?).await
}

/// Waits until the operator's Deployment has an available replica.
pub async fn wait_operator_available(client: &Client, secs: u64) -> Result<(), LocalError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let available = api
            .get_opt(OPERATOR_DEPLOYMENT)
            .await
            .ok()
            .flatten()
            .and_then(|d| d.status?.available_replicas)
            .unwrap_or(0);
        if available > 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(LocalError::Client(format!(
                "the operator Deployment {OPERATOR_NAMESPACE}/{OPERATOR_DEPLOYMENT} has no \
                 available pod after {secs} s (see `quiver-local logs <pod> -n {OPERATOR_NAMESPACE}`)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_manifest_parses_and_its_images_carry_this_version() {
        let objs = parse_manifest(OPERATOR_MANIFEST).expect("parses");
        let kinds: Vec<&str> = objs
            .iter()
            .filter_map(|o| o.types.as_ref().map(|t| t.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Deployment"
            ]
        );
        let deploy = objs.last().expect("a Deployment");
        let c = &deploy.data["spec"]["template"]["spec"]["containers"][0];
        let tag = format!(":{}", env!("CARGO_PKG_VERSION"));
        let image = c["image"].as_str().unwrap_or_default();
        assert!(image.ends_with(&tag), "{image}");
        assert!(image.contains("quiver-operator"), "{image}");
        let node = c["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == "QUIVER_NODE_IMAGE"))
            .and_then(|v| v["value"].as_str())
            .unwrap_or_default();
        assert!(
            node.ends_with(&tag) && node.contains("index-node"),
            "{node}"
        );
        assert_eq!(
            deploy.metadata.namespace.as_deref(),
            Some(OPERATOR_NAMESPACE)
        );
    }
}
