//! `logs NAME [--role ROLE] [--tail N]`: the logs of an index's pods of one role, or of the
//! operator's pods (the lines about this index), through the pods/log API; `--follow`
//! streams every container's new lines, each prefixed with its pod and container.

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, LogParams};
use quiver_api::labels::{self, Role};

use crate::connect::{Global, connect};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogRole {
    /// Shard pods (serve inverted lists).
    Shard,
    /// Router pods (the Service clients query).
    Router,
    /// Train Job pods.
    Train,
    /// Build Job pods.
    Build,
    /// Finalize Job pods.
    Finalize,
    /// Garbage-collection Job pods.
    Gc,
    /// Remap Job pods (a rebalance version's manifest).
    Remap,
    /// Split Job pods (a rebalance that splits one list).
    Split,
    /// The operator's pods: only the lines about this index (--all-lines for every line).
    Operator,
}

impl LogRole {
    fn role(self) -> Option<Role> {
        match self {
            LogRole::Shard => Some(Role::Shard),
            LogRole::Router => Some(Role::Router),
            LogRole::Train => Some(Role::Train),
            LogRole::Build => Some(Role::Build),
            LogRole::Finalize => Some(Role::Finalize),
            LogRole::Gc => Some(Role::Gc),
            LogRole::Remap => Some(Role::Remap),
            LogRole::Split => Some(Role::Split),
            LogRole::Operator => None,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VectorIndex.
    pub name: String,
    /// Whose logs. Default: every pod of the index (shards, routers and Job pods).
    #[arg(long, value_enum)]
    pub role: Option<LogRole>,
    /// Lines from the end of each container's log; -1 for all.
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    pub tail: i64,
    /// Only this container (default: every container of each pod).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// The previous (crashed) instance of each container.
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Namespace of the operator's pods (--role operator).
    #[arg(long, default_value = "quiver-system", value_name = "NAMESPACE")]
    pub operator_namespace: String,
    /// Label selector of the operator's pods (--role operator).
    #[arg(
        long,
        default_value = "app.kubernetes.io/name=quiver-operator",
        value_name = "SELECTOR"
    )]
    pub operator_selector: String,
    /// With --role operator: every line, not only those about this index.
    #[arg(long)]
    pub all_lines: bool,
    /// Keep streaming new lines of every container (prefixed `[pod/container]`) until they
    /// all end or Ctrl-C; --tail lines of each come first.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// (namespace, label selector) of the pods whose logs to read.
pub fn pods_of(index: &str, namespace: &str, args: &Args) -> (String, String) {
    match args.role {
        Some(LogRole::Operator) => (
            args.operator_namespace.clone(),
            args.operator_selector.clone(),
        ),
        Some(r) => (
            namespace.to_string(),
            labels::role_selector(index, r.role().unwrap_or(Role::Shard)),
        ),
        None => (namespace.to_string(), format!("{}={index}", labels::INDEX)),
    }
}

/// Whether an operator log line is about `index`: its `index` field, as text
/// (`index=docs`, `index="docs"`) or JSON (`"index":"docs"`).
pub fn mentions_index(line: &str, index: &str) -> bool {
    [
        format!("index={index}"),
        format!("index=\"{index}\""),
        format!("\"index\":\"{index}\""),
        format!("\"index\": \"{index}\""),
    ]
    .iter()
    .any(|p| {
        line.match_indices(p.as_str()).any(|(at, _)| {
            // The value ends there: not a prefix of a longer name.
            !line[at + p.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
        })
    })
}

/// The last `n` lines of `text` (all when `n` < 0).
pub fn tail(text: &str, n: i64) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let keep = if n < 0 {
        lines.len()
    } else {
        (n as usize).min(lines.len())
    };
    let mut out = lines[lines.len() - keep..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

pub async fn run(g: &Global, args: &Args) -> anyhow::Result<()> {
    let kube = connect(g).await?;
    if args.role != Some(LogRole::Operator) {
        // Says clearly when the index itself does not exist.
        kube.index(&args.name).await?;
    }
    let (ns, selector) = pods_of(&args.name, &kube.namespace, args);
    let pods: Api<Pod> = Api::namespaced(kube.client.clone(), &ns);
    let mut list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .with_context(|| format!("listing pods {selector} in {ns}"))?
        .items;
    if list.is_empty() {
        return Err(anyhow!(
            "no pods with labels {selector} in namespace {ns}{}",
            if args.role == Some(LogRole::Operator) {
                " (the operator may run elsewhere: --operator-namespace, --operator-selector)"
            } else {
                ""
            }
        ));
    }
    list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let filter = args.role == Some(LogRole::Operator) && !args.all_lines;
    let mut printed = 0usize;
    let mut streams = Vec::new();
    for pod in &list {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let containers: Vec<String> = match &args.container {
            Some(c) => vec![c.clone()],
            None => pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
                .collect(),
        };
        for c in containers {
            let lp = LogParams {
                container: Some(c.clone()),
                previous: args.previous,
                follow: args.follow,
                // Operator lines are filtered first, then tailed (followed: tailed first).
                tail_lines: ((!filter || args.follow) && args.tail >= 0).then_some(args.tail),
                ..LogParams::default()
            };
            if args.follow {
                streams.push(follow(
                    pods.clone(),
                    pod_name.clone(),
                    c,
                    lp,
                    filter.then(|| args.name.clone()),
                ));
                continue;
            }
            let text = pods
                .logs(&pod_name, &lp)
                .await
                .map_err(|e| anyhow!("log of pod {pod_name} ({c}): {e}"))?;
            let text = if filter {
                let about: String = text
                    .lines()
                    .filter(|l| mentions_index(l, &args.name))
                    .map(|l| format!("{l}\n"))
                    .collect();
                tail(&about, args.tail)
            } else {
                tail(&text, args.tail)
            };
            println!("==> {ns}/{pod_name} [{c}] <==");
            print!("{text}");
            printed += text.lines().count();
        }
    }
    if args.follow {
        // Every stream to its end; the first that fails is the error.
        for r in futures::future::join_all(streams).await {
            r?;
        }
        return Ok(());
    }
    if printed == 0 {
        eprintln!("(no log lines)");
    }
    Ok(())
}

/// Streams one container's log line by line, prefixed; with `about`, only the operator's
/// lines about that index.
async fn follow(
    pods: Api<Pod>,
    pod: String,
    container: String,
    lp: LogParams,
    about: Option<String>,
) -> anyhow::Result<()> {
    use futures::{AsyncBufReadExt, TryStreamExt};
    use std::io::Write;
    let stream = pods
        .log_stream(&pod, &lp)
        .await
        .map_err(|e| anyhow!("log of pod {pod} ({container}): {e}"))?;
    let mut lines = stream.lines();
    while let Some(line) = lines
        .try_next()
        .await
        .with_context(|| format!("log of pod {pod} ({container})"))?
    {
        if about.as_deref().is_some_and(|i| !mentions_index(&line, i)) {
            continue;
        }
        let mut out = std::io::stdout().lock();
        // A closed stdout (piped into head) ends the command quietly.
        if writeln!(out, "[{pod}/{container}] {line}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(role: Option<LogRole>) -> Args {
        Args {
            name: "docs".into(),
            role,
            tail: 100,
            container: None,
            previous: false,
            operator_namespace: "quiver-system".into(),
            operator_selector: "app.kubernetes.io/name=quiver-operator".into(),
            all_lines: false,
            follow: false,
        }
    }

    #[test]
    fn roles_select_the_index_pods_or_the_operator() {
        assert_eq!(
            pods_of("docs", "search", &args(Some(LogRole::Shard))),
            (
                "search".into(),
                "quiver.dev/index=docs,quiver.dev/role=shard".into()
            )
        );
        assert_eq!(
            pods_of("docs", "search", &args(Some(LogRole::Build))).1,
            "quiver.dev/index=docs,quiver.dev/role=build"
        );
        assert_eq!(
            pods_of("docs", "search", &args(None)),
            ("search".into(), "quiver.dev/index=docs".into())
        );
        assert_eq!(
            pods_of("docs", "search", &args(Some(LogRole::Operator))),
            (
                "quiver-system".into(),
                "app.kubernetes.io/name=quiver-operator".into()
            )
        );
    }

    #[test]
    fn operator_lines_are_kept_by_their_index_field() {
        assert!(mentions_index(
            "2026-12-06T10:00:00Z  INFO reconcile{index=docs namespace=search}: applied",
            "docs"
        ));
        assert!(mentions_index(
            r#"{"level":"INFO","index":"docs","msg":"x"}"#,
            "docs"
        ));
        assert!(mentions_index(r#"{"fields":{"index": "docs"}}"#, "docs"));
        assert!(!mentions_index("reconcile{index=docs-2}: applied", "docs"));
        assert!(!mentions_index("reconcile{index=other}: applied", "docs"));
    }

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc", 5), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc", -1), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc", 0), "");
        assert_eq!(tail("", 3), "");
    }
}
