//! `kubectl quiver`: the on-call plugin for Quiver `VectorIndex` resources. Put this binary
//! (`kubectl-quiver`) on PATH and kubectl runs it for `kubectl quiver ...`.
//!
//! One module per command; each keeps what it computes and prints (tables, tokens, the
//! rollback target, the GitOps line, vector parsing) in pure functions, unit-tested, apart from
//! its API and gRPC calls.

mod connect;
mod logs;
mod output;
mod pin;
mod query;
mod rebalance;
mod retrain;
mod status;
mod versions;
mod wait;

use std::process::ExitCode;

use clap::{FromArgMatches, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  kubectl quiver status                          # every index: phase, active version, shards, age
  kubectl quiver status docs                     # one index: versions, what is in progress, why it is stuck
  kubectl quiver status -A -o wide               # every namespace, with what to look at
  kubectl quiver versions docs -o json           # the version table
  kubectl quiver retrain docs --reason 'new embeddings'
  kubectl quiver rollback docs                   # pin the previous version that passed its gate
  kubectl quiver rollback docs --to v2-7f3a9c2e --dry-run
  kubectl quiver pin docs v3-7f3a9c2e
  kubectl quiver unpin docs
  kubectl quiver query docs --random --k 5
  kubectl quiver query docs --vector 0.1,0.2,0.3,0.4 --address 127.0.0.1:7000
  kubectl quiver logs docs --role shard --tail 20
  kubectl quiver logs docs --role operator
  kubectl quiver wait docs --for=Ready --timeout 300s
  kubectl quiver rebalance docs --dry-run        # which shard is hot and why; what moving lists would do

GitOps: rollback, pin and unpin write spec.pinnedVersion. Where Argo CD or Flux applies the
index from Git, the Git copy wins at the next sync: each of them prints the one-line patch to
commit instead (e.g. `spec: {pinnedVersion: v3-7f3a9c2e}`), and --dry-run writes nothing.

query reaches the index's router Service by its ClusterIP (inside the cluster, or the local
cluster's proxy); from outside a real cluster: kubectl port-forward svc/docs 7000:7000, then
--address 127.0.0.1:7000.

Exit codes: 0 done, 1 error (not found, refused, unreachable, timed out), 2 usage.";

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-quiver",
    bin_name = "kubectl quiver",
    version,
    about = "Quiver on-call: status, versions, retrain, rollback and pinning, queries, logs and waits for VectorIndex resources",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(flatten)]
    global: connect::Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every index (phase, active version, shards ready, age), or one index in detail: its
    /// versions, what is in progress and why it is stuck.
    #[command(after_help = "Examples:
  kubectl quiver status
  kubectl quiver status -A -o wide
  kubectl quiver status docs
  kubectl quiver status docs -o json")]
    Status(status::Args),

    /// The versions of an index: phase, gate recall, vectors, trigger, age, reason.
    #[command(after_help = "Examples:
  kubectl quiver versions docs
  kubectl quiver versions docs -o wide")]
    Versions(versions::Args),

    /// Ask for one retrain: sets the annotation quiver.dev/retrain to a fresh token and
    /// prints it.
    #[command(after_help = "Examples:
  kubectl quiver retrain docs
  kubectl quiver retrain docs --reason JIRA-123 && kubectl quiver wait docs --for=Ready")]
    Retrain(retrain::Args),

    /// Serve an older version again: pins the newest retained version older than the active
    /// one that passed its gate (or --to VERSION).
    #[command(after_help = "Examples:
  kubectl quiver rollback docs && kubectl quiver wait docs --for=Ready
  kubectl quiver rollback docs --to v2-7f3a9c2e --dry-run")]
    Rollback(pin::RollbackArgs),

    /// Serve exactly VERSION (spec.pinnedVersion); no new version is made while pinned.
    #[command(after_help = "Examples:
  kubectl quiver pin docs v3-7f3a9c2e")]
    Pin(pin::PinArgs),

    /// Clear spec.pinnedVersion: back to the newest version that passed its gate.
    #[command(after_help = "Examples:
  kubectl quiver unpin docs")]
    Unpin(pin::UnpinArgs),

    /// One search through the index's router Service (gRPC quiver.v1.Query/Search).
    #[command(after_help = "Examples:
  kubectl quiver query docs --random --k 5
  kubectl quiver query docs --vector 0.1,-0.2,0.3,0.4 --nprobe 32 -o json
  kubectl port-forward svc/docs 7000:7000 &
  kubectl quiver query docs --random --address 127.0.0.1:7000

The address: --address HOST:PORT, else the Service's ClusterIP, which this machine reaches
inside the cluster or on the local cluster (whose proxy addresses come from services.json in
--local-state-dir). On a real cluster from outside, port-forward the Service as above.")]
    Query(query::Args),

    /// Logs of an index's pods of one role, or the operator's lines about the index.
    #[command(after_help = "Examples:
  kubectl quiver logs docs --role shard --tail 20
  kubectl quiver logs docs --role train
  kubectl quiver logs docs --role operator --operator-namespace quiver-system
  kubectl quiver logs docs --role router -f --tail 0")]
    Logs(logs::Args),

    /// Wait until the index is Ready (or another condition); exit 1 with the last condition
    /// messages on timeout.
    Wait(wait::Args),

    /// Which shard is hot and why, and what moving whole lists between shards would do (the
    /// operator's measurement and plan in status.load); without --dry-run, ask the operator to
    /// apply that plan (a quiver.dev/rebalance token): a new version that reuses the active
    /// one's files, swapped in like any other.
    #[command(after_help = "Examples:
  kubectl quiver rebalance docs --dry-run
  kubectl quiver rebalance docs --dry-run -o json
  kubectl quiver rebalance docs && kubectl quiver wait docs --for=Ready")]
    Rebalance(rebalance::Args),
}

