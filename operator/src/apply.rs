//! Apply: children by server-side apply (one field manager, forced: the operator owns what it
//! sets), skipped when the live object already carries the hash of what would be applied, so
//! an unchanged index makes no write; children the plan no longer has deleted; Jobs created
//! (AlreadyExists means adopt) and deleted.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use quiver_api::keys::FIELD_MANAGER;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::children::{Children, ShardChildren};
use crate::observe::LiveChildren;
use crate::spec_hash::fnv64;

/// Annotation holding the hash of the object the operator last applied.
pub const APPLIED_HASH: &str = "quiver.dev/applied-hash";

#[derive(Debug, thiserror::Error)]
#[error("{verb} {kind} {name}: {source}")]
pub struct ApplyError {
    pub verb: &'static str,
    pub kind: String,
    pub name: String,
    #[source]
    pub source: kube::Error,
}

/// Writes made by one apply, for the metrics and the idle check.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Writes {
    pub applied: u32,
    pub deleted: u32,
    pub created: u32,
}

impl Writes {
    pub fn total(&self) -> u32 {
        self.applied + self.deleted + self.created
    }
}

/// The value of [`APPLIED_HASH`] for a desired object (before the annotation is added).
pub fn applied_hash<K: Serialize>(desired: &K) -> String {
    let text = serde_json::to_string(desired).unwrap_or_default();
    format!("{:016x}", fnv64(text.as_bytes()))
}

fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).into_owned()
}

/// Applies `desired` unless `live` already has it.
async fn converge<K>(
    client: &Client,
    mut desired: K,
    live: &[K],
    writes: &mut Writes,
) -> Result<(), ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let name = desired.name_any();
    let ns = desired.namespace().unwrap_or_default();
    let hash = applied_hash(&desired);
    let current = live.iter().find(|l| l.name_any() == name);
    if current.is_some_and(|c| c.annotations().get(APPLIED_HASH) == Some(&hash)) {
        return Ok(());
    }
    desired
        .annotations_mut()
        .insert(APPLIED_HASH.to_string(), hash);
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|source| ApplyError {
        verb: "applying",
        kind: kind_of::<K>(),
        name: name.clone(),
        source,
    })?;
    writes.applied += 1;
    Ok(())
}

/// Deletes the live objects whose names are not in `keep`.
async fn delete_others<K>(
    client: &Client,
    live: &[K],
    keep: &BTreeSet<String>,
    writes: &mut Writes,
) -> Result<(), ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    for o in live {
        let name = o.name_any();
        if keep.contains(&name) || o.meta().deletion_timestamp.is_some() {
            continue;
        }
        let api: Api<K> = Api::namespaced(client.clone(), &o.namespace().unwrap_or_default());
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => writes.deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(ApplyError {
                    verb: "deleting",
                    kind: kind_of::<K>(),
                    name,
                    source,
                });
            }
        }
    }
    Ok(())
}

fn names<K: Resource>(items: &[K]) -> BTreeSet<String> {
    items.iter().map(|o| o.name_any()).collect()
}

/// Converges the serving children of one index to `desired`.
pub async fn children(
    client: &Client,
    desired: Children,
    live: &LiveChildren,
) -> Result<Writes, ApplyError> {
    let mut w = Writes::default();
    // No `..`: a child added to `Children` must be handled here.
    let Children {
        service_account,
        role,
        role_binding,
        shards,
        router,
        query_service,
        router_pdb,
    } = desired;
    converge(client, service_account, &live.service_accounts, &mut w).await?;
    converge(client, role, &live.roles, &mut w).await?;
    converge(client, role_binding, &live.role_bindings, &mut w).await?;
    let mut statefulsets = Vec::new();
    let mut services = vec![query_service.clone()];
    let mut pdbs = vec![router_pdb.clone()];
    for ShardChildren {
        statefulset,
        service,
        pdb,
    } in shards
    {
        statefulsets.push(statefulset);
        services.push(service);
        pdbs.push(pdb);
    }
    // Services before the pods that are found through them.
    for s in &services {
        converge(client, s.clone(), &live.services, &mut w).await?;
    }
    for s in &statefulsets {
        converge(client, s.clone(), &live.statefulsets, &mut w).await?;
    }
    converge(client, router, &live.deployments, &mut w).await?;
    for p in &pdbs {
        converge(client, p.clone(), &live.pdbs, &mut w).await?;
    }
    // A shard removed from the spec: its StatefulSet, Service and PDB go.
    delete_others(client, &live.statefulsets, &names(&statefulsets), &mut w).await?;
    delete_others(client, &live.services, &names(&services), &mut w).await?;
    delete_others(client, &live.pdbs, &names(&pdbs), &mut w).await?;
    Ok(w)
}

/// Creates `job`; one that exists already is adopted.
pub async fn create_job(client: &Client, job: &Job, w: &mut Writes) -> Result<(), ApplyError> {
    let name = job.name_any();
    let api: Api<Job> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    match api.create(&PostParams::default(), job).await {
        Ok(_) => {
            w.created += 1;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(source) => Err(ApplyError {
            verb: "creating",
            kind: "Job".into(),
            name,
            source,
        }),
    }
}

/// Deletes the index's Jobs whose names are not in `keep` (their pods go with them).
pub async fn jobs_except(
    client: &Client,
    live: &[Job],
    keep: &BTreeSet<String>,
    w: &mut Writes,
) -> Result<(), ApplyError> {
    delete_others(client, live, keep, w).await
}
