//! `retrain NAME [--reason R]`: asks for one retrain by a fresh `quiver.dev/retrain` token.

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use quiver_api::annotations;
use serde_json::json;

use crate::connect::{Global, connect};
use crate::versions::pinned;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VectorIndex.
    pub name: String,
    /// Why (a ticket, "new embeddings"): it becomes part of the token, which the new version
    /// records as its trigger `retrain:<token>`.
    #[arg(long, value_name = "R")]
    pub reason: Option<String>,
}

/// Longest reason kept in a token.
const REASON_MAX: usize = 40;

/// `reason` as lower-case letters, digits and single dashes, at most [`REASON_MAX`] long.
pub fn slug(reason: &str) -> String {
    let mut out = String::new();
    for c in reason.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(REASON_MAX);
    out.trim_end_matches('-').to_string()
}

/// A fresh token: the UTC time to the second, 4 hex digits of `nonce` (two retrains in the same
/// second differ) and the reason, e.g. `20261206-174102-3fa9-new-embeddings`.
pub fn token(now: Timestamp, nonce: u64, reason: Option<&str>) -> String {
    let mut t = format!("{}-{:04x}", now.strftime("%Y%m%d-%H%M%S"), nonce & 0xffff);
    if let Some(s) = reason.map(slug).filter(|s| !s.is_empty()) {
        t.push('-');
        t.push_str(&s);
    }
    t
}

/// Not cryptographic: enough that two runs differ.
pub fn nonce() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    u64::from(nanos) ^ u64::from(std::process::id()).rotate_left(16)
}

/// The merge patch that sets the annotation.
pub fn patch(token: &str) -> serde_json::Value {
    json!({"metadata": {"annotations": {annotations::RETRAIN: token}}})
}

pub async fn run(g: &Global, args: &Args) -> anyhow::Result<()> {
    let kube = connect(g).await?;
    let vi = kube.index(&args.name).await?;
    let token = token(Timestamp::now(), nonce(), args.reason.as_deref());
    kube.indexes()
        .patch(
            &args.name,
            &PatchParams::default(),
            &Patch::Merge(patch(&token)),
        )
        .await
        .map_err(|e| anyhow::anyhow!("annotating vectorindex {}: {e}", args.name))?;
    println!("{}={token}", annotations::RETRAIN);
    eprintln!(
        "vectorindex.quiver.dev/{} retrain requested: its next version records trigger retrain:{token}; follow it with kubectl quiver wait {} --for=Ready",
        args.name, args.name
    );
    if let Some(p) = pinned(&vi) {
        eprintln!(
            "warning: spec.pinnedVersion is {p}: no new version is made while pinned; the retrain runs after kubectl quiver unpin {}",
            args.name
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_time_nonce_and_reason() {
        let t = Timestamp::from_second(1_800_000_000).unwrap(); // 2027-01-15T08:00:00Z
        assert_eq!(token(t, 0x1_3fa9, None), "20270115-080000-3fa9");
        assert_eq!(
            token(t, 7, Some("  New embeddings (JIRA-42)! ")),
            "20270115-080000-0007-new-embeddings-jira-42"
        );
        assert_eq!(token(t, 7, Some("!!!")), "20270115-080000-0007");
        assert_ne!(token(t, 1, None), token(t, 2, None));
    }

    #[test]
    fn reasons_become_short_slugs() {
        assert_eq!(slug("Recall dropped -- see #123"), "recall-dropped-see-123");
        assert_eq!(slug("ünïcode"), "n-code");
        let long = slug(&"a b ".repeat(30));
        assert!(long.len() <= REASON_MAX && !long.ends_with('-'), "{long}");
    }

    #[test]
    fn the_patch_sets_the_annotation() {
        assert_eq!(
            patch("t1"),
            json!({"metadata": {"annotations": {"quiver.dev/retrain": "t1"}}})
        );
    }
}
