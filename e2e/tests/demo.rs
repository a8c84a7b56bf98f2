//! `quiver-local demo`, as a user runs it: the local cluster with the operator as a pod (the
//! manifests of operator/deploy/), examples/quickstart.yaml applied, Ready, queried through its
//! Service. This suite tests quiver-local itself, so it always runs the in-process cluster
//! (QUIVER_E2E_KUBECONFIG does not apply). Needs quiver-operator and index-node built in this
//! target directory (`cargo test --workspace` builds them).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use quiver_e2e::testing::workspace_bin;

#[test]
fn demo_takes_the_quickstart_to_ready_and_measures_it() {
    let dir = std::env::temp_dir().join(format!("quiver-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let operator = workspace_bin("quiver-operator").unwrap();
    let node = workspace_bin("index-node").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quiver-local"))
        .arg("--state-dir")
        .arg(&dir)
        .arg("demo")
        .arg(format!("--image=quiver-operator={}", operator.display()))
        .arg(format!("--image=index-node={}", node.display()))
        .args([
            "--n",
            "20000",
            "--queries",
            "2000",
            "--timeout-secs",
            "240",
            "--exit",
        ])
        .env_remove("CARGO")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for want in [
        "operator running (quiver-system/quiver-operator)",
        "applied VectorIndex default/docs",
        " Training\n",
        " Building\n",
        " Warming\n",
        " Gating\n",
        " Active\n",
        "Ready: apply → Ready ",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}");
    }
    // The measurement line: recall through the Service at the quickstart's minRecall, no error.
    let line = stdout
        .lines()
        .find(|l| l.contains("queries through Service docs"))
        .unwrap_or_else(|| panic!("no measurement in:\n{stdout}"));
    let recall: f64 = line
        .split("recall@10 ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no recall in {line:?}"));
    assert!(recall >= 0.9, "{line}");
    assert!(
        line.contains("2000 queries") && line.ends_with(", 0 failed"),
        "{line}"
    );
    // The operator ran as a pod of the kubelet, from the binary its image maps to.
    let pods = std::fs::read_dir(dir.join("pods").join("quiver-system"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        pods >= 1,
        "no operator pod directory under {}",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
