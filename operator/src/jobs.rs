//! The Jobs that make a version, built from the spec and the version name alone (pure): train
//! (`index-node train`), build (an Indexed Job of `spec.build.parts` completions running
//! `index-node build --part i`) and, with more than one part, finalize (`index-node build
//! --finalize`). Job names derive from the version name, so creating one that exists means
//! "adopt it": an operator restarted between two steps never starts the same work twice.
//!
//! Every Job pod reads and writes storage itself (the operator holds no storage credentials):
//! the storage Secret, when set, is its environment.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use quiver_api::keys::labels::{self, Role};
use quiver_api::v1alpha1::{PullPolicy, VectorIndex, VersionStatus};
use quiver_api::{env, names};
use serde_json::json;

use crate::children::ChildConfig;
use crate::lifecycle::GcPlan;

/// Which step of a version a Job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobKind {
    Train,
    Build,
    Finalize,
    /// A rebalance: the manifest over another version's files ([`remap`]).
    Remap,
    /// A rebalance that splits one list ([`split`]).
    Split,
}

impl JobKind {
    pub fn role(self) -> Role {
        match self {
            JobKind::Train => Role::Train,
            JobKind::Build => Role::Build,
            JobKind::Finalize => Role::Finalize,
            JobKind::Remap => Role::Remap,
            JobKind::Split => Role::Split,
        }
    }

    /// The Job's name for `version` of `index`.
    pub fn job_name(self, index: &str, version: &str) -> String {
        match self {
            JobKind::Train => names::train_job(index, version),
            JobKind::Build => names::build_job(index, version),
            JobKind::Finalize => names::finalize_job(index, version),
            JobKind::Remap => names::remap_job(index, version),
            JobKind::Split => names::split_job(index, version),
        }
    }

    /// The word used in condition reasons and Events: `Train`, `Build`, `Finalize`.
    pub fn word(self) -> &'static str {
        match self {
            JobKind::Train => "Train",
            JobKind::Build => "Build",
            JobKind::Finalize => "Finalize",
            JobKind::Remap => "Remap",
            JobKind::Split => "Split",
        }
    }
}

/// Pod retries the Job controller makes (with its own exponential back-off) before the Job
/// fails; the operator then records the failure and retries the whole Job with a longer
/// back-off of its own.
pub const BACKOFF_LIMIT: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("VectorIndex {0} has no uid yet: a Job cannot be owned by it")]
    NotStored(String),
    #[error("version {0} is not a rebalance: it has no version to remap and no moves")]
    Remap(String),
    #[error("version {0} is not a split: it has no version to split or no list")]
    Split(String),
    #[error("building Job {job}: {source}")]
    Build {
        job: String,
        source: serde_json::Error,
    },
}

/// The index as the controlling owner of a Job (refused before the index is stored).
fn owner_of(vi: &VectorIndex) -> Result<OwnerReference, JobError> {
    let index = vi.name_any();
    if vi.meta().uid.is_none() {
        return Err(JobError::NotStored(index));
    }
    vi.controller_owner_ref(&())
        .ok_or(JobError::NotStored(index))
}

/// A one-pod Job owned by the index (remap, gc): `pod_spec` under `pod_labels`, retried
/// [`BACKOFF_LIMIT`] times by the Job controller.
fn owned_job(
    vi: &VectorIndex,
    owner: OwnerReference,
    name: &str,
    pod_labels: &BTreeMap<String, String>,
    pod_spec: serde_json::Value,
) -> Result<Job, JobError> {
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": vi.namespace(), "labels": pod_labels,
                     "ownerReferences": [owner]},
        "spec": {"backoffLimit": BACKOFF_LIMIT,
                 "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec}},
    });
    serde_json::from_value::<Job>(job).map_err(|source| JobError::Build {
        job: name.to_string(),
        source,
    })
}