/// The command line: the derive's, with the GitOps note after the examples of rollback, pin
/// and unpin, and wait's --for values.
fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    for name in ["rollback", "pin", "unpin"] {
        cmd = cmd.mut_subcommand(name, |c| {
            let examples = c
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            c.after_help(format!("{examples}\n\n{}", pin::GITOPS_HELP))
        });
    }
    cmd = cmd.mut_subcommand("wait", |c| {
        c.after_help(format!(
            "{}\n\nExamples:\n  kubectl quiver wait docs --for=Ready --timeout 10m\n  kubectl quiver wait docs --for=active=v2-7f3a9c2e\n  kubectl quiver wait docs --for=condition=Degraded=False",
            wait::FOR_HELP
        ))
    });
    cmd
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match &cli.cmd {
        Cmd::Status(a) => status::run(g, a).await,
        Cmd::Versions(a) => versions::run(g, a).await,
        Cmd::Retrain(a) => retrain::run(g, a).await,
        Cmd::Rollback(a) => pin::rollback(g, a).await,
        Cmd::Pin(a) => pin::pin(g, a).await,
        Cmd::Unpin(a) => pin::unpin(g, a).await,
        Cmd::Query(a) => query::run(g, a).await,
        Cmd::Logs(a) => logs::run(g, a).await,
        Cmd::Wait(a) => wait::run(g, a).await,
        Cmd::Rebalance(a) => rebalance::run(g, a).await,
    }
}

fn main() -> ExitCode {
    // Usage errors exit 2 (clap), --help and --version 0.
    let matches = command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn help(args: &[&str]) -> String {
        let e = command()
            .try_get_matches_from(std::iter::once("kubectl-quiver").chain(args.iter().copied()))
            .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        e.render().to_string()
    }

    #[test]
    fn the_cli_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn help_lists_every_command_with_an_example() {
        let h = help(&["--help"]);
        for c in [
            "status", "versions", "retrain", "rollback", "pin", "unpin", "query", "logs", "wait",
        ] {
            assert!(h.contains(&format!("\n  {c} ")), "{c} listed: {h}");
            assert!(
                h.contains(&format!("kubectl quiver {c} ")),
                "{c} example: {h}"
            );
        }
        assert!(h.contains("the Git copy wins"), "{h}");
        assert!(h.contains("--namespace"), "{h}");
    }

    #[test]
    fn pin_commands_explain_gitops() {
        for c in ["rollback", "pin", "unpin"] {
            let h = help(&[c, "--help"]);
            assert!(h.contains("the Git copy wins"), "{c}: {h}");
            assert!(h.contains("spec: {pinnedVersion: v3-7f3a9c2e}"), "{c}: {h}");
            assert!(h.contains(&format!("kubectl quiver {c} docs")), "{c}: {h}");
        }
        let h = help(&["query", "--help"]);
        assert!(h.contains("kubectl port-forward svc/docs 7000:7000"), "{h}");
        assert!(h.contains("--address"), "{h}");
        let h = help(&["wait", "--help"]);
        assert!(h.contains("active=VERSION"), "{h}");
    }

    #[test]
    fn kubectl_flags_go_before_or_after_the_command() {
        let parse = |args: &[&str]| {
            let m = command()
                .try_get_matches_from(std::iter::once("kubectl-quiver").chain(args.iter().copied()))
                .unwrap();
            Cli::from_arg_matches(&m).unwrap()
        };
        let cli = parse(&["-n", "search", "status", "docs", "-o", "json"]);
        assert_eq!(cli.global.namespace.as_deref(), Some("search"));
        let Cmd::Status(s) = &cli.cmd else { panic!() };
        assert_eq!(s.out.output, Some(output::Format::Json));
        let cli = parse(&["versions", "docs", "--context", "prod", "--namespace", "x"]);
        assert_eq!(cli.global.context.as_deref(), Some("prod"));
        assert_eq!(cli.global.namespace.as_deref(), Some("x"));
        let cli = parse(&["query", "docs", "--vector", "-0.5,1", "--k", "3"]);
        let Cmd::Query(q) = &cli.cmd else { panic!() };
        assert_eq!(q.vector.as_deref(), Some("-0.5,1"));
        let cli = parse(&["logs", "docs", "--tail", "-1", "--role", "operator"]);
        let Cmd::Logs(l) = &cli.cmd else { panic!() };
        assert_eq!(l.tail, -1);
    }

    #[test]
    fn usage_errors() {
        let err = |args: &[&str]| {
            command()
                .try_get_matches_from(std::iter::once("kubectl-quiver").chain(args.iter().copied()))
                .unwrap_err()
                .kind()
        };
        use clap::error::ErrorKind;
        assert_eq!(err(&["bogus"]), ErrorKind::InvalidSubcommand);
        assert_eq!(err(&["query", "docs"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            err(&["query", "docs", "--random", "--vector", "1"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(err(&["status", "-o", "table"]), ErrorKind::InvalidValue);
        assert_eq!(err(&["pin", "docs"]), ErrorKind::MissingRequiredArgument);
    }
}
