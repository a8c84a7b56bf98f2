//! The Helm chart (`charts/quiver`), rendered by a real Helm 4 binary: lint, the objects it
//! renders with the default and the production values (RBAC exactly the operator's verbs, a
//! hardened security context on every pod, leader election with two replicas, the optional
//! Prometheus and Grafana objects), its values schema refusing bad values with a clear message,
//! the built-in kinds validated offline by `kubernetes-validate`, and README.md's values table
//! in step with values.yaml.
//!
//! And the chart's life on a cluster: `helm install` (namespaced RBAC), the operator it installs
//! takes a VectorIndex to Ready, `helm upgrade` rolls the operator, `helm uninstall` removes it
//! and leaves the CRD and the index (Helm never deletes CRDs; the data stays).
//!
//! Helm comes from `.ci/install-helm.sh` (`.ci/.tools/bin/helm`; `QUIVER_HELM` overrides).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use quiver_api::VectorIndex;
use quiver_api::v1alpha1::IndexPhase;
use quiver_e2e::testing::{TestCluster, workspace_bin};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    root().join("charts/quiver")
}

fn helm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("QUIVER_HELM") {
        return PathBuf::from(p);
    }
    let p = root().join(".ci/.tools/bin/helm");
    assert!(
        p.exists(),
        "the chart tests need Helm 4: run `bash .ci/install-helm.sh` (installs {})",
        p.display()
    );
    p
}