/// The Job of step `kind` for `version` of `vi`. `spec_hash` is recorded in the manifest.
pub fn build(
    vi: &VectorIndex,
    cfg: &ChildConfig,
    kind: JobKind,
    version: &str,
    spec_hash: &str,
) -> Result<Job, JobError> {
    let index = vi.name_any();
    let owner = owner_of(vi)?;
    let name = kind.job_name(&index, version);
    let spec = &vi.spec;
    let mut pod_labels: BTreeMap<String, String> = labels::for_role(&index, kind.role());
    pod_labels.insert(labels::VERSION.to_string(), version.to_string());

    let mut args: Vec<String> = vec![match kind {
        JobKind::Train => "train".into(),
        _ => "build".into(),
    }];
    args.extend(source_args(vi));
    match kind {
        JobKind::Remap => {
            // Made by [`remap`], which knows the moves; never reached from here.
            return Err(JobError::Remap(version.to_string()));
        }
        JobKind::Split => return Err(JobError::Split(version.to_string())),
        JobKind::Train => {
            let nlist = u64::from(spec.index.nlist.max(1));
            let per_centroid = spec.index.effective_sample_size().div_ceil(nlist).max(1);
            args.extend([
                "--metric".into(),
                spec.metric.as_str().into(),
                "--nlist".into(),
                spec.index.nlist.to_string(),
                "--quantizer".into(),
                spec.index.quantizer.engine_name(),
                "--iters".into(),
                spec.index.training.iterations.to_string(),
                "--max-points-per-centroid".into(),
                per_centroid.to_string(),
                "--balance".into(),
                spec.index.training.balance.to_string(),
            ]);
            if spec.index.quantizer.rerank {
                args.push("--keep-raw".into());
            }
        }
        JobKind::Build | JobKind::Finalize => {
            args.extend([
                "--shards".into(),
                spec.shards.to_string(),
                "--parts".into(),
                spec.build.parts.max(1).to_string(),
                "--eval-queries".into(),
                spec.rollout.eval_queries.to_string(),
                "--eval-k".into(),
                spec.rollout.eval_k.to_string(),
                "--default-nprobe".into(),
                spec.index.effective_nprobe().to_string(),
                "--spec-hash".into(),
                spec_hash.into(),
            ]);
            if spec.source.id_offset > 0 {
                args.extend(["--id-offset".into(), spec.source.id_offset.to_string()]);
            }
            if kind == JobKind::Finalize {
                args.push("--finalize".into());
            }
        }
    }

    let envs = vec![json!({"name": env::VERSION, "value": version})];
    let pod_spec = pod_spec(vi, cfg, &kind.word().to_ascii_lowercase(), args, envs);
    let mut job_spec = json!({
        "backoffLimit": BACKOFF_LIMIT,
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
    });
    if kind == JobKind::Build {
        let parts = spec.build.parts.max(1);
        job_spec["completionMode"] = json!("Indexed");
        job_spec["completions"] = json!(parts);
        job_spec["parallelism"] = json!(parts);
        // Retries count per part, not for the whole Job.
        job_spec["backoffLimit"] = json!(BACKOFF_LIMIT * parts as i32);
    }
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": vi.namespace(), "labels": pod_labels,
                     "ownerReferences": [owner]},
        "spec": job_spec,
    });
    serde_json::from_value::<Job>(job).map_err(|source| JobError::Build { job: name, source })
}

/// The pod of a storage Job: the node image running `args`, with the storage location (and
/// the storage Secret) in its environment, no API token, never restarted in place.
fn pod_spec(
    vi: &VectorIndex,
    cfg: &ChildConfig,
    container_name: &str,
    args: Vec<String>,
    extra_env: Vec<serde_json::Value>,
) -> serde_json::Value {
    let spec = &vi.spec;
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let mut envs = vec![
        json!({"name": env::STORAGE, "value": spec.storage.uri}),
        json!({"name": env::NAMESPACE, "valueFrom": field("metadata.namespace")}),
        json!({"name": env::INDEX, "value": vi.name_any()}),
        json!({"name": "QUIVER_LOG_FORMAT", "value": "json"}),
    ];
    envs.extend(extra_env);
    let mut container = json!({
        "name": container_name,
        "image": spec.pods.image.as_deref().unwrap_or(&cfg.node_image),
        "args": args,
        "env": envs,
        // The reason a person reads in the condition: the error line the process printed.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
    });
    if let Some(r) = &spec.pods.resources.job {
        container["resources"] = json!(r);
    }
    if let Some(p) = spec.pods.image_pull_policy {
        container["imagePullPolicy"] = json!(match p {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        });
    }
    if let Some(secret) = &spec.storage.secret_ref {
        container["envFrom"] = json!([{"secretRef": {"name": secret.name}}]);
    }
    let mut pod_spec = json!({
        "restartPolicy": "Never",
        // Job pods talk to storage only, never to the Kubernetes API.
        "automountServiceAccountToken": false,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    });
    if !spec.pods.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(spec.pods.node_selector);
    }
    if !spec.pods.tolerations.is_empty() {
        pod_spec["tolerations"] = json!(spec.pods.tolerations);
    }
    pod_spec
}

