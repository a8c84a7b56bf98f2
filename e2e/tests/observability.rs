//! Observability and the Python client against the real binaries.
//!
//! * The alert rules (`charts/quiver/alerts/quiver-rules.yaml`) and the Grafana dashboard
//!   (`charts/quiver/dashboards/quiver-index.json`) name only metrics that some binary exports:
//!   an index is taken to Ready on the local cluster with the real operator and index-node
//!   binaries, queried (`index-node loadtest`, the Python client), and the `/metrics` of the
//!   operator, a router pod and a shard pod are scraped; every metric name in a rule's `expr`
//!   or a panel's query must be among the series they expose.
//! * `examples/python/search.py` searches and batch-searches through the index's Service (its
//!   routers), answers name the active version, and a wrong dimension comes back as the
//!   router's INVALID_ARGUMENT. python3 with grpcio and grpcio-tools is required (CI installs
//!   `.ci/requirements.txt`); without it the test fails, it does not skip.
//! * The rules and the dashboard are well formed (severity, annotations naming the index,
//!   runbooks that exist in operator/README.md, dashboard variables).
//!
//! Runs on the in-process stand-in, or against another cluster with QUIVER_E2E_KUBECONFIG.
//! Needs quiver-operator and index-node built in this target directory (`cargo test
//! --workspace` builds them).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use quiver_api::keys::labels;
use quiver_api::v1alpha1::IndexPhase;
use quiver_api::{VectorIndex, ports};
use quiver_e2e::testing::TestCluster;
use serde_json::{Value, json};

mod opsupport;
use opsupport::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

const RULES: &str = "charts/quiver/alerts/quiver-rules.yaml";
const DASHBOARD: &str = "charts/quiver/dashboards/quiver-index.json";
const RUNBOOKS: &str = "operator/README.md";
const SEARCH_PY: &str = "examples/python/search.py";

/// How the rules and the dashboard tell an index's pods (node metrics carry no index label):
/// the names the operator's Deployment and StatefulSets give them.
const ROUTER_POD: &str = "(.+)-router-[a-z0-9]+-[a-z0-9]+";
const SHARD_POD: &str = "(.+)-shard-[0-9]+-[0-9]+";

// ------------------------------------------------------------------ PromQL metric names

/// Words that are PromQL syntax, not metric names (outside `{...}`, strings and `[...]`).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    // aggregation operators, which may be followed by `by (...)` before their parenthesis
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords whose parenthesis holds label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// The index just past the string literal that starts at `i` (`"..."`, `'...'`, `` `...` ``).
fn skip_string(b: &[u8], i: usize) -> Result<usize, String> {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if quote != b'`' => j += 2,
            c if c == quote => return Ok(j + 1),
            _ => j += 1,
        }
    }
    Err(format!("unterminated string at byte {i}"))
}