/// Runs helm; (success, stdout, stderr).
fn helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` of the chart with extra arguments: every rendered object.
fn render(extra: &[&str]) -> Vec<Value> {
    let c = chart();
    let mut args = vec![
        "template",
        "q",
        c.to_str().unwrap(),
        "--namespace",
        "search",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = helm(&args);
    assert!(ok, "helm template {extra:?}: {err}");
    docs(&out)
}

fn docs(yaml: &str) -> Vec<Value> {
    let all: Vec<Value> = serde_saphyr::from_multiple(yaml).unwrap();
    all.into_iter().filter(Value::is_object).collect()
}

fn production() -> String {
    chart()
        .join("ci/production-values.yaml")
        .display()
        .to_string()
}

fn kinds(objs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = objs
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or("").to_string())
        .collect();
    k.sort();
    k
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objs.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected in {:?}", kinds(objs));
    found[0]
}

/// The rules of the ClusterRole in operator/deploy/operator.yaml: the operator suite runs the
/// operator on exactly these.
fn deploy_rules() -> Value {
    let text = std::fs::read_to_string(root().join("operator/deploy/operator.yaml")).unwrap();
    let role = docs(&text)
        .into_iter()
        .find(|o| o["kind"] == "ClusterRole")
        .unwrap();
    role["rules"].clone()
}

fn env_of(deploy: &Value, name: &str) -> Option<String> {
    deploy["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(String::from))
}

#[test]
fn the_chart_lints_with_the_default_and_the_production_values() {
    let c = chart();
    let c = c.to_str().unwrap();
    let (ok, out, err) = helm(&["lint", "--strict", c]);
    assert!(ok, "helm lint: {out}{err}");
    let p = production();
    let (ok, out, err) = helm(&["lint", "--strict", c, "-f", &p]);
    assert!(ok, "helm lint -f production: {out}{err}");
}

#[test]
fn rbac_is_exactly_the_operators_verbs_cluster_wide_or_namespaced() {
    let want = deploy_rules();
    let objs = render(&[]);
    assert_eq!(one(&objs, "ClusterRole")["rules"], want);
    let binding = one(&objs, "ClusterRoleBinding");
    assert_eq!(
        binding["subjects"][0]["name"],
        one(&objs, "ServiceAccount")["metadata"]["name"]
    );
    assert_eq!(binding["subjects"][0]["namespace"], "search");
    let d = one(&objs, "Deployment");
    assert_eq!(env_of(d, "QUIVER_WATCH_NAMESPACE").as_deref(), Some(""));

    // Namespaced: a Role and RoleBinding in the release namespace, and the operator watches
    // only that namespace. Nothing cluster-scoped but the CRD (not rendered by template).
    let objs = render(&["--set", "rbac.scope=namespace"]);
    let role = one(&objs, "Role");
    assert_eq!(role["rules"], want);
    assert_eq!(role["metadata"]["namespace"], "search");
    assert_eq!(one(&objs, "RoleBinding")["roleRef"]["kind"], "Role");
    assert!(
        !kinds(&objs).iter().any(|k| k.starts_with("Cluster")),
        "{:?}",
        kinds(&objs)
    );
    assert_eq!(
        env_of(one(&objs, "Deployment"), "QUIVER_WATCH_NAMESPACE").as_deref(),
        Some("search")
    );

    let objs = render(&["--set", "rbac.create=false"]);
    assert!(
        !kinds(&objs).iter().any(|k| k.contains("Role")),
        "{:?}",
        kinds(&objs)
    );
}

#[test]
fn every_pod_runs_non_root_read_only_without_privileges() {
    for extra in [vec![], vec!["-f".to_string(), production()]] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let objs = render(&extra);
        let pods: Vec<&Value> = objs
            .iter()
            .filter_map(|o| match o["kind"].as_str() {
                Some("Deployment" | "StatefulSet" | "DaemonSet" | "Job") => {
                    Some(&o["spec"]["template"]["spec"])
                }
                Some("Pod") => Some(&o["spec"]),
                _ => None,
            })
            .collect();
        assert!(!pods.is_empty(), "no pod rendered with {extra:?}");
        for pod in pods {
            let psc = &pod["securityContext"];
            assert_eq!(psc["runAsNonRoot"], true, "{extra:?}: {pod}");
            assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{extra:?}");
            for c in pod["containers"].as_array().unwrap() {
                let sc = &c["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
                assert_ne!(sc["privileged"], true, "{}", c["name"]);
                assert!(
                    sc["capabilities"]["drop"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|x| x == "ALL")),
                    "{}: capabilities not all dropped",
                    c["name"]
                );
            }
        }
    }
}

#[test]
fn defaults_run_two_replicas_with_leader_election_and_no_optional_objects() {
    let objs = render(&[]);
    let d = one(&objs, "Deployment");
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(env_of(d, "QUIVER_LEADER_ELECTION").as_deref(), Some("true"));
    assert_eq!(
        env_of(d, "QUIVER_LEASE_NAMESPACE").as_deref(),
        Some("search")
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/quiver-dev/quiver-operator:0.1.0"
    );
    assert_eq!(
        env_of(d, "QUIVER_NODE_IMAGE").as_deref(),
        Some("ghcr.io/quiver-dev/index-node:0.1.0")
    );
    assert_eq!(one(&objs, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
    let svc = one(&objs, "Service");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    assert_eq!(
        svc["spec"]["selector"],
        d["spec"]["selector"]["matchLabels"]
    );
    for absent in [
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "NetworkPolicy",
    ] {
        assert!(
            !kinds(&objs).iter().any(|k| k == absent),
            "{absent} rendered by default"
        );
    }
    // One replica without a lease is allowed; two are not.
    assert!(
        render(&[
            "--set",
            "replicaCount=1",
            "--set",
            "leaderElection.enabled=false"
        ])
        .iter()
        .all(|o| o["kind"] != "PodDisruptionBudget")
    );
    let c = chart();
    let (ok, _, err) = helm(&[
        "template",
        "q",
        c.to_str().unwrap(),
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(
        !ok && err.contains("replicaCount > 1 needs leaderElection.enabled"),
        "{err}"
    );
}

#[test]
fn prometheus_objects_follow_the_cluster_or_the_values_and_carry_the_tested_rules() {
    // Auto: rendered when the cluster serves monitoring.coreos.com/v1.
    let objs = render(&["--api-versions", "monitoring.coreos.com/v1"]);
    let sm = one(&objs, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(sm["spec"]["endpoints"][0]["honorLabels"], true);
    // The index pods, by the labels and port the operator gives them (operator/src/children.rs).
    let pm = one(&objs, "PodMonitor");
    assert_eq!(
        pm["spec"]["podMetricsEndpoints"][0]["port"],
        quiver_api::ports::METRICS_NAME
    );
    assert_eq!(pm["spec"]["namespaceSelector"]["any"], true);
    let want = quiver_api::keys::labels::for_role("x", quiver_api::keys::labels::Role::Shard);
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            want.get(k).map(String::as_str),
            v.as_str(),
            "PodMonitor selects {k}={v}"
        );
    }
    let rule = one(&objs, "PrometheusRule");
    let file: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart().join("alerts/quiver-rules.yaml")).unwrap(),
    )
    .unwrap();
    assert!(
        file["groups"].as_array().is_some_and(|g| !g.is_empty()),
        "no rule groups"
    );
    assert_eq!(
        rule["spec"]["groups"], file["groups"],
        "the PrometheusRule is the promtool-tested file"
    );
    // Forced off despite the CRDs; forced on without them.
    let objs = render(&[
        "--api-versions",
        "monitoring.coreos.com/v1",
        "--set",
        "metrics.serviceMonitor.enabled=false",
        "--set",
        "prometheusRule.enabled=false",
    ]);
    assert!(
        !kinds(&objs)
            .iter()
            .any(|k| k == "ServiceMonitor" || k == "PodMonitor" || k == "PrometheusRule")
    );
    let objs = render(&["--set", "metrics.serviceMonitor.enabled=true"]);
    assert_eq!(one(&objs, "ServiceMonitor")["kind"], "ServiceMonitor");

    let p = production();
    let objs = render(&["-f", &p]);
    let cm = one(&objs, "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dash: Value =
        serde_json::from_str(cm["data"]["quiver-index.json"].as_str().unwrap()).unwrap();
    assert!(
        dash["panels"].as_array().is_some_and(|p| !p.is_empty()),
        "dashboard without panels"
    );
    assert_eq!(
        one(&objs, "PodMonitor")["spec"]["namespaceSelector"]["matchNames"],
        json!(["search"])
    );
    let np = one(&objs, "NetworkPolicy");
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], "http");
    assert_eq!(one(&objs, "Role")["metadata"]["namespace"], "search");
}

#[test]
fn bad_values_fail_with_a_message_naming_the_value() {
    let c = chart();
    let c = c.to_str().unwrap();
    for (set, want) in [
        ("replicaCount=0", "/replicaCount"),
        ("rbac.scope=global", "/rbac/scope"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("logFormat=xml", "/logFormat"),
        ("metrics.port=70000", "/metrics/port"),
        ("replicas=3", "additional properties 'replicas' not allowed"),
        (
            "metrics.serviceMonitor.enabled=maybe",
            "/metrics/serviceMonitor/enabled",
        ),
    ] {
        let (ok, _, err) = helm(&["template", "q", c, "--set", set]);
        assert!(!ok, "--set {set} was accepted");
        assert!(err.contains(want), "--set {set}: {err}");
    }
}

#[test]
fn rendered_built_in_kinds_pass_offline_schema_validation() {
    let dir = std::env::temp_dir().join(format!("quiver-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = chart();
    let p = production();
    for (name, extra) in [("default", vec![]), ("production", vec!["-f", p.as_str()])] {
        let mut args = vec![
            "template",
            "q",
            c.to_str().unwrap(),
            "--namespace",
            "search",
        ];
        args.extend(extra);
        let (ok, out, err) = helm(&args);
        assert!(ok, "{err}");
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, out).unwrap();
        let v = Command::new("python3")
            .args([
                "-m",
                "kubernetes_validate",
                "--strict",
                "--quiet",
                "-k",
                "1.33.0",
            ])
            .arg(&file)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        assert!(
            !text.contains("No module named"),
            "needs kubernetes-validate: `pip install -r .ci/requirements.txt`: {text}"
        );
        assert!(v.status.success(), "{name} values: {text}");
        assert!(!text.contains("ERROR"), "{name} values: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The values table generated from values.yaml's `# --` comments: one row per documented key.