/// The Job of a rebalance version `v`: `index-node remap` writes its manifest over the files
/// of `v.rebalancedFrom` with `v.moves` applied to the shard map. Nothing is read but that
/// manifest and nothing written but the new one.
pub fn remap(vi: &VectorIndex, cfg: &ChildConfig, v: &VersionStatus) -> Result<Job, JobError> {
    let index = vi.name_any();
    let owner = owner_of(vi)?;
    let (Some(from), false) = (&v.rebalanced_from, v.moves.is_empty()) else {
        return Err(JobError::Remap(v.name.clone()));
    };
    let name = JobKind::Remap.job_name(&index, &v.name);
    let mut pod_labels = labels::for_role(&index, Role::Remap);
    pod_labels.insert(labels::VERSION.to_string(), v.name.clone());
    let moves: Vec<String> = v
        .moves
        .iter()
        .map(|m| format!("{}:{}:{}", m.list, m.from, m.to))
        .collect();
    let args = vec![
        "remap".to_string(),
        "--from".into(),
        from.clone(),
        "--to".into(),
        v.name.clone(),
        "--move".into(),
        moves.join(","),
    ];
    let envs = vec![json!({"name": env::VERSION, "value": v.name})];
    let pod_spec = pod_spec(vi, cfg, "remap", args, envs);
    owned_job(vi, owner, &name, &pod_labels, pod_spec)
}

/// The Job of a split version `v`: `index-node split` reads list `v.split.list` of
/// `v.rebalancedFrom` (and, unless the list keeps its vectors, those rows of the source),
/// splits it by 2-means and writes the new quantizer, the two halves and the manifest.
pub fn split(vi: &VectorIndex, cfg: &ChildConfig, v: &VersionStatus) -> Result<Job, JobError> {
    let index = vi.name_any();
    let owner = owner_of(vi)?;
    let (Some(from), Some(split)) = (&v.rebalanced_from, &v.split) else {
        return Err(JobError::Split(v.name.clone()));
    };
    let name = JobKind::Split.job_name(&index, &v.name);
    let mut pod_labels = labels::for_role(&index, Role::Split);
    pod_labels.insert(labels::VERSION.to_string(), v.name.clone());
    let mut args = vec![
        "split".to_string(),
        "--from".into(),
        from.clone(),
        "--to".into(),
        v.name.clone(),
        "--list".into(),
        split.list.to_string(),
        "--to-shard".into(),
        split.to.to_string(),
    ];
    args.extend(source_args(vi));
    if vi.spec.source.id_offset > 0 {
        args.extend(["--id-offset".into(), vi.spec.source.id_offset.to_string()]);
    }
    let envs = vec![json!({"name": env::VERSION, "value": v.name})];
    let pod_spec = pod_spec(vi, cfg, "split", args, envs);
    owned_job(vi, owner, &name, &pod_labels, pod_spec)
}

/// The garbage-collection Job of `plan`: `index-node gc` deletes the files of the versions
/// it names, except files the manifests of the kept versions still name. Owned by the index
/// (it runs while the index lives), named for the newest version it collects.
pub fn gc(vi: &VectorIndex, cfg: &ChildConfig, plan: &GcPlan) -> Result<Job, JobError> {
    let index = vi.name_any();
    let owner = owner_of(vi)?;
    let pod_labels = labels::for_role(&index, Role::Gc);
    let args = vec![
        "gc".to_string(),
        "--delete".into(),
        plan.delete.join(","),
        "--keep".into(),
        plan.keep.join(","),
    ];
    let pod_spec = pod_spec(vi, cfg, "gc", args, Vec::new());
    owned_job(vi, owner, &plan.job, &pod_labels, pod_spec)
}

