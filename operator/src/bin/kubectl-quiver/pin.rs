//! `rollback`, `pin`, `unpin`: write `spec.pinnedVersion` (a merge patch), and print the
//! one-line patch to commit where the index is applied from Git.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use quiver_api::VectorIndex;
use quiver_api::v1alpha1::{VectorIndexStatus, VersionPhase, VersionStatus};
use serde_json::json;

use crate::connect::{Global, connect};
use crate::versions::{counter, pinned};

/// What `--help` of the three commands says about GitOps.
pub const GITOPS_HELP: &str = "\
GitOps: this writes spec.pinnedVersion on the cluster. Where Argo CD or Flux applies the
index from Git, the Git copy wins: the next sync reverts the change (or reports drift). The
command prints the one-line patch to commit to the manifest in Git instead, e.g.
  spec: {pinnedVersion: v3-7f3a9c2e}
and --dry-run prints it without writing to the cluster.";

#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    /// The VectorIndex.
    pub name: String,
    /// The version to go back to. Default: the newest retained version older than the active
    /// one that passed its gate.
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    /// Only print the patch (for GitOps: commit it in Git); write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(clap::Args, Debug)]
pub struct PinArgs {
    /// The VectorIndex.
    pub name: String,
    /// A version from `kubectl quiver versions NAME` that passed its gate (or is still on its
    /// way to it), e.g. v3-7f3a9c2e.
    pub version: String,
    /// Only print the patch (for GitOps: commit it in Git); write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(clap::Args, Debug)]
pub struct UnpinArgs {
    /// The VectorIndex.
    pub name: String,
    /// Only print the patch (for GitOps: commit it in Git); write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn preparing(p: VersionPhase) -> bool {
    matches!(
        p,
        VersionPhase::Pending
            | VersionPhase::Training
            | VersionPhase::Building
            | VersionPhase::Warming
            | VersionPhase::Gating
    )
}

/// Whether a pin can name the version: it passed its gate (Active, or Draining or Retired with
/// a gate recall), or is on its way to the gate.
fn is_pinnable(v: &VersionStatus) -> bool {
    match v.phase {
        VersionPhase::Active => true,
        VersionPhase::Draining | VersionPhase::Retired => v.recall.is_some(),
        p => preparing(p),
    }
}

/// Versions a pin can name, as `name (Phase)`, newest first.
fn pinnable_list(st: &VectorIndexStatus) -> String {
    let names: Vec<String> = st
        .versions
        .iter()
        .filter(|v| is_pinnable(v))
        .map(|v| format!("{} ({:?})", v.name, v.phase))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Whether `version` can be pinned: it is in the status and passed its gate (Active,
/// Draining or Retired with a gate recall), or is on its way to the gate. The error says why
/// not and lists the versions that can be.
pub fn check_pinnable(st: &VectorIndexStatus, version: &str, index: &str) -> Result<(), String> {
    let Some(v) = st.version(version) else {
        return Err(format!(
            "{version} is not a version of {index} (pinnable: {}); kubectl quiver versions {index} lists them",
            pinnable_list(st)
        ));
    };
    match v.phase {
        _ if is_pinnable(v) => Ok(()),
        VersionPhase::Failed => Err(format!(
            "{version} Failed ({}): only a version that passed its gate can be pinned (pinnable: {})",
            v.reason.as_deref().unwrap_or("no reason given"),
            pinnable_list(st)
        )),
        p => Err(format!(
            "{version} is {p:?} and never passed its gate: only a version that did can be pinned (pinnable: {})",
            pinnable_list(st)
        )),
    }
}

/// The version `rollback` goes back to: the newest retained version older than the active one
/// that passed its gate (Retired or Draining with a gate recall).
pub fn rollback_target(st: &VectorIndexStatus, index: &str) -> Result<String, String> {
    let Some(active) = st.active_version.as_deref() else {
        return Err(format!(
            "{index} has no active version to roll back from (kubectl quiver status {index})"
        ));
    };
    let active_pos = st.versions.iter().position(|v| v.name == active);
    let older = |i: usize, name: &str| match (counter(name), counter(active)) {
        (Some(c), Some(a)) => c < a,
        // Names the operator did not make: the status lists versions newest first.
        _ => active_pos.is_some_and(|p| i > p),
    };
    st.versions
        .iter()
        .enumerate()
        .filter(|(i, v)| {
            older(*i, &v.name)
                && matches!(v.phase, VersionPhase::Retired | VersionPhase::Draining)
                && v.recall.is_some()
        })
        .max_by_key(|(i, v)| (counter(&v.name), std::cmp::Reverse(*i)))
        .map(|(_, v)| v.name.clone())
        .ok_or_else(|| {
            format!(
                "{index} has no retained version older than the active {active} that passed its gate (versions: {}); spec.storage.retainVersions says how many are kept",
                st.versions
                    .iter()
                    .map(|v| format!("{} ({:?})", v.name, v.phase))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// The line to commit to the manifest in Git, as YAML.
pub fn gitops_line(version: Option<&str>) -> String {
    match version {
        Some(v) => format!("spec: {{pinnedVersion: {v}}}"),
        None => "spec: {pinnedVersion: null}".into(),
    }
}

/// The merge patch that writes (or clears) the pin.
pub fn merge_patch(version: Option<&str>) -> serde_json::Value {
    json!({"spec": {"pinnedVersion": version}})
}

/// The GitOps tool that applies this object, when its metadata says so.
pub fn gitops_manager(meta: &ObjectMeta) -> Option<&'static str> {
    let has = |m: &Option<std::collections::BTreeMap<String, String>>, prefix: &str| {
        m.as_ref()
            .is_some_and(|m| m.keys().any(|k| k.starts_with(prefix)))
    };
    let managers: Vec<&str> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.as_deref())
        .collect();
    if has(&meta.annotations, "argocd.argoproj.io/")
        || has(&meta.labels, "argocd.argoproj.io/")
        || managers.iter().any(|m| m.starts_with("argocd"))
    {
        Some("Argo CD")
    } else if has(&meta.labels, "kustomize.toolkit.fluxcd.io/")
        || has(&meta.labels, "helm.toolkit.fluxcd.io/")
        || managers
            .iter()
            .any(|m| matches!(*m, "kustomize-controller" | "helm-controller"))
    {
        Some("Flux")
    } else {
        None
    }
}

/// Writes `target` as the pin (None clears it) and prints what happened and the GitOps line.
async fn set_pin(
    g: &Global,
    name: &str,
    target: impl FnOnce(&VectorIndex) -> Result<Option<String>, String>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let kube = connect(g).await?;
    let vi = kube.index(name).await?;
    let target = target(&vi).map_err(|e| anyhow::anyhow!(e))?;
    let current = pinned(&vi).map(str::to_string);
    let line = gitops_line(target.as_deref());
    let what = match &target {
        Some(v) => format!("pinned to {v}"),
        None => "unpinned".to_string(),
    };
    if current == target {
        println!("vectorindex.quiver.dev/{name} is already {what}; nothing written");
    } else if dry_run {
        println!("vectorindex.quiver.dev/{name} would be {what} (dry run; nothing written)");
    } else {
        if let Some(tool) = gitops_manager(&vi.metadata) {
            eprintln!(
                "warning: {name} is applied by {tool}: its next sync reverts this unless the change is committed in Git"
            );
        }
        kube.indexes()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(merge_patch(target.as_deref())),
            )
            .await
            .map_err(|e| anyhow::anyhow!("patching vectorindex {name}: {e}"))?;
        let active = vi.status.as_ref().and_then(|s| s.active_version.clone());
        match &target {
            Some(v) if active.as_deref() == Some(v.as_str()) => println!(
                "vectorindex.quiver.dev/{name} {what}: it serves already; no new version is made until unpinned"
            ),
            Some(v) => println!(
                "vectorindex.quiver.dev/{name} {what}: {v} goes Warming → Gating → Active (no Job runs), then {} drains; follow with kubectl quiver wait {name} --for=Ready",
                active.as_deref().unwrap_or("the active version")
            ),
            None => println!(
                "vectorindex.quiver.dev/{name} {what}: back to the newest version that passed its gate; follow with kubectl quiver wait {name} --for=Ready"
            ),
        }
    }
    match &target {
        Some(_) => println!("GitOps: commit this line to the manifest in Git instead: {line}"),
        None => println!(
            "GitOps: delete spec.pinnedVersion from the manifest in Git instead (the patch: {line})"
        ),
    }
    Ok(())
}

pub async fn rollback(g: &Global, args: &RollbackArgs) -> anyhow::Result<()> {
    set_pin(
        g,
        &args.name,
        |vi| {
            let st = vi.status.clone().unwrap_or_default();
            let v = match &args.to {
                Some(v) => {
                    check_pinnable(&st, v, &args.name)?;
                    v.clone()
                }
                None => rollback_target(&st, &args.name)?,
            };
            Ok(Some(v))
        },
        args.dry_run,
    )
    .await
}

pub async fn pin(g: &Global, args: &PinArgs) -> anyhow::Result<()> {
    set_pin(
        g,
        &args.name,
        |vi| {
            let st = vi.status.clone().unwrap_or_default();
            check_pinnable(&st, &args.version, &args.name)?;
            Ok(Some(args.version.clone()))
        },
        args.dry_run,
    )
    .await
}

pub async fn unpin(g: &Global, args: &UnpinArgs) -> anyhow::Result<()> {
    set_pin(g, &args.name, |_| Ok(None), args.dry_run).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::versions::tests::sample;

    fn status() -> VectorIndexStatus {
        sample().status.unwrap()
    }

    fn version(name: &str, phase: VersionPhase, recall: Option<f64>) -> VersionStatus {
        let mut v = VersionStatus::pending(name);
        v.phase = phase;
        v.recall = recall;
        v
    }

    #[test]
    fn rollback_goes_to_the_newest_older_version_that_passed_its_gate() {
        assert_eq!(rollback_target(&status(), "docs").unwrap(), "v1-0a0b0c0d");
        let mut st = VectorIndexStatus {
            active_version: Some("v3-0a0b0c0d".into()),
            versions: vec![
                // newer than the active one: not a rollback
                version("v5-0a0b0c0d", VersionPhase::Retired, Some(0.9)),
                version("v4-0a0b0c0d", VersionPhase::Failed, Some(0.5)),
                version("v3-0a0b0c0d", VersionPhase::Active, Some(0.9)),
                // never passed a gate
                version("v2-0a0b0c0d", VersionPhase::Retired, None),
                version("v1-0a0b0c0d", VersionPhase::Retired, Some(0.95)),
            ],
            ..VectorIndexStatus::default()
        };
        assert_eq!(rollback_target(&st, "docs").unwrap(), "v1-0a0b0c0d");
        // A draining one counts, and the newest wins.
        st.versions
            .insert(3, version("v2b", VersionPhase::Draining, Some(0.9)));
        st.versions[4] = version("v2-0a0b0c0d", VersionPhase::Draining, Some(0.9));
        assert_eq!(rollback_target(&st, "docs").unwrap(), "v2-0a0b0c0d");
        // Nothing older retained.
        st.versions.truncate(3);
        let e = rollback_target(&st, "docs").unwrap_err();
        assert!(
            e.starts_with("docs has no retained version older than the active v3-0a0b0c0d"),
            "{e}"
        );
        st.active_version = None;
        assert!(
            rollback_target(&st, "docs")
                .unwrap_err()
                .contains("no active version")
        );
    }

    #[test]
    fn versions_not_named_by_the_operator_are_ordered_by_position() {
        let st = VectorIndexStatus {
            active_version: Some("blue".into()),
            versions: vec![
                version("green", VersionPhase::Retired, Some(0.9)),
                version("blue", VersionPhase::Active, Some(0.9)),
                version("red", VersionPhase::Retired, Some(0.9)),
            ],
            ..VectorIndexStatus::default()
        };
        assert_eq!(rollback_target(&st, "docs").unwrap(), "red");
    }

    #[test]
    fn a_pin_must_name_a_version_that_passed_its_gate() {
        let mut st = status();
        assert!(check_pinnable(&st, "v1-0a0b0c0d", "docs").is_ok());
        assert!(check_pinnable(&st, "v2-0a0b0c0d", "docs").is_ok());
        // On its way to the gate: becomes active when it passes.
        assert!(check_pinnable(&st, "v3-0a0b0c0d", "docs").is_ok());
        let e = check_pinnable(&st, "v9-deadbeef", "docs").unwrap_err();
        assert_eq!(
            e,
            "v9-deadbeef is not a version of docs (pinnable: v3-0a0b0c0d (Building), v2-0a0b0c0d (Active), v1-0a0b0c0d (Retired)); kubectl quiver versions docs lists them"
        );
        st.versions[0].phase = VersionPhase::Failed;
        st.versions[0].reason = Some("GateFailed: recall 0.7".into());
        let e = check_pinnable(&st, "v3-0a0b0c0d", "docs").unwrap_err();
        assert!(
            e.starts_with(
                "v3-0a0b0c0d Failed (GateFailed: recall 0.7): only a version that passed its gate"
            ),
            "{e}"
        );
        st.versions[2].recall = None;
        let e = check_pinnable(&st, "v1-0a0b0c0d", "docs").unwrap_err();
        assert!(e.contains("is Retired and never passed its gate"), "{e}");
        assert!(e.ends_with("(pinnable: v2-0a0b0c0d (Active))"), "{e}");
    }

    #[test]
    fn the_gitops_line_and_the_patch() {
        assert_eq!(
            gitops_line(Some("v3-7f3a9c2e")),
            "spec: {pinnedVersion: v3-7f3a9c2e}"
        );
        assert_eq!(gitops_line(None), "spec: {pinnedVersion: null}");
        // The line is YAML that means the merge patch.
        for v in [Some("v3-7f3a9c2e"), None] {
            let parsed: serde_json::Value = serde_saphyr::from_str(&gitops_line(v)).unwrap();
            assert_eq!(parsed, merge_patch(v));
        }
    }

    #[test]
    fn gitops_tools_are_recognised_by_their_metadata() {
        let meta = |v: serde_json::Value| -> ObjectMeta { serde_json::from_value(v).unwrap() };
        assert_eq!(gitops_manager(&meta(json!({"name": "docs"}))), None);
        assert_eq!(
            gitops_manager(&meta(
                json!({"annotations": {"argocd.argoproj.io/tracking-id": "x"}})
            )),
            Some("Argo CD")
        );
        assert_eq!(
            gitops_manager(&meta(
                json!({"labels": {"kustomize.toolkit.fluxcd.io/name": "apps"}})
            )),
            Some("Flux")
        );
        assert_eq!(
            gitops_manager(&meta(
                json!({"managedFields": [{"manager": "kubectl-client-side-apply"},
                                                             {"manager": "helm-controller"}]})
            )),
            Some("Flux")
        );
    }
}