/// The index just past the bracket that closes the one at `i`, strings skipped.
fn skip_group(b: &[u8], i: usize) -> Result<usize, String> {
    let (open, close) = (b[i], closing(b[i]));
    let mut depth = 0;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'"' | b'\'' | b'`' => {
                j = skip_string(b, j)?;
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
    Err(format!("unclosed {:?} at byte {i}", open as char))
}

fn closing(c: u8) -> u8 {
    match c {
        b'(' => b')',
        b'[' => b']',
        _ => b'}',
    }
}

/// The metric names a PromQL expression selects: identifiers that are not functions (followed
/// by `(`), keywords or aggregation operators, outside label matchers (`{...}`), label lists
/// (`by (...)`, `on (...)`, ...), strings, ranges (`[5m]`), numbers and Grafana variables
/// (`$__rate_interval`).
fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let b = expr.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_string(b, i)?;
        } else if c == b'{' || c == b'[' {
            i = skip_group(b, i)?;
        } else if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'$' {
            i += 1;
            if i < b.len() && b[i] == b'{' {
                i = skip_group(b, i)?;
            } else {
                while i < b.len() && ident_char(b[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            // numbers, durations (`offset 5m`), hex, exponents
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < b.len() && ident_char(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let next = b.get(j).copied();
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if next == Some(b'(') {
                    i = skip_group(b, j)?;
                }
            } else if KEYWORDS.contains(&lower.as_str()) || next == Some(b'(') {
                // syntax, or a function's name
            } else {
                out.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// The metric of a Grafana `label_values(<selector>, <label>)` variable query (none for
/// `label_values(<label>)`); other queries are PromQL.
fn variable_metric_names(query: &str) -> Result<BTreeSet<String>, String> {
    let q = query.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return match inner.rsplit_once(',') {
            Some((selector, _label)) => metric_names(selector),
            None => Ok(BTreeSet::new()),
        };
    }
    metric_names(q)
}

/// The series names a `/metrics` exposition makes queryable: every sample's name, and for each
/// `# TYPE` the names Prometheus stores for it (a counter `x` as `x_total`, a histogram as
/// `x_bucket`, `x_sum`, `x_count`), so that a family with no series yet still counts.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let (Some(name), Some(kind)) = (w.next(), w.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                out.insert(format!("{}{s}", name.trim_end_matches("_total")));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_string());
        }
    }
    out
}

/// Referenced names that no exposition has.
fn missing<'a>(
    referenced: &'a BTreeMap<String, BTreeSet<String>>,
    exported: &BTreeSet<String>,
) -> BTreeMap<&'a str, &'a BTreeSet<String>> {
    referenced
        .iter()
        .filter(|(name, _)| !exported.contains(*name))
        .map(|(n, w)| (n.as_str(), w))
        .collect()
}

// ------------------------------------------------------------------ the files

fn rules() -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(repo(RULES)).unwrap()).unwrap()
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo(DASHBOARD)).unwrap()).unwrap()
}

fn all_rules(r: &Value) -> Vec<(String, Value)> {
    r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| {
            let name = g["name"].as_str().unwrap().to_string();
            g["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |x| (name.clone(), x.clone()))
        })
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut todo: Vec<Value> = d["panels"].as_array().cloned().unwrap_or_default();
    while let Some(p) = todo.pop() {
        todo.extend(p["panels"].as_array().cloned().unwrap_or_default());
        out.push(p);
    }
    out
}

/// Metric name → where it is used ("rule X", "panel Y", "variable Z").
fn referenced_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let mut refs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |names: BTreeSet<String>, at: String| {
        for n in names {
            refs.entry(n).or_default().insert(at.clone());
        }
    };
    for (_, r) in all_rules(&rules()) {
        let what = r["alert"].as_str().or(r["record"].as_str()).unwrap();
        let expr = r["expr"].as_str().unwrap();
        add(
            metric_names(expr).unwrap_or_else(|e| panic!("rule {what}: {e}")),
            format!("rule {what}"),
        );
    }
    // Names that recording rules make are not exported by any binary.
    let recorded: BTreeSet<String> = all_rules(&rules())
        .iter()
        .filter_map(|(_, r)| r["record"].as_str().map(str::to_string))
        .collect();
    let d = dashboard();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            add(
                metric_names(expr).unwrap_or_else(|e| panic!("panel {title:?}: {e}")),
                format!("panel {title:?}"),
            );
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .or(v["definition"].as_str())
                .unwrap();
            add(
                variable_metric_names(q).unwrap(),
                format!("variable ${}", v["name"].as_str().unwrap()),
            );
        }
    }
    refs.retain(|n, _| !recorded.contains(n));
    refs
}

// ------------------------------------------------------------------ unit tests