/// Annotation on the cleanup Job: the uid of the resource it purges. The Job has no owner
/// (see [`cleanup`]), so this is how a cleanup Job left by an earlier resource of the same
/// name is told apart.
pub const CLEANUP_UID_ANNOTATION: &str = "quiver.dev/index-uid";

/// The Job that deletes the files of `vi` (`deletionPolicy: Delete`): `index-node purge`.
///
/// It has no ownerReference on purpose: it runs while the resource is being deleted, and a
/// foreground deletion would have the garbage collector delete a dependent created then.
/// The operator deletes it itself once it has succeeded, before it removes the finalizer.
pub fn cleanup(vi: &VectorIndex, cfg: &ChildConfig) -> Result<Job, JobError> {
    let index = vi.name_any();
    let uid = vi
        .meta()
        .uid
        .clone()
        .ok_or_else(|| JobError::NotStored(index.clone()))?;
    let name = names::cleanup_job(&index);
    let pod_labels = labels::for_role(&index, Role::Gc);
    let envs = vec![json!({"name": env::INDEX_UID, "value": uid})];
    let pod_spec = pod_spec(vi, cfg, "cleanup", vec!["purge".into()], envs);
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": vi.namespace(), "labels": pod_labels,
                     "annotations": {CLEANUP_UID_ANNOTATION: uid}},
        "spec": {"backoffLimit": BACKOFF_LIMIT,
                 "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec}},
    });
    serde_json::from_value::<Job>(job).map_err(|source| JobError::Build { job: name, source })
}

/// The source flags shared by train and build: the same rows in every step.
fn source_args(vi: &VectorIndex) -> Vec<String> {
    let spec = &vi.spec;
    match (&spec.source.synthetic, &spec.source.uri) {
        (Some(s), _) => vec![
            "--synthetic".into(),
            s.count.to_string(),
            "--dim".into(),
            spec.dimension.to_string(),
            "--seed".into(),
            s.seed.to_string(),
        ],
        (None, Some(uri)) => vec![
            "--source".into(),
            uri.clone(),
            "--expect-dim".into(),
            spec.dimension.to_string(),
        ],
        // validate() refuses a source with neither; an empty list makes the Job fail with
        // index-node's own message rather than the operator guessing.
        (None, None) => Vec::new(),
    }
}

/// A Job's outcome as the lifecycle needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// Not found.
    Absent,
    /// Being deleted (a retry waits for it to go).
    Deleting,
    Running,
    Succeeded,
    /// Failed for good; `message` says why (the pod's termination message when there is one).
    Failed {
        message: String,
    },
}

/// The state of a live Job, with the termination message of one of its failed pods.
pub fn state_of(job: &Job, failed_pod_message: Option<&str>) -> JobState {
    if job.metadata.deletion_timestamp.is_some() {
        return JobState::Deleting;
    }
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let is_true = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if is_true("Complete").is_some() {
        return JobState::Succeeded;
    }
    if let Some(c) = is_true("Failed") {
        let job_message = c.message.clone().unwrap_or_else(|| "Job failed".into());
        let message = match failed_pod_message.map(str::trim).filter(|m| !m.is_empty()) {
            Some(m) => last_line(m).to_string(),
            None => job_message,
        };
        return JobState::Failed { message };
    }
    JobState::Running
}

