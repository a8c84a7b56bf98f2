//! Deletion (pure): what the finalizer and the cleanup Job need next.
//!
//! The finalizer ([`quiver_api::FINALIZER`]) is on a `VectorIndex` exactly while its
//! `spec.storage.deletionPolicy` is `Delete`: a `Retain` index needs nothing done before it
//! goes (its children go by ownerReference), so it is never held up by an operator that is
//! down. With `Delete`, a deleted index keeps existing until a cleanup Job (`index-node purge`)
//! has deleted its files; a failed cleanup is retried, and switching the policy to `Retain`
//! while it is stuck lets the resource go and keeps the files.

use quiver_api::v1alpha1::DeletionPolicy;

use crate::jobs::JobState;

/// The next deletion step of one index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeletionStep {
    /// Nothing to do: the finalizer is where the policy wants it, and the index is not being
    /// deleted (or is, without our finalizer).
    Nothing,
    /// Put the finalizer on (policy `Delete`).
    AddFinalizer,
    /// Take the finalizer off: policy `Retain`, or the files are gone.
    RemoveFinalizer,
    /// Being deleted with policy `Delete`: create the cleanup Job.
    CreateCleanup,
    /// The cleanup Job is running (or going away): look again soon.
    Wait,
    /// The cleanup Job succeeded: delete it (it has no owner), then remove the finalizer.
    Finish,
    /// The cleanup Job failed: say why, delete it, and create it again after a back-off.
    Retry { message: String },
}

/// The deletion step for an index with `policy`, whether it carries the finalizer, whether it
/// is being deleted, and the state of its cleanup Job.
pub fn plan(
    policy: DeletionPolicy,
    has_finalizer: bool,
    deleting: bool,
    cleanup: &JobState,
) -> DeletionStep {
    match (deleting, has_finalizer, policy) {
        (false, false, DeletionPolicy::Delete) => DeletionStep::AddFinalizer,
        (false, true, DeletionPolicy::Retain) => DeletionStep::RemoveFinalizer,
        (false, _, _) | (true, false, _) => DeletionStep::Nothing,
        (true, true, DeletionPolicy::Retain) => DeletionStep::RemoveFinalizer,
        (true, true, DeletionPolicy::Delete) => match cleanup {
            JobState::Absent => DeletionStep::CreateCleanup,
            JobState::Running | JobState::Deleting => DeletionStep::Wait,
            JobState::Succeeded => DeletionStep::Finish,
            JobState::Failed { message } => DeletionStep::Retry {
                message: message.clone(),
            },
        },
    }
}

/// The finalizer list with ours added or removed (the order of the others kept).
pub fn finalizers_with(current: &[String], ours: &str, present: bool) -> Vec<String> {
    let mut out: Vec<String> = current.iter().filter(|f| *f != ours).cloned().collect();
    if present {
        out.push(ours.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeletionPolicy::{Delete, Retain};

    #[test]
    fn the_finalizer_follows_the_policy_while_the_index_lives() {
        let absent = JobState::Absent;
        assert_eq!(
            plan(Delete, false, false, &absent),
            DeletionStep::AddFinalizer
        );
        assert_eq!(plan(Delete, true, false, &absent), DeletionStep::Nothing);
        assert_eq!(plan(Retain, false, false, &absent), DeletionStep::Nothing);
        assert_eq!(
            plan(Retain, true, false, &absent),
            DeletionStep::RemoveFinalizer
        );
    }

    #[test]
    fn a_deleted_index_with_policy_delete_waits_for_its_cleanup_job() {
        assert_eq!(
            plan(Delete, true, true, &JobState::Absent),
            DeletionStep::CreateCleanup
        );
        assert_eq!(
            plan(Delete, true, true, &JobState::Running),
            DeletionStep::Wait
        );
        assert_eq!(
            plan(Delete, true, true, &JobState::Deleting),
            DeletionStep::Wait
        );
        assert_eq!(
            plan(Delete, true, true, &JobState::Succeeded),
            DeletionStep::Finish
        );
        assert_eq!(
            plan(
                Delete,
                true,
                true,
                &JobState::Failed {
                    message: "s3://b: access denied".into()
                }
            ),
            DeletionStep::Retry {
                message: "s3://b: access denied".into()
            }
        );
    }

    #[test]
    fn retain_or_no_finalizer_lets_a_deleted_index_go_without_a_job() {
        assert_eq!(
            plan(Retain, true, true, &JobState::Running),
            DeletionStep::RemoveFinalizer
        );
        assert_eq!(
            plan(Delete, false, true, &JobState::Absent),
            DeletionStep::Nothing
        );
    }

    #[test]
    fn finalizer_lists_keep_other_finalizers() {
        let cur = vec![
            "foregroundDeletion".to_string(),
            "quiver.dev/storage".into(),
        ];
        assert_eq!(
            finalizers_with(&cur, "quiver.dev/storage", false),
            ["foregroundDeletion"]
        );
        assert_eq!(
            finalizers_with(&cur, "quiver.dev/storage", true),
            ["foregroundDeletion", "quiver.dev/storage"]
        );
        assert_eq!(finalizers_with(&[], "f", true), ["f"]);
    }
}