#[test]
fn tokenizer_finds_metric_names_and_nothing_else() {
    let t = |e: &str| -> Vec<String> { metric_names(e).unwrap().into_iter().collect() };
    assert_eq!(
        t(r#"rate(quiver_errors_total{role="router", code!~"InvalidArgument|NotFound"}[5m])"#),
        ["quiver_errors_total"]
    );
    assert_eq!(
        t(
            r#"histogram_quantile(0.99, sum by (namespace, index, le) (label_replace(rate(quiver_query_duration_seconds_bucket{role="router"}[$__rate_interval]), "index", "$1", "pod", "(.+)-router-[a-z0-9]+")))"#
        ),
        ["quiver_query_duration_seconds_bucket"]
    );
    assert_eq!(
        t("a / on (pod, version) group_left () b and c offset 5m unless d @ 1609746000"),
        ["a", "b", "c", "d"]
    );
    assert_eq!(t("a * on(x) group_left c"), ["a", "c"]);
    assert_eq!(
        t(r#"max by (version) (s{pod=~"$index-router-.+"}) < 2 >= 0"#),
        ["s"]
    );
    assert_eq!(
        t("(sum(quiver_operator_leader) < 1) or absent(quiver_operator_leader)"),
        ["quiver_operator_leader"]
    );
    assert_eq!(
        t(r#"sum without (instance) (rate(x:y:rate5m[1m])) * 1e-3 + count_values("v", b) / 0x1F"#),
        ["b", "x:y:rate5m"]
    );
    assert_eq!(
        t("max_over_time(m[30m:1m]) # a comment naming no_metric\n  + on() vector(1)"),
        ["m"]
    );
    assert_eq!(t(r#"{__name__=~"quiver_.+"}"#), Vec::<String>::new());
    assert_eq!(t(r#"sum(x{a="}{"}) by (le)"#), ["x"]);
    assert!(metric_names(r#"x{a="unterminated}"#).is_err());
    assert!(
        metric_names("sum(x").is_ok(),
        "only strings and brackets are checked"
    );
    assert!(metric_names("x[5m").is_err());

    assert_eq!(
        variable_metric_names(r#"label_values(m{namespace="$namespace"}, index)"#)
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        ["m"]
    );
    assert!(
        variable_metric_names("label_values(namespace)")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn exposition_names_follow_the_families_and_a_missing_name_is_reported() {
    let text = "\
# HELP quiver_errors Failed requests by gRPC code.
# TYPE quiver_errors counter
quiver_errors_total{role=\"router\",code=\"InvalidArgument\"} 1
# HELP quiver_query_duration_seconds Query latency.
# TYPE quiver_query_duration_seconds histogram
quiver_query_duration_seconds_sum{role=\"router\"} 0.5
# HELP quiver_inflight_queries Queries in flight.
# TYPE quiver_inflight_queries gauge
quiver_inflight_queries{role=\"router\"} 0
# TYPE quiver_shard_calls counter
# EOF
";
    let e = exported_names(text);
    for want in [
        "quiver_errors_total",
        "quiver_query_duration_seconds_bucket",
        "quiver_query_duration_seconds_sum",
        "quiver_query_duration_seconds_count",
        "quiver_inflight_queries",
        "quiver_shard_calls_total",
    ] {
        assert!(e.contains(want), "{want} not in {e:?}");
    }
    // A counter is stored as `_total` only; a histogram has no plain series.
    assert!(!e.contains("quiver_errors"));
    assert!(!e.contains("quiver_query_duration_seconds"));

    let refs: BTreeMap<String, BTreeSet<String>> = [
        "quiver_errors_total",
        "quiver_errors",
        "quiver_query_duration_seconds_bucket",
        "quiver_nope_bucket",
    ]
    .into_iter()
    .map(|n| (n.to_string(), BTreeSet::from(["rule R".to_string()])))
    .collect();
    let m: Vec<&str> = missing(&refs, &e).into_keys().collect();
    assert_eq!(m, ["quiver_errors", "quiver_nope_bucket"]);
}

#[test]
fn rules_and_dashboard_are_well_formed() {
    let readme = std::fs::read_to_string(repo(RUNBOOKS)).unwrap();
    let r = rules();
    let all = all_rules(&r);
    assert!(all.len() >= 6, "{} rules", all.len());
    let mut names = BTreeSet::new();
    for (group, rule) in &all {
        let Some(alert) = rule["alert"].as_str() else {
            continue;
        };
        assert!(names.insert(alert.to_string()), "{alert} twice");
        let sev = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&sev),
            "{alert}: severity {sev:?}"
        );
        let a = &rule["annotations"];
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                a[key].as_str().is_some_and(|s| !s.trim().is_empty()),
                "{alert}: no {key}"
            );
        }
        if group == "quiver-index" {
            for key in ["summary", "description"] {
                let s = a[key].as_str().unwrap();
                assert!(
                    s.contains("{{ $labels.namespace }}/{{ $labels.index }}"),
                    "{alert}: the {key} does not name the index: {s}"
                );
            }
        }
        // The runbook is a section of operator/README.md named after the alert.
        let url = a["runbook_url"].as_str().unwrap();
        let anchor = alert.to_ascii_lowercase();
        assert!(
            url.ends_with(&format!("/{RUNBOOKS}#{anchor}")),
            "{alert}: runbook {url}"
        );
        assert!(
            readme.contains(&format!("\n### {alert}\n")),
            "{RUNBOOKS} has no section ### {alert}"
        );
    }
    for want in [
        "QuiverIndexNotReady",
        "QuiverGateFailed",
        "QuiverVersionStuck",
        "QuiverShardReplicasUnavailable",
        "QuiverQueryLatencyHigh",
        "QuiverQueryErrorRatioHigh",
    ] {
        assert!(names.contains(want), "no alert {want}");
    }
    let text = std::fs::read_to_string(repo(RULES)).unwrap();
    for re in [ROUTER_POD, SHARD_POD.trim_start_matches("(.+)-")] {
        assert!(text.contains(re), "the rules no longer match pods by {re}");
    }

    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    assert_eq!(vars["datasource"]["type"], "datasource");
    assert_eq!(vars["datasource"]["query"], "prometheus");
    for v in ["namespace", "index"] {
        assert_eq!(vars[v]["type"], "query", "${v}");
        assert_eq!(vars[v]["datasource"]["uid"], "${datasource}", "${v}");
    }
    let var_use = regex::Regex::new(r"\$\{?(\w+)").unwrap();
    let mut ids = BTreeSet::new();
    let mut targets = 0;
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id twice: {title}"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: no gridPos");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let ts = p["targets"].as_array().unwrap();
        assert!(!ts.is_empty(), "{title}: no query");
        for t in ts {
            targets += 1;
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("$namespace"),
                "{title}: a query not limited to the chosen namespace: {expr}"
            );
            for c in var_use.captures_iter(expr) {
                let v = &c[1];
                assert!(
                    vars.contains_key(v) || v.starts_with("__"),
                    "{title}: ${v} is not a dashboard variable"
                );
            }
        }
    }
    assert!(targets >= 20, "{targets} queries");
    let refs = referenced_metrics();
    for want in [
        "quiver_query_duration_seconds_bucket",
        "quiver_errors_total",
        "quiver_operator_index_gate_recall_basis_points",
        "quiver_version_state",
        "quiver_shard_replicas",
        "quiver_operator_index_query_drift_basis_points",
    ] {
        assert!(refs.contains_key(want), "{want} not used: {refs:?}");
    }
}

// ------------------------------------------------------------------ against the binaries

/// One HTTP/1.1 GET (Connection: close): status code and body.
async fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| format!("GET {addr}{path} timed out"))?
}

/// python3 with grpcio and grpcio-tools, or a failure that says how to get them.
fn require_python() {
    let out = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools; print(grpc.__version__)"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 lacks grpcio/grpcio-tools, which the Python client test needs: \
             python3 -m pip install -r .ci/requirements.txt (or examples/python/requirements.txt)\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("python3 is needed for the Python client test and cannot run: {e}"),
    }
}

fn search_py(target: &str, args: &[&str], cache: &Path) -> Output {
    Command::new("python3")
        .arg(repo(SEARCH_PY))
        .args(["--target", target, "--timeout", "10"])
        .args(args)
        .env("QUIVER_STUB_CACHE", cache)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The Python example against the index's Service: a search, a batch, a pin, bad input.
fn python_client_searches(target: &str, active: &str, dim: usize, cache: &Path) {
    let d = dim.to_string();
    let o = search_py(
        target,
        &["--dim", &d, "--k", "10", "--batch", "3", "--seed", "1"],
        cache,
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "search.py failed:\n{}", text(&o));
    let head = out
        .lines()
        .find(|l| l.starts_with("search: "))
        .unwrap_or_else(|| panic!("no search line:\n{}", text(&o)));
    assert!(
        head.starts_with(&format!("search: 10 hits from version {active} in ")),
        "{head}\n(active version {active})"
    );
    let row = regex::Regex::new(r"^\s+\d+\s+\d+\s+-?[0-9.e+-]+$").unwrap();
    let rows = out.lines().filter(|l| row.is_match(l)).count();
    assert_eq!(rows, 10, "hit rows:\n{out}");
    assert!(
        out.contains(&format!(
            "batch_search: 3 queries from version {active} in "
        )),
        "{out}"
    );
    for q in 0..3 {
        assert!(
            out.contains(&format!("  query {q}: 10 hits, ids [")),
            "query {q}:\n{out}"
        );
    }

    // A pin to the active version answers from it; an unknown one is NOT_FOUND.
    let o = search_py(
        target,
        &["--dim", &d, "--batch", "1", "--version", active],
        cache,
    );
    assert!(o.status.success(), "pinned search failed:\n{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("from version {active} in")),
        "{}",
        text(&o)
    );
    let o = search_py(target, &["--dim", &d, "--version", "v99-0000"], cache);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        err.contains("error: Search: NOT_FOUND: version: v99-0000 is not served by this router"),
        "{}",
        text(&o)
    );

    // A wrong dimension: the router's INVALID_ARGUMENT, status and message.
    let wrong = (dim - 1).to_string();
    let o = search_py(target, &["--dim", &wrong], cache);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        err.contains(&format!(
            "error: Search: INVALID_ARGUMENT: vector: dimension {wrong} does not match the index dimension {dim}"
        )),
        "{}",
        text(&o)
    );
}

/// `index-node loadtest` through the Service with the version's evaluation queries.
fn load(node: &Path, target: &str, queries: &Path, secs: u32) -> Value {
    loadtest(node, target, queries, f64::from(secs), 2, 0)
}

/// The operator with its HTTP port (metrics) on a known loopback port.
async fn start_operator(env: &TestCluster, bin: &Path) -> (Operator, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let kubeconfig = operator_kubeconfig(env).await;
    let log = std::fs::File::create(env.dir.join("operator.log")).unwrap();
    let child = Command::new(bin)
        .args(["--namespace", &env.ns, "--node-image", "index-node"])
        .args(["--http", &addr])
        .args(LEASE)
        .env("KUBECONFIG", kubeconfig)
        .env("QUIVER_POD_NAME", "quiver-operator")
        .env("RUST_LOG", "info,kube=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (Operator { child }, addr)
}

/// The metrics address (pod IP, port `metrics`) of a Running pod of the index with `role`,
/// and the pod's name.
async fn pod_metrics(env: &TestCluster, index: &str, role: &str) -> (String, String) {
    let pods: Api<Pod> = env.api();
    let lp = ListParams::default().labels(&format!(
        "{}={index},{}={role}",
        labels::INDEX,
        labels::ROLE
    ));
    let list = pods.list(&lp).await.unwrap();
    let p = list
        .items
        .iter()
        .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
        .unwrap_or_else(|| panic!("no {role} pod with an IP"));
    let ip = p.status.as_ref().unwrap().pod_ip.clone().unwrap();
    (format!("{ip}:{}", ports::METRICS), p.name_any())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_panels_use_only_exported_metrics_and_the_python_client_searches() {
    use futures::FutureExt;
    require_python();
    let referenced = referenced_metrics();
    let (operator_bin, node) = bins();
    let images = std::collections::HashMap::from([("index-node".to_string(), node.clone())]);
    let env = TestCluster::start(images).await.unwrap();
    // The cluster stops also when a check fails: pods left running would hold the pod
    // addresses the next run of this binary gets.
    let r = std::panic::AssertUnwindSafe(async {
        tokio::time::timeout(
            Duration::from_secs(480),
            checks(&env, &operator_bin, &node, &referenced),
        )
        .await
        .expect("test timed out")
    })
    .catch_unwind()
    .await;
    env.stop().await;
    if let Err(panic) = r {
        std::panic::resume_unwind(panic);
    }
}

async fn checks(
    env: &TestCluster,
    operator_bin: &Path,
    node: &Path,
    referenced: &BTreeMap<String, BTreeSet<String>>,
) {
    quiver_e2e::testing::install_crd(&env.client).await.unwrap();
    let store = env.dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let storage = format!("file://{}", store.display());
    let (_op, operator_addr) = start_operator(env, operator_bin).await;

    let api: Api<VectorIndex> = env.api();
    let name = "obs";
    let vi = index(
        name,
        &storage,
        json!({"synthetic": {"count": 4000, "seed": 7}}),
    );
    let dim = vi.spec.dimension as usize;
    api.create(&PostParams::default(), &vi).await.unwrap();
    let vi = wait_for(&api, name, 300, "the index Ready", |vi| {
        phase(vi) == Some(IndexPhase::Ready)
    })
    .await;
    let active = vi.status.unwrap().active_version.unwrap();
    let target = service_address(env, name).await.to_string();

    // Part 2: the Python client through the Service (the routers).
    let t0 = Instant::now();
    python_client_searches(&target, &active, dim, &env.dir.join("pystubs"));
    eprintln!(
        "python client checked in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    // Traffic for the query families (and 100+ queries for the drift figure).
    let eval = store.join(format!("{}/{name}/versions/{active}/eval.fvecs", env.ns));
    let s = load(node, &target, &eval, 3);
    assert!(s["ok"].as_u64().unwrap_or(0) >= 100, "loadtest: {s}");

    // Part 1: scrape the binaries until every referenced name is there (the operator
    // publishes drift on its next reconcile; a changed annotation wakes it).
    let (router_addr, router_pod) = pod_metrics(env, name, "router").await;
    let (shard_addr, shard_pod) = pod_metrics(env, name, "shard").await;
    for (pod, re) in [(&router_pod, ROUTER_POD), (&shard_pod, SHARD_POD)] {
        let re = regex::Regex::new(&format!("^{re}$")).unwrap();
        let got = re.captures(pod).map(|c| c[1].to_string());
        assert_eq!(
            got.as_deref(),
            Some(name),
            "the rules take the index from pod names by {re}; pod {pod} does not match"
        );
    }
    let sources = [
        ("operator", operator_addr.clone()),
        (&*format!("router pod {router_pod}"), router_addr),
        (&*format!("shard pod {shard_pod}"), shard_addr),
    ]
    .map(|(what, addr)| (what.to_string(), addr));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut nudge = 0u32;
    let (exported, per_source) = loop {
        let mut exported = BTreeSet::new();
        let mut per_source = BTreeMap::new();
        for (what, addr) in &sources {
            let (code, body) = http_get(addr, ports::METRICS_PATH)
                .await
                .unwrap_or_else(|e| panic!("scraping the {what}: {e}"));
            assert_eq!(code, 200, "{what} /metrics: {body}");
            let names = exported_names(&body);
            assert!(!names.is_empty(), "{what} exports nothing");
            exported.extend(names.iter().cloned());
            per_source.insert(what.clone(), names);
        }
        if missing(referenced, &exported).is_empty() || Instant::now() > deadline {
            break (exported, per_source);
        }
        nudge += 1;
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"e2e.quiver.dev/nudge": nudge.to_string()}}}),
            ),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let gone = missing(referenced, &exported);
    assert!(
        gone.is_empty(),
        "the rules ({RULES}) and the dashboard ({DASHBOARD}) use metrics that no binary exports:\n{}\n\nexported:\n{}",
        gone.iter()
            .map(|(n, w)| format!(
                "  {n} (in {})",
                w.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
            .collect::<Vec<_>>()
            .join("\n"),
        per_source
            .iter()
            .map(|(s, n)| format!("  {s}: {}", n.iter().cloned().collect::<Vec<_>>().join(" ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "{} metric names referenced, all exported (operator, {router_pod}, {shard_pod})",
        referenced.len()
    );
}
