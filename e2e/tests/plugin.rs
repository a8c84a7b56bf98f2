//! `kubectl quiver` end to end: the built `kubectl-quiver` binary against the local cluster
//! with the real operator and index-node binaries. One index is taken through every on-call
//! command: wait, status, versions, query, retrain, rollback (pin), unpin, logs, and the
//! errors (unknown index, bad vector, a version that is not there, usage).
//!
//! Runs on the in-process stand-in, or against another cluster with QUIVER_E2E_KUBECONFIG.
//! Needs the binaries built in this target directory (`cargo test --workspace` builds them).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use quiver_api::VectorIndex;
use quiver_e2e::testing::{TestCluster, workspace_bin};
use serde_json::{Value, json};

mod opsupport;
use opsupport::*;

/// What a run of the plugin gave.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "kubectl-quiver failed: {self:#?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

struct Plugin {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Plugin {
    /// `kubectl quiver ARGS` with the test's context; nothing from the environment.
    async fn run(&self, args: &[&str]) -> Out {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--context", "test"])
            .env_remove("KUBECONFIG");
        self.output(cmd, args).await
    }

    async fn output(&self, mut cmd: tokio::process::Command, args: &[&str]) -> Out {
        cmd.env_remove("QUIVER_LOCAL_STATE_DIR");
        let t0 = Instant::now();
        let out = tokio::time::timeout(Duration::from_secs(400), cmd.kill_on_drop(true).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl-quiver {args:?} did not end"))
            .unwrap();
        let o = Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "$ kubectl quiver {} → {} ({:.1}s)\n{}{}",
            args.join(" "),
            o.code,
            t0.elapsed().as_secs_f64(),
            o.stdout,
            o.stderr
        );
        o
    }
}

/// A kubeconfig with two contexts on the test cluster: `elsewhere` (current, another
/// namespace) and `test` (the test's namespace), so that `--context` and `-n` matter.
fn plugin_kubeconfig(env: &TestCluster) -> PathBuf {
    let base = kube::config::Kubeconfig::read_from(env.kubeconfig()).unwrap();
    let mut v = serde_json::to_value(&base).unwrap();
    let ctx = v["contexts"][0]["context"].clone();
    let mut test = ctx.clone();
    test["namespace"] = json!(env.ns);
    let mut other = ctx;
    other["namespace"] = json!("elsewhere");
    v["contexts"] = json!([{"name": "elsewhere", "context": other},
                           {"name": "test", "context": test}]);
    v["current-context"] = json!("elsewhere");
    let path = env.dir.join("plugin.kubeconfig");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    path
}

fn line_of<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_takes_an_index_through_every_on_call_command() {
    tokio::time::timeout(Duration::from_secs(900), async {
        let (env, op, storage, _) = start().await;
        let kq = Plugin {
            bin: workspace_bin("kubectl-quiver").unwrap(),
            kubeconfig: plugin_kubeconfig(&env),
        };
        let api: Api<VectorIndex> = env.api();
        let ns = env.ns.clone();
        let state_dir = env.dir.display().to_string();
        let get = || {
            let api = api.clone();
            async move { api.get("docs").await.unwrap() }
        };

        // Usage and a missing index, before there is any.
        let help = kq.run(&["--help"]).await.ok();
        for c in [
            "status", "versions", "retrain", "rollback", "pin", "unpin", "query", "logs", "wait",
        ] {
            assert!(
                help.stdout.contains(&format!("kubectl quiver {c} ")),
                "{c}: {}",
                help.stdout
            );
        }
        let pin_help = kq.run(&["pin", "--help"]).await.ok();
        assert!(
            pin_help.stdout.contains("the Git copy wins"),
            "{}",
            pin_help.stdout
        );
        assert_eq!(kq.run(&["bogus"]).await.code, 2);
        let missing = kq.run(&["status", "nope"]).await;
        assert_eq!(missing.code, 1);
        assert!(
            missing.stderr.contains(&format!(
                "vectorindex \"nope\" not found in namespace \"{ns}\""
            )),
            "{missing:?}"
        );
        assert_eq!(kq.run(&["wait", "nope", "--timeout", "5s"]).await.code, 1);

        api.create(
            &PostParams::default(),
            &index(
                "docs",
                &storage,
                json!({"synthetic": {"count": 8000, "seed": 5}}),
            ),
        )
        .await
        .unwrap();
        let out = kq
            .run(&["wait", "docs", "--for=Ready", "--timeout", "300s"])
            .await
            .ok();
        assert!(out.stdout.contains("condition met"), "{out:?}");
        let v1 = get().await.status.unwrap().active_version.unwrap();

        // status: the list, by --context, and by KUBECONFIG with -n.
        let out = kq.run(&["status"]).await.ok();
        let row = line_of(&out.stdout, "docs ");
        assert!(
            row.contains("Ready") && row.contains(&v1) && row.contains("4/4"),
            "{row}"
        );
        let mut cmd = tokio::process::Command::new(&kq.bin);
        cmd.args(["status", "-o", "wide", "-n", &ns])
            .env("KUBECONFIG", &kq.kubeconfig);
        let out = kq
            .output(cmd, &["status", "-o", "wide", "-n", &ns])
            .await
            .ok();
        assert!(line_of(&out.stdout, "NAME ").contains("MESSAGE"), "{out:?}");
        assert!(out.stdout.contains(&v1), "{out:?}");
        let mut cmd = tokio::process::Command::new(&kq.bin);
        cmd.arg("status").env("KUBECONFIG", &kq.kubeconfig);
        let out = kq.output(cmd, &["status"]).await.ok();
        assert!(
            out.stderr
                .contains("No VectorIndex found in elsewhere namespace"),
            "{out:?}"
        );

        // status NAME, as text and JSON.
        let out = kq.run(&["status", "docs"]).await.ok();
        assert!(
            out.stdout
                .contains(&format!("Active:    {v1} (gate recall")),
            "{out:?}"
        );
        assert!(
            out.stdout
                .contains("Nothing in progress; nothing needs attention."),
            "{out:?}"
        );
        let s = kq.run(&["status", "docs", "-o", "json"]).await.ok().json();
        assert_eq!(s["name"], "docs");
        assert_eq!(s["namespace"], ns.as_str());
        assert_eq!(s["phase"], "Ready");
        assert_eq!(s["activeVersion"], v1.as_str());
        assert_eq!(s["shards"]["desired"], 4);
        assert_eq!(s["versions"][0]["name"], v1.as_str());
        assert_eq!(s["versions"][0]["phase"], "Active");
        assert_eq!(s["versions"][0]["trigger"], "create");
        assert!(s["versions"][0]["recall"].as_f64().unwrap() >= 0.8, "{s}");
        assert_eq!(s["inProgress"], json!([]));
        assert_eq!(s["attention"], json!([]));

        // versions
        let out = kq.run(&["versions", "docs"]).await.ok();
        let row = line_of(&out.stdout, &v1);
        assert!(
            row.contains("Active") && row.contains("create") && row.contains("active"),
            "{row}"
        );
        let out = kq.run(&["versions", "docs", "-o", "yaml"]).await.ok();
        assert!(
            out.stdout.contains(&format!("activeVersion: {v1}")),
            "{out:?}"
        );

        // query through the Service: the proxy's address, found by the plugin or given.
        let a = kq
            .run(&[
                "query",
                "docs",
                "--random",
                "--k",
                "5",
                "-o",
                "json",
                "--local-state-dir",
                &state_dir,
            ])
            .await
            .ok()
            .json();
        assert_eq!(a["ids"].as_array().unwrap().len(), 5, "{a}");
        assert_eq!(a["version"], v1.as_str());
        let addr = service_address(&env, "docs").await.to_string();
        let vector = (0..16)
            .map(|i| format!("{}", i as f32 / 10.0))
            .collect::<Vec<_>>()
            .join(",");
        let out = kq
            .run(&["query", "docs", "--vector", &vector, "--address", &addr])
            .await
            .ok();
        assert!(
            line_of(&out.stdout, "RANK ").contains("DISTANCE"),
            "{out:?}"
        );
        assert!(out.stdout.contains(&format!("version {v1}: ")), "{out:?}");
        let bad = kq
            .run(&["query", "docs", "--vector", "1,2,3", "--address", &addr])
            .await;
        assert_eq!(bad.code, 1);
        assert!(
            bad.stderr
                .contains("3 components but the index has dimension 16"),
            "{bad:?}"
        );
        let bad = kq.run(&["query", "docs", "--vector", "1,NaN"]).await;
        assert_eq!(bad.code, 1);
        assert!(bad.stderr.contains("component 2 is NaN"), "{bad:?}");

        // logs --follow, started before the retrain: the routers' lines about switching to
        // the new version arrive while it runs (through pods/log, follow=true).
        let logs_ok = env
            .pod_logs_reachable(&format!("{}=docs", quiver_api::keys::labels::INDEX))
            .await;
        let mut follow = tokio::process::Command::new(&kq.bin);
        follow
            .args(["logs", "docs", "--role", "router", "-f", "--tail", "0"])
            .arg("--kubeconfig")
            .arg(&kq.kubeconfig)
            .args(["--context", "test"])
            .env_remove("KUBECONFIG")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let follow = logs_ok.then(|| {
            let mut follow = follow.spawn().unwrap();
            use tokio::io::{AsyncBufReadExt, BufReader};
            let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
            let followed = tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Ok(Some(l)) = lines.next_line().await {
                    let done = l.contains("switching active version");
                    seen.push(l);
                    if done {
                        break;
                    }
                }
                // The pipe stays open: a closed stdout would end the plugin.
                (seen, lines)
            });
            (follow, followed)
        });

        // retrain: a second version, trigger retrain:<token>, active once wait says Ready.
        let out = kq
            .run(&["retrain", "docs", "--reason", "e2e check"])
            .await
            .ok();
        let token = out
            .stdout
            .trim()
            .strip_prefix("quiver.dev/retrain=")
            .unwrap_or_else(|| panic!("{out:?}"))
            .to_string();
        assert!(token.ends_with("-e2e-check"), "{token}");
        // Ready waits for the retrain to finish (its token acted on, v2 active).
        kq.run(&["wait", "docs", "--for=Ready", "--timeout", "300s"])
            .await
            .ok();
        let st = get().await.status.unwrap();
        let v2 = st.active_version.clone().unwrap();
        assert_ne!(v2, v1);
        if let Some((mut follow, followed)) = follow {
            let (seen, _pipe) = tokio::time::timeout(Duration::from_secs(30), followed)
                .await
                .unwrap_or_else(|_| panic!("logs -f showed no switch to {v2}"))
                .unwrap();
            let last = seen.last().cloned().unwrap_or_default();
            assert!(last.starts_with("[docs-router-"), "{seen:?}");
            assert!(last.contains(&v2), "{seen:?}");
            assert!(follow.try_wait().unwrap().is_none(), "logs -f ended by itself");
        }
        assert_eq!(st.versions.len(), 2, "{:?}", st.versions);
        assert_eq!(
            st.version(&v2).unwrap().trigger.as_deref(),
            Some(format!("retrain:{token}").as_str())
        );
        let out = kq.run(&["versions", "docs"]).await.ok();
        assert!(
            line_of(&out.stdout, &v2).contains(&format!("retrain:{token}")),
            "{out:?}"
        );

        // rollback: dry run first, then pinned to v1, which serves again.
        let line = format!("spec: {{pinnedVersion: {v1}}}");
        let out = kq.run(&["rollback", "docs", "--dry-run"]).await.ok();
        assert!(out.stdout.contains(&line), "{out:?}");
        assert_eq!(get().await.spec.pinned_version, None);
        let out = kq.run(&["rollback", "docs"]).await.ok();
        assert!(
            out.stdout.contains(&format!(
                "GitOps: commit this line to the manifest in Git instead: {line}"
            )),
            "{out:?}"
        );
        assert_eq!(
            get().await.spec.pinned_version.as_deref(),
            Some(v1.as_str())
        );
        kq.run(&["wait", "docs", "--for=Ready", "--timeout", "240s"])
            .await
            .ok();
        let vi = get().await;
        assert_eq!(
            vi.status.as_ref().unwrap().active_version.as_deref(),
            Some(v1.as_str())
        );
        let s = kq.run(&["status", "docs", "-o", "json"]).await.ok().json();
        assert_eq!(s["pinnedVersion"], v1.as_str());
        assert_eq!(s["activeVersion"], v1.as_str());
        let a = kq
            .run(&[
                "query",
                "docs",
                "--random",
                "-o",
                "json",
                "--local-state-dir",
                &state_dir,
            ])
            .await
            .ok()
            .json();
        assert_eq!(a["version"], v1.as_str());

        // A pin to a version that is not there is refused and changes nothing.
        let bad = kq.run(&["pin", "docs", "v99-deadbeef"]).await;
        assert_eq!(bad.code, 1);
        assert!(
            bad.stderr.contains("v99-deadbeef is not a version of docs"),
            "{bad:?}"
        );
        assert_eq!(
            get().await.spec.pinned_version.as_deref(),
            Some(v1.as_str())
        );

        // unpin: back to v2.
        let out = kq.run(&["unpin", "docs"]).await.ok();
        assert!(
            out.stdout.contains("spec: {pinnedVersion: null}"),
            "{out:?}"
        );
        assert_eq!(get().await.spec.pinned_version, None);
        let active_v2 = format!("--for=active={v2}");
        kq.run(&["wait", "docs", &active_v2, "--timeout", "240s"])
            .await
            .ok();
        kq.run(&["wait", "docs", "--for=Ready", "--timeout", "240s"])
            .await
            .ok();
        // A wait that cannot be met ends at its timeout with exit 1 and where the index is.
        let never = kq
            .run(&["wait", "docs", "--for=active=v99-deadbeef", "--timeout", "2s"])
            .await;
        assert_eq!(never.code, 1, "{never:?}");
        assert!(
            never.stderr.contains(&format!(
                "timed out after 2s waiting for docs to be v99-deadbeef active: phase Ready, active {v2}"
            )),
            "{never:?}"
        );

        // logs: the shard pods' last lines, through pods/log.
        if logs_ok {
            let out = kq
                .run(&["logs", "docs", "--role", "shard", "--tail", "5"])
                .await
                .ok();
            let header = format!("==> {ns}/docs-shard-");
            assert!(
                out.stdout.lines().any(|l| l.starts_with(&header)),
                "{out:?}"
            );
            let lines: Vec<&str> = out
                .stdout
                .lines()
                .filter(|l| !l.starts_with("==> ") && !l.is_empty())
                .collect();
            // Two shards of two replicas, at most five lines each.
            assert!(!lines.is_empty() && lines.len() <= 4 * 5, "{out:?}");
        }
        let bad = kq
            .run(&["logs", "docs", "--role", "router", "-c", "nope"])
            .await;
        assert_eq!(bad.code, 1);
        assert!(
            bad.stderr.contains("container nope is not valid for pod docs-router-"),
            "{bad:?}"
        );
        let none = kq.run(&["logs", "nope", "--role", "shard"]).await;
        assert_eq!(none.code, 1);
        assert!(
            none.stderr.contains("vectorindex \"nope\" not found"),
            "{none:?}"
        );

        drop(op);
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}