/// The last non-empty line: where `anyhow` puts the error chain of a failed process.
fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(text)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::Value;

    pub(crate) fn index(edit: impl FnOnce(&mut Value)) -> VectorIndex {
        let mut v = json!({
            "apiVersion": "quiver.dev/v1alpha1", "kind": "VectorIndex",
            "metadata": {"name": "docs", "namespace": "search",
                         "uid": "7f3a9c2e-0000-4000-8000-000000000001"},
            "spec": {"dimension": 32, "metric": "l2",
                     "index": {"nlist": 64, "quantizer": {"kind": "flat"}},
                     "source": {"synthetic": {"count": 10000, "seed": 7}},
                     "storage": {"uri": "file:///data"},
                     "shards": 2, "replicas": 2, "build": {"parts": 3}},
        });
        edit(&mut v);
        serde_json::from_value(v).expect("test index")
    }

    fn cfg() -> ChildConfig {
        ChildConfig {
            node_image: "index-node:test".into(),
        }
    }

    fn args(job: &Job) -> Vec<String> {
        job.spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .as_ref()
            .expect("pod")
            .containers[0]
            .args
            .clone()
            .unwrap_or_default()
    }

    #[test]
    fn train_job_carries_the_shape_of_the_index_and_the_same_rows_as_build() {
        let vi = index(|_| {});
        let train = build(&vi, &cfg(), JobKind::Train, "v1-7f3a9c2e", "h").expect("train");
        let build_job = build(&vi, &cfg(), JobKind::Build, "v1-7f3a9c2e", "h").expect("build");
        assert_eq!(
            train.metadata.name.as_deref(),
            Some("docs-v1-7f3a9c2e-train")
        );
        let a = args(&train);
        assert_eq!(a[0], "train");
        for pair in [
            ["--nlist", "64"],
            ["--metric", "l2"],
            ["--quantizer", "flat"],
        ] {
            let at = a.iter().position(|x| x == pair[0]).expect(pair[0]);
            assert_eq!(a[at + 1], pair[1]);
        }
        // Same synthetic rows in both steps.
        let b = args(&build_job);
        for flag in ["--synthetic", "--dim", "--seed"] {
            let ia = a.iter().position(|x| x == flag).expect(flag);
            let ib = b.iter().position(|x| x == flag).expect(flag);
            assert_eq!(a[ia + 1], b[ib + 1], "{flag}");
        }
    }

    #[test]
    fn an_id_offset_reaches_build_and_finalize_only() {
        let plain = index(|_| {});
        let b = args(&build(&plain, &cfg(), JobKind::Build, "v1-7f3a9c2e", "h").expect("build"));
        assert!(!b.contains(&"--id-offset".to_string()), "{b:?}");
        let vi = index(|v| v["spec"]["source"]["idOffset"] = json!(1_000_000));
        for kind in [JobKind::Build, JobKind::Finalize] {
            let a = args(&build(&vi, &cfg(), kind, "v1-7f3a9c2e", "h").expect("job"));
            let at = a
                .iter()
                .position(|x| x == "--id-offset")
                .expect("--id-offset");
            assert_eq!(a[at + 1], "1000000");
        }
        let t = args(&build(&vi, &cfg(), JobKind::Train, "v1-7f3a9c2e", "h").expect("train"));
        assert!(!t.contains(&"--id-offset".to_string()), "{t:?}");
    }

    #[test]
    fn build_job_is_indexed_with_one_completion_per_part_and_finalize_is_not() {
        let vi = index(|_| {});
        let b = build(&vi, &cfg(), JobKind::Build, "v1-7f3a9c2e", "h").expect("build");
        let spec = b.spec.as_ref().expect("spec");
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!(spec.completions, Some(3));
        assert_eq!(spec.parallelism, Some(3));
        let f = build(&vi, &cfg(), JobKind::Finalize, "v1-7f3a9c2e", "h").expect("finalize");
        assert_eq!(f.spec.as_ref().expect("spec").completion_mode, None);
        assert!(args(&f).contains(&"--finalize".to_string()));
        assert_eq!(
            f.metadata.labels.as_ref().expect("labels")[labels::VERSION],
            "v1-7f3a9c2e"
        );
    }

    #[test]
    fn job_pods_never_restart_in_place_and_get_the_storage_secret() {
        let vi = index(|v| v["spec"]["storage"]["secretRef"] = json!({"name": "s3"}));
        let j = build(&vi, &cfg(), JobKind::Train, "v1-7f3a9c2e", "h").expect("train");
        let pod = j
            .spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .as_ref()
            .expect("pod");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let from = pod.containers[0].env_from.as_ref().expect("envFrom");
        assert_eq!(
            from[0].secret_ref.as_ref().map(|s| s.name.as_str()),
            Some("s3")
        );
        assert_eq!(
            j.metadata.owner_references.as_ref().expect("owner")[0].controller,
            Some(true)
        );
    }

    #[test]
    fn a_file_source_is_passed_as_is_with_the_dimension_it_must_have() {
        let vi = index(|v| v["spec"]["source"] = json!({"uri": "s3://b/v.npy"}));
        let a = args(&build(&vi, &cfg(), JobKind::Train, "v1-7f3a9c2e", "h").expect("train"));
        let at = a.iter().position(|x| x == "--source").expect("--source");
        assert_eq!(a[at + 1], "s3://b/v.npy");
        assert!(!a.contains(&"--synthetic".to_string()));
        // A file of another dimension fails the train Job, naming the file.
        let at = a
            .iter()
            .position(|x| x == "--expect-dim")
            .expect("--expect-dim");
        assert_eq!(a[at + 1], vi.spec.dimension.to_string());
    }

    #[test]
    fn a_split_job_names_the_list_its_new_shard_and_the_source() {
        let vi = index(|v| v["spec"]["source"]["idOffset"] = json!(1000));
        let mut v = VersionStatus::pending("v2-7f3a9c2e");
        assert!(matches!(split(&vi, &cfg(), &v), Err(JobError::Split(_))));
        v.rebalanced_from = Some("v1-7f3a9c2e".into());
        v.split = Some(quiver_api::v1alpha1::ListSplit {
            list: 12,
            from: 0,
            to: 3,
        });
        let j = split(&vi, &cfg(), &v).expect("split");
        assert_eq!(j.metadata.name.as_deref(), Some("docs-v2-7f3a9c2e-split"));
        assert_eq!(
            j.metadata.labels.as_ref().expect("labels")[labels::ROLE],
            "split"
        );
        let a = args(&j);
        assert_eq!(
            a[..9],
            [
                "split",
                "--from",
                "v1-7f3a9c2e",
                "--to",
                "v2-7f3a9c2e",
                "--list",
                "12",
                "--to-shard",
                "3"
            ]
        );
        assert!(a.contains(&"--synthetic".to_string()), "{a:?}");
        let at = a
            .iter()
            .position(|x| x == "--id-offset")
            .expect("--id-offset");
        assert_eq!(a[at + 1], "1000");
    }

    #[test]
    fn gc_job_names_what_goes_and_what_stays_and_is_owned() {
        let vi = index(|v| v["spec"]["storage"]["secretRef"] = json!({"name": "s3"}));
        let plan = GcPlan {
            job: "docs-gc-3".into(),
            delete: vec!["v3-7f3a9c2e".into(), "v1-7f3a9c2e".into()],
            keep: vec!["v5-7f3a9c2e".into(), "v4-7f3a9c2e".into()],
        };
        let j = gc(&vi, &cfg(), &plan).expect("gc");
        assert_eq!(j.metadata.name.as_deref(), Some("docs-gc-3"));
        assert_eq!(
            args(&j),
            [
                "gc",
                "--delete",
                "v3-7f3a9c2e,v1-7f3a9c2e",
                "--keep",
                "v5-7f3a9c2e,v4-7f3a9c2e"
            ]
        );
        assert_eq!(
            j.metadata.labels.as_ref().expect("labels")[labels::ROLE],
            "gc"
        );
        let pod = j
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod");
        assert!(pod.containers[0].env_from.is_some(), "storage Secret");
        assert_eq!(
            j.metadata.owner_references.as_ref().expect("owner")[0].controller,
            Some(true)
        );
    }

    fn job_with(conditions: Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j"}, "spec": {"template": {}},
                                      "status": {"conditions": conditions}}))
        .expect("job")
    }

    #[test]
    fn job_state_reads_conditions_and_prefers_the_pods_last_error_line() {
        assert_eq!(state_of(&job_with(json!([])), None), JobState::Running);
        let done = job_with(json!([{"type": "Complete", "status": "True"}]));
        assert_eq!(state_of(&done, None), JobState::Succeeded);
        let failed = job_with(json!([{"type": "Failed", "status": "True",
                                      "message": "Job has reached the specified backoff limit"}]));
        assert_eq!(
            state_of(
                &failed,
                Some("log line\nError: source s3://x/v.npy not found\n")
            ),
            JobState::Failed {
                message: "Error: source s3://x/v.npy not found".into()
            }
        );
        assert_eq!(
            state_of(&failed, None),
            JobState::Failed {
                message: "Job has reached the specified backoff limit".into()
            }
        );
    }
}