fn values_table(values: &str) -> Result<String, String> {
    let mut rows = vec![
        "| Key | Default | Description |".to_string(),
        "|---|---|---|".to_string(),
    ];
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut doc: Option<String> = None;
    // Keys under a documented map are described by it, not row by row.
    let mut documented_at: Option<usize> = None;
    for line in values.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(rest) = trimmed.strip_prefix("# --") {
            doc = Some(rest.trim().to_string());
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('#') {
            if let Some(d) = doc.as_mut() {
                d.push(' ');
                d.push_str(rest.trim());
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        if documented_at.is_some_and(|at| indent > at) {
            continue;
        }
        documented_at = None;
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).chain([key]).collect();
        let path = path.join(".");
        let value = value.trim();
        match doc.take() {
            Some(d) => {
                let default = if value.is_empty() {
                    "see values.yaml".to_string()
                } else {
                    format!("`{value}`")
                };
                rows.push(format!("| `{path}` | {default} | {d} |"));
                if value.is_empty() {
                    documented_at = Some(indent);
                }
            }
            None if value.is_empty() => stack.push((indent, key.to_string())),
            None => return Err(format!("values.yaml: `{path}` has no `# --` description")),
        }
    }
    Ok(rows.join("\n"))
}

#[test]
fn values_table_reads_paths_defaults_and_descriptions() {
    let t = values_table("# -- Replicas.\nreplicaCount: 2\nimage:\n  # -- Repo,\n  # continued.\n  repository: x\n# -- Limits.\nresources:\n  limits:\n    memory: 1Gi\n").unwrap();
    assert_eq!(
        t.lines().skip(2).collect::<Vec<_>>(),
        [
            "| `replicaCount` | `2` | Replicas. |",
            "| `image.repository` | `x` | Repo, continued. |",
            "| `resources` | see values.yaml | Limits. |",
        ]
    );
    assert_eq!(
        values_table("a:\n  b: 1\n").unwrap_err(),
        "values.yaml: `a.b` has no `# --` description"
    );
}

#[test]
fn the_readme_lists_every_value_as_values_yaml_describes_it() {
    let values = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let table = values_table(&values).unwrap();
    let readme_path = chart().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (begin, end) = ("<!-- values:begin -->\n", "\n<!-- values:end -->");
    let (Some(a), Some(b)) = (readme.find(begin), readme.find(end)) else {
        panic!("charts/quiver/README.md lacks the {begin:?} … {end:?} markers");
    };
    let have = &readme[a + begin.len()..b];
    if have != table {
        if std::env::var_os("QUIVER_BLESS").is_some() {
            let new = format!("{}{table}{}", &readme[..a + begin.len()], &readme[b..]);
            std::fs::write(&readme_path, new).unwrap();
        } else {
            panic!(
                "charts/quiver/README.md's values table is out of step with values.yaml: rerun this \
                 test with QUIVER_BLESS=1 to rewrite it. Expected:\n{table}"
            );
        }
    }
}

fn example_docs(path: &str) -> Vec<Value> {
    docs(&std::fs::read_to_string(root().join("examples").join(path)).unwrap())
}

/// `helm template` with `values` (a values object from a GitOps manifest) must pass the schema.
fn template_with_values(values: &Value, what: &str) {
    let file = std::env::temp_dir().join(format!(
        "quiver-gitops-values-{}-{what}.json",
        std::process::id()
    ));
    std::fs::write(&file, values.to_string()).unwrap();
    let c = chart();
    let (ok, _, err) = helm(&[
        "template",
        "q",
        c.to_str().unwrap(),
        "-f",
        file.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&file);
    assert!(ok, "{what}: the chart refuses its values: {err}");
}

/// A kustomization directory in the repository: its kustomization.yaml and every resource it
/// lists exist; returns the objects of those resources.
fn kustomization(dir: &str) -> Vec<Value> {
    let dir = root().join(dir.trim_start_matches("./"));
    let k = docs(
        &std::fs::read_to_string(dir.join("kustomization.yaml"))
            .unwrap_or_else(|e| panic!("{}: no kustomization.yaml: {e}", dir.display())),
    );
    let mut objs = Vec::new();
    for r in k[0]["resources"].as_array().unwrap() {
        let text = std::fs::read_to_string(dir.join(r.as_str().unwrap())).unwrap();
        objs.extend(docs(&text));
    }
    objs
}

#[test]
fn gitops_manifests_point_at_real_paths_and_values_the_chart_accepts() {
    // Argo CD: an Application for the chart (before the index: sync wave) and one for the index.
    let apps = example_docs("gitops/argocd/quiver.yaml");
    assert_eq!(apps.len(), 2);
    for app in &apps {
        assert_eq!(app["apiVersion"], "argoproj.io/v1alpha1");
        assert_eq!(app["kind"], "Application");
        let path = app["spec"]["source"]["path"].as_str().unwrap();
        assert!(
            root().join(path).is_dir(),
            "Argo CD path {path} is not in the repository"
        );
        assert!(app["spec"]["destination"]["namespace"].is_string());
        if let Some(v) = app["spec"]["source"]["helm"].get("valuesObject") {
            assert_eq!(path, "charts/quiver");
            template_with_values(v, "argocd");
        }
    }
    let index_app = apps
        .iter()
        .find(|a| a["spec"]["source"]["path"] == "examples/gitops/index")
        .unwrap();
    let objs = kustomization(index_app["spec"]["source"]["path"].as_str().unwrap());
    assert!(objs.iter().any(|o| o["kind"] == "VectorIndex"));

    // Flux: a GitRepository, the operator's Kustomization (a HelmRelease) and the index's,
    // which depends on it and health-checks the VectorIndex it applies.
    let flux = example_docs("gitops/flux/quiver.yaml");
    let ks: Vec<&Value> = flux
        .iter()
        .filter(|d| d["kind"] == "Kustomization")
        .collect();
    assert!(flux.iter().any(|d| d["kind"] == "GitRepository"));
    let names: Vec<&str> = ks
        .iter()
        .map(|k| k["metadata"]["name"].as_str().unwrap())
        .collect();
    for k in &ks {
        assert_eq!(k["apiVersion"], "kustomize.toolkit.fluxcd.io/v1");
        let objs = kustomization(k["spec"]["path"].as_str().unwrap());
        for dep in k["spec"]["dependsOn"].as_array().into_iter().flatten() {
            assert!(
                names.contains(&dep["name"].as_str().unwrap()),
                "dependsOn {dep} is not defined"
            );
        }
        for hc in k["spec"]["healthChecks"].as_array().into_iter().flatten() {
            assert!(
                objs.iter()
                    .any(|o| o["kind"] == hc["kind"] && o["metadata"]["name"] == hc["name"]),
                "health check {hc} names no object of {}",
                k["spec"]["path"]
            );
        }
        for hr in objs.iter().filter(|o| o["kind"] == "HelmRelease") {
            assert_eq!(hr["apiVersion"], "helm.toolkit.fluxcd.io/v2");
            let chart_path = hr["spec"]["chart"]["spec"]["chart"].as_str().unwrap();
            assert!(
                root().join(chart_path).join("Chart.yaml").exists(),
                "{chart_path}"
            );
            template_with_values(&hr["spec"]["values"], "flux");
        }
    }
}

/// The last lines of every operator pod's log in the local cluster's pod directories.
fn operator_logs(dir: &Path) -> String {
    let mut out = String::new();
    for ns in std::fs::read_dir(dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for pod in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let name = pod.file_name().to_string_lossy().into_owned();
            if !name.starts_with("q-operator") {
                continue;
            }
            for f in std::fs::read_dir(pod.path().join("logs"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                out.push_str(&format!(
                    "--- {name}\n{}\n",
                    lines[lines.len().saturating_sub(15)..].join("\n")
                ));
            }
        }
    }
    out
}

/// Waits until `f` holds, polling every 500 ms; panics with `what` after `secs`.
async fn until<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_upgrade_and_uninstall_on_the_cluster_serve_an_index() {
    tokio::time::timeout(Duration::from_secs(420), async {
        let images = HashMap::from([
            ("index-node".to_string(), workspace_bin("index-node").unwrap()),
            ("quiver-operator".to_string(), workspace_bin("quiver-operator").unwrap()),
        ]);
        let env = TestCluster::start(images).await.unwrap();
        let kubeconfig = env.kubeconfig();
        let ns = env.ns.clone();
        let c = chart();
        let helm_on = |args: &[&str]| {
            let out = Command::new(helm_bin())
                .args(args)
                .args(["--namespace", &ns])
                .env("KUBECONFIG", &kubeconfig)
                .env("HELM_CACHE_HOME", env.dir.join("helm-cache"))
                .env("HELM_CONFIG_HOME", env.dir.join("helm-config"))
                .env("HELM_DATA_HOME", env.dir.join("helm-data"))
                .output()
                .unwrap();
            let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "helm {args:?}: {o}{e}");
            o.into_owned()
        };
        // Short leases so that an upgrade's new replica leads soon.
        helm_on(&["install", "q", c.to_str().unwrap(), "--set", "rbac.scope=namespace", "--set", "leaderElection.leaseDurationSeconds=6"]);
        let deployments: Api<Deployment> = env.api();
        let ready = |want_gen: i64| {
            let deployments = deployments.clone();
            async move {
                let Ok(d) = deployments.get("q-operator").await else { return false };
                let st = d.status.unwrap_or_default();
                d.metadata.generation.is_some_and(|g| g >= want_gen)
                    && st.observed_generation.is_some_and(|g| g >= want_gen)
                    && st.ready_replicas == Some(2)
                    && st.updated_replicas == Some(2)
            }
        };
        until(120, "the operator Deployment has 2 ready replicas", || ready(1)).await;
        let secrets: Api<Secret> = env.api();
        let releases = || {
            let secrets = secrets.clone();
            async move {
                let list = secrets.list(&ListParams::default().labels("owner=helm,name=q")).await.unwrap();
                let mut names: Vec<String> = list.items.into_iter().filter_map(|s| s.metadata.name).collect();
                names.sort();
                names
            }
        };
        assert_eq!(releases().await, ["sh.helm.release.v1.q.v1"]);

        // The operator the chart installed serves an index.
        let store = env.dir.join("store");
        std::fs::create_dir_all(&store).unwrap();
        let vi: VectorIndex = serde_json::from_value(json!({
            "apiVersion": "quiver.dev/v1alpha1", "kind": "VectorIndex", "metadata": {"name": "helmed"},
            "spec": {"dimension": 16, "index": {"nlist": 16, "quantizer": {"kind": "flat"}, "nprobe": 8},
                     "source": {"synthetic": {"count": 2000, "seed": 4}},
                     "storage": {"uri": format!("file://{}", store.display())},
                     "shards": 1, "replicas": 1, "router": {"replicas": 1},
                     "rollout": {"evalQueries": 50, "evalK": 10, "minRecall": 0.8}}
        }))
        .unwrap();
        let vis: Api<VectorIndex> = env.api();
        vis.create(&PostParams::default(), &vi).await.unwrap();
        let is_ready = || {
            let vis = vis.clone();
            async move {
                vis.get("helmed").await.ok().and_then(|v| v.status).and_then(|s| s.phase) == Some(IndexPhase::Ready)
            }
        };
        let t0 = Instant::now();
        while !is_ready().await {
            if t0.elapsed() > Duration::from_secs(240) {
                let st = vis.get("helmed").await.unwrap().status;
                panic!(
                    "the index is not Ready under the Helm-installed operator after 240 s: {st:?}\noperator logs:\n{}",
                    operator_logs(&env.dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        // kubectl quiver logs --role operator: the operator pods' lines about this index,
        // through pods/log.
        if env.pod_logs_reachable("app.kubernetes.io/name=quiver-operator").await {
            let out = Command::new(workspace_bin("kubectl-quiver").unwrap())
                .args(["logs", "helmed", "--role", "operator", "--operator-namespace", &ns, "-n", &ns])
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
            assert!(text.lines().any(|l| l.starts_with(&format!("==> {ns}/q-operator-"))), "{text}");
            let about: Vec<&str> = text.lines().filter(|l| !l.starts_with("==> ") && !l.is_empty()).collect();
            assert!(!about.is_empty() && about.iter().all(|l| l.contains("helmed")), "{text}");
        }

        // Upgrade: a new operator template rolls out; the index stays Ready.
        helm_on(&["upgrade", "q", c.to_str().unwrap(), "--reuse-values", "--set", "logLevel=debug"]);
        until(120, "the upgraded operator rolls out", || ready(2)).await;
        let d = deployments.get("q-operator").await.unwrap();
        let d = serde_json::to_value(&d).unwrap();
        assert_eq!(env_of(&d, "RUST_LOG").as_deref(), Some("debug"));
        assert_eq!(releases().await, ["sh.helm.release.v1.q.v1", "sh.helm.release.v1.q.v2"]);
        assert!(helm_on(&["status", "q"]).contains("REVISION: 2"));
        assert!(is_ready().await, "the index left Ready during the upgrade");

        // Uninstall: the operator and the release go; the CRD and the index stay.
        helm_on(&["uninstall", "q"]);
        until(60, "the operator Deployment is deleted", || {
            let deployments = deployments.clone();
            async move { deployments.get_opt("q-operator").await.unwrap().is_none() }
        })
        .await;
        assert!(releases().await.is_empty());
        assert!(vis.get_opt("helmed").await.unwrap().is_some(), "uninstall deleted the index");
        // No operator is left to run the finalizer: let the namespace go on a real cluster.
        vis.patch(
            "helmed",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
        env.stop().await;
    })
    .await
    .expect("scenario timed out");
}
