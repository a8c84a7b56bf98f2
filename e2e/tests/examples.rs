//! The manifests of `examples/`, applied to the local cluster as a GitOps tool applies them
//! (server-side apply, one field manager): the small ones go Ready under the real operator,
//! and applying them again afterwards changes nothing (the operator never writes the spec, the
//! schema supplies the defaults, so a GitOps tool sees no drift). The production and GitOps
//! index manifests, which need cloud storage, are applied with `dryRun=All`: the API server
//! runs its schema and CEL rules over them and stores nothing.
//!
//! Runs on the in-process stand-in, or against another cluster with QUIVER_E2E_KUBECONFIG.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use quiver_api::VectorIndex;
use quiver_api::v1alpha1::IndexPhase;
use serde_json::Value;

mod opsupport;
use opsupport::*;

const MANAGER: &str = "gitops-test";

fn example(path: &str) -> Vec<Value> {
    let full = format!("{}/../examples/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.into_iter().filter(Value::is_object).collect()
}

/// The example with its placeholder storage directory pointed at this test's.
fn localized(doc: &Value, storage: &str) -> Value {
    let text = doc
        .to_string()
        .replace("file:///var/lib/quiver/store", storage);
    serde_json::from_str(&text).unwrap()
}

fn apply_params(dry_run: bool) -> PatchParams {
    let mut pp = PatchParams::apply(MANAGER);
    pp.dry_run = dry_run;
    pp
}

async fn apply_index(api: &Api<VectorIndex>, doc: &Value, dry_run: bool) -> VectorIndex {
    let name = doc["metadata"]["name"].as_str().unwrap();
    api.patch(name, &apply_params(dry_run), &Patch::Apply(doc))
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"))
}

/// The spec fields `manager` owns, from the object's managedFields.
fn owned_spec(vi: &VectorIndex, manager: &str) -> Vec<String> {
    vi.managed_fields()
        .iter()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .filter_map(|m| m.fields_v1.as_ref())
        .flat_map(|f| {
            f.0.get("f:spec")
                .and_then(Value::as_object)
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_go_ready_and_applying_them_again_changes_nothing() {
    tokio::time::timeout(Duration::from_secs(420), async {
        let (env, op, storage, _) = start().await;
        let api: Api<VectorIndex> = env.api();
        let docs: Vec<Value> = ["flat.yaml", "sq8.yaml", "pq.yaml"]
            .iter()
            .map(|f| localized(&example(f)[0], &storage))
            .collect();
        for d in &docs {
            assert_eq!(d["kind"], "VectorIndex");
            apply_index(&api, d, false).await;
        }
        let mut applied = Vec::new();
        for d in &docs {
            let name = d["metadata"]["name"].as_str().unwrap();
            let vi = wait_for(&api, name, 300, "Ready", |vi| {
                phase(vi) == Some(IndexPhase::Ready)
            })
            .await;
            applied.push(vi);
        }
        for (d, before) in docs.iter().zip(&applied) {
            let name = before.name_any();
            // The operator wrote status and finalizers only: the spec is as applied, the
            // generation has not moved, and no other manager owns a spec field.
            let again = apply_index(&api, d, false).await;
            assert_eq!(again.spec, before.spec, "{name}: spec changed");
            assert_eq!(
                again.metadata.generation,
                Some(1),
                "{name}: the spec was written after apply"
            );
            for m in again.managed_fields() {
                let who = m.manager.clone().unwrap_or_default();
                if who != MANAGER {
                    assert!(
                        owned_spec(&again, &who).is_empty(),
                        "{name}: {who} owns spec fields"
                    );
                }
            }
            assert!(
                !owned_spec(&again, MANAGER).is_empty(),
                "{name}: apply owns no spec field"
            );
            // A dry run of the same manifest now is a no-op too.
            let dry = apply_index(&api, d, true).await;
            assert_eq!(dry.spec, again.spec);
            assert_eq!(dry.metadata.generation, again.metadata.generation);
        }
        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_quickstart_and_gitops_index_manifests_pass_the_api_servers_rules() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let (env, op, storage, _) = start().await;
        drop(op); // dry runs only: nothing for an operator to do
        let api: Api<VectorIndex> = env.api();
        let secrets: Api<Secret> = env.api();
        for file in [
            "production.yaml",
            "quickstart.yaml",
            "gitops/index/vectorindex.yaml",
        ] {
            let docs = example(file);
            assert!(
                docs.iter().any(|d| d["kind"] == "VectorIndex"),
                "{file}: no VectorIndex"
            );
            for d in docs {
                let d = localized(&d, &storage);
                let name = d["metadata"]["name"].as_str().unwrap().to_string();
                match d["kind"].as_str() {
                    Some("VectorIndex") => {
                        let vi = apply_index(&api, &d, true).await;
                        assert_eq!(
                            vi.spec.dimension,
                            d["spec"]["dimension"].as_u64().unwrap() as u32,
                            "{file}"
                        );
                        // Validated by the operator's own rules too.
                        vi.spec
                            .validate(&name)
                            .unwrap_or_else(|e| panic!("{file}: {e}"));
                        assert!(
                            api.get_opt(&name).await.unwrap().is_none(),
                            "{file}: a dry run stored {name}"
                        );
                    }
                    Some("Secret") => {
                        secrets
                            .patch(&name, &apply_params(true), &Patch::Apply(&d))
                            .await
                            .unwrap();
                    }
                    other => panic!("{file}: unexpected kind {other:?}"),
                }
            }
        }
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}

/// The Argo CD and Flux objects of `examples/gitops/`, applied (`dryRun=All`,
/// `fieldValidation=Strict`) as those tools' own CRDs define them. On the stand-in the CRDs
/// are `tests/fixtures/gitops-crds.yaml` (written for these tests from the projects' API
/// references: the fields the examples use, closed); on another cluster, the CRDs Argo CD and
/// Flux installed there, and a kind whose CRD is absent is skipped with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitops_objects_pass_the_argo_cd_and_flux_schemas() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};

    tokio::time::timeout(Duration::from_secs(120), async {
        let (env, op, _, _) = start().await;
        drop(op); // dry runs only
        let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
        let fixtures = format!(
            "{}/tests/fixtures/gitops-crds.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let ours: Vec<CustomResourceDefinition> =
            serde_saphyr::from_multiple(&std::fs::read_to_string(&fixtures).unwrap()).unwrap();
        if env.local.is_some() {
            for c in &ours {
                match crds.create(&PostParams::default(), c).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => panic!("installing {}: {e}", c.name_any()),
                }
            }
        }
        // Which kinds the cluster serves (real CRDs on a real cluster), once established.
        let mut served = Vec::new();
        for c in &ours {
            let name = c.name_any();
            let mut ok = false;
            for _ in 0..120 {
                ok = quiver_e2e::install::crd_established(&env.client, &name).await;
                // Absent on another cluster: no point waiting for it.
                if ok || env.local.is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            if ok {
                served.push(c.spec.names.kind.clone());
            } else {
                assert!(
                    env.local.is_none(),
                    "{name} not established on the stand-in"
                );
                eprintln!(
                    "skipping {}: the cluster has no CRD {name} (Argo CD or Flux is not installed)",
                    c.spec.names.kind
                );
            }
        }
        let api = |doc: &Value| {
            let (group, version) = doc["apiVersion"].as_str().unwrap().split_once('/').unwrap();
            let kind = doc["kind"].as_str().unwrap();
            let plural = ours
                .iter()
                .find(|c| c.spec.names.kind == kind)
                .map(|c| c.spec.names.plural.clone())
                .unwrap();
            let ar = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, version, kind),
                &plural,
            );
            Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.ns, &ar)
        };
        let strict = apply_params(true).validation_strict();
        let mut applied = 0;
        for file in [
            "gitops/argocd/quiver.yaml",
            "gitops/flux/quiver.yaml",
            "gitops/flux/operator/helmrelease.yaml",
        ] {
            for mut doc in example(file) {
                let kind = doc["kind"].as_str().unwrap().to_string();
                if !served.contains(&kind) {
                    continue;
                }
                // Into the test's namespace: argocd / flux-system need not exist here.
                doc["metadata"]["namespace"] = Value::String(env.ns.clone());
                let name = doc["metadata"]["name"].as_str().unwrap().to_string();
                api(&doc)
                    .patch(&name, &strict, &Patch::Apply(&doc))
                    .await
                    .unwrap_or_else(|e| panic!("{file}: {kind} {name}: {e}"));
                applied += 1;
            }
        }
        if env.local.is_some() {
            assert_eq!(
                applied, 6,
                "2 Applications, a GitRepository, 2 Kustomizations, a HelmRelease"
            );
            // The check bites: a misspelt field, a bad enum and a missing required field.
            let mut app = example("gitops/argocd/quiver.yaml")[0].clone();
            app["metadata"]["namespace"] = Value::String(env.ns.clone());
            let mut typo = app.clone();
            typo["spec"]["syncPolicy"]["automated"]["selfheal"] = Value::Bool(true);
            let mut missing = app.clone();
            missing["spec"]
                .as_object_mut()
                .unwrap()
                .remove("destination");
            let mut hr = example("gitops/flux/operator/helmrelease.yaml")[0].clone();
            hr["metadata"]["namespace"] = Value::String(env.ns.clone());
            hr["spec"]["install"]["crds"] = Value::String("Replace".into());
            for (bad, field) in [(typo, "selfheal"), (missing, "destination"), (hr, "crds")] {
                let name = bad["metadata"]["name"].as_str().unwrap().to_string();
                match api(&bad).patch(&name, &strict, &Patch::Apply(&bad)).await {
                    Err(kube::Error::Api(s)) => {
                        assert!(s.message.contains(field), "{field}: {}", s.message)
                    }
                    other => panic!("{field}: expected a refusal, got {other:?}"),
                }
            }
        }
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}
