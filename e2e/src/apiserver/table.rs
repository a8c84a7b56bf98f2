//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for
//! (`Accept: application/json;as=Table;...`). Built-in kinds get the columns kubectl users
//! know (pods: READY, STATUS, RESTARTS); custom resources get their CRD's
//! `additionalPrinterColumns`, evaluated with the JSONPath subset CRDs use.

use serde_json::{Value, json};

use super::registry::ResourceInfo;
use super::time::{human_duration, parse_rfc3339, unix_now};

/// True when the client accepts a Table (it lists the JSON fallback too, so a Table is
/// only sent when asked for).
pub fn wanted(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

/// What each row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

struct Column {
    name: String,
    kind: String,
    format: String,
    description: String,
    priority: i64,
    /// For custom resources: the JSONPath of the value.
    path: Option<String>,
}

fn col(name: &str, kind: &str, priority: i64, description: &str) -> Column {
    Column {
        name: name.into(),
        kind: kind.into(),
        format: if name == "Name" {
            "name".into()
        } else {
            String::new()
        },
        description: description.into(),
        priority,
        path: None,
    }
}

fn name_col() -> Column {
    col(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    )
}

fn age_col() -> Column {
    col("Age", "string", 0, "Time since the object was created.")
}

fn columns(res: &ResourceInfo, version: &str) -> Vec<Column> {
    if let Some(custom) = res.printer_columns.get(version) {
        let mut cols = vec![name_col()];
        match custom.as_array().filter(|a| !a.is_empty()) {
            Some(list) => cols.extend(list.iter().map(|c| Column {
                name: c["name"].as_str().unwrap_or_default().into(),
                kind: c["type"].as_str().unwrap_or("string").into(),
                format: c["format"].as_str().unwrap_or_default().into(),
                description: c["description"].as_str().unwrap_or_default().into(),
                priority: c["priority"].as_i64().unwrap_or(0),
                path: c["jsonPath"].as_str().map(String::from),
            })),
            None => cols.push(age_col()),
        }
        return cols;
    }
    let s = |n: &str| col(n, "string", 0, "");
    let i = |n: &str| col(n, "integer", 0, "");
    let wide = |n: &str| col(n, "string", 1, "");
    let mut cols = vec![name_col()];
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "pods") => cols.extend([
            s("Ready"),
            s("Status"),
            i("Restarts"),
            age_col(),
            wide("IP"),
            wide("Node"),
        ]),
        ("apps", "deployments") => cols.extend([
            s("Ready"),
            i("Up-to-date"),
            i("Available"),
            age_col(),
            wide("Containers"),
            wide("Images"),
        ]),
        ("apps", "replicasets") => {
            cols.extend([i("Desired"), i("Current"), i("Ready"), age_col()]);
        }
        ("apps", "statefulsets") => cols.extend([s("Ready"), age_col()]),
        ("batch", "jobs") => cols.extend([s("Status"), s("Completions"), s("Duration"), age_col()]),
        ("", "namespaces") => cols.extend([s("Status"), age_col()]),
        ("", "nodes") => cols.extend([s("Status"), s("Roles"), age_col(), s("Version")]),
        ("", "services") => cols.extend([s("Type"), s("Cluster-IP"), s("Port(s)"), age_col()]),
        ("", "persistentvolumeclaims") => {
            cols.extend([s("Status"), s("Volume"), s("Capacity"), age_col()]);
        }
        ("", "configmaps") => cols.extend([i("Data"), age_col()]),
        ("", "secrets") => cols.extend([s("Type"), i("Data"), age_col()]),
        ("coordination.k8s.io", "leases") => cols.extend([s("Holder"), age_col()]),
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            cols.push(s("Created At"));
        }
        _ => cols.push(age_col()),
    }
    cols
}

fn age(obj: &Value, now: i64) -> Value {
    match obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(parse_rfc3339)
    {
        Some(t) => json!(human_duration(now - t)),
        None => json!("<unknown>"),
    }
}

fn str_or_none(v: &Value) -> Value {
    match v {
        Value::Null => json!("<none>"),
        Value::String(s) if s.is_empty() => json!("<none>"),
        other => other.clone(),
    }
}

/// The STATUS column of `kubectl get pods`: the most telling reason among the containers.
fn pod_status(pod: &Value) -> String {
    let st = &pod["status"];
    let mut reason = st["reason"]
        .as_str()
        .or(st["phase"].as_str())
        .unwrap_or("Pending")
        .to_string();
    let arr = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let inits = arr(&st["initContainerStatuses"]);
    let n_init = pod["spec"]["initContainers"].as_array().map_or(0, Vec::len);
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        let t = &c["state"]["terminated"];
        if t["exitCode"].as_i64() == Some(0) {
            continue;
        }
        initializing = true;
        reason = if t.is_object() {
            match t["reason"].as_str() {
                Some(r) if !r.is_empty() => format!("Init:{r}"),
                _ => format!("Init:ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
            }
        } else if let Some(r) = c["state"]["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            format!("Init:{r}")
        } else {
            format!("Init:{i}/{n_init}")
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in arr(&st["containerStatuses"]).iter().rev() {
            let state = &c["state"];
            if let Some(r) = state["waiting"]["reason"]
                .as_str()
                .filter(|r| !r.is_empty())
            {
                reason = r.to_string();
            } else if state["terminated"].is_object() {
                let t = &state["terminated"];
                reason = match t["reason"].as_str().filter(|r| !r.is_empty()) {
                    Some(r) => r.to_string(),
                    None => match t["signal"].as_i64().filter(|s| *s != 0) {
                        Some(sig) => format!("Signal:{sig}"),
                        None => format!("ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
                    },
                };
            } else if state["running"].is_object() && c["ready"] == true {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        reason = "Terminating".into();
    }
    reason
}

fn builtin_cells(res: &ResourceInfo, obj: &Value, now: i64) -> Vec<Value> {
    let name = json!(obj["metadata"]["name"]);
    let st = &obj["status"];
    let spec = &obj["spec"];
    let n = |v: &Value| json!(v.as_i64().unwrap_or(0));
    let a = age(obj, now);
    let containers = || -> Vec<Value> {
        spec["template"]["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let joined = |field: &str| {
        json!(
            containers()
                .iter()
                .filter_map(|c| c[field].as_str().map(String::from))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let mut cells = vec![name];
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "pods") => {
            let statuses = st["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total = spec["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = statuses
                .iter()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum();
            cells.extend([
                json!(format!("{ready}/{total}")),
                json!(pod_status(obj)),
                json!(restarts),
                a,
                str_or_none(&st["podIP"]),
                str_or_none(&spec["nodeName"]),
            ]);
        }
        ("apps", "deployments") => cells.extend([
            json!(format!(
                "{}/{}",
                st["readyReplicas"].as_i64().unwrap_or(0),
                spec["replicas"].as_i64().unwrap_or(0)
            )),
            n(&st["updatedReplicas"]),
            n(&st["availableReplicas"]),
            a,
            joined("name"),
            joined("image"),
        ]),
        ("apps", "replicasets") => cells.extend([
            n(&spec["replicas"]),
            n(&st["replicas"]),
            n(&st["readyReplicas"]),
            a,
        ]),
        ("apps", "statefulsets") => cells.extend([
            json!(format!(
                "{}/{}",
                st["readyReplicas"].as_i64().unwrap_or(0),
                spec["replicas"].as_i64().unwrap_or(0)
            )),
            a,
        ]),
        ("batch", "jobs") => {
            let conds = st["conditions"].as_array().cloned().unwrap_or_default();
            let has = |t: &str| {
                conds
                    .iter()
                    .any(|c| c["type"] == t && c["status"] == "True")
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if spec["suspend"] == true {
                "Suspended"
            } else {
                "Running"
            };
            let completions = match spec["completions"].as_i64() {
                Some(c) => format!("{}/{c}", st["succeeded"].as_i64().unwrap_or(0)),
                None => format!(
                    "{}/1 of {}",
                    st["succeeded"].as_i64().unwrap_or(0),
                    spec["parallelism"].as_i64().unwrap_or(1)
                ),
            };
            let start = st["startTime"].as_str().and_then(parse_rfc3339);
            let end = st["completionTime"]
                .as_str()
                .and_then(parse_rfc3339)
                .unwrap_or(now);
            let duration = start.map_or(String::new(), |s| human_duration(end - s));
            cells.extend([json!(status), json!(completions), json!(duration), a]);
        }
        ("", "namespaces") => cells.extend([json!(st["phase"].as_str().unwrap_or("Active")), a]),
        ("", "nodes") => {
            let ready = st["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .is_some_and(|c| c["status"] == "True");
            cells.extend([
                json!(if ready { "Ready" } else { "NotReady" }),
                json!("<none>"),
                a,
                json!(
                    st["nodeInfo"]["kubeletVersion"]
                        .as_str()
                        .unwrap_or_default()
                ),
            ]);
        }
        ("", "services") => {
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["port"].as_i64().unwrap_or(0),
                        p["protocol"].as_str().unwrap_or("TCP")
                    )
                })
                .collect();
            cells.extend([
                json!(spec["type"].as_str().unwrap_or("ClusterIP")),
                str_or_none(&spec["clusterIP"]),
                json!(if ports.is_empty() {
                    "<none>".into()
                } else {
                    ports.join(",")
                }),
                a,
            ]);
        }
        ("", "persistentvolumeclaims") => cells.extend([
            json!(st["phase"].as_str().unwrap_or("Pending")),
            json!(spec["volumeName"].as_str().unwrap_or_default()),
            json!(st["capacity"]["storage"].as_str().unwrap_or_default()),
            a,
        ]),
        ("", "configmaps") => {
            let count = |k: &str| obj[k].as_object().map_or(0, |m| m.len());
            cells.extend([json!(count("data") + count("binaryData")), a]);
        }
        ("", "secrets") => cells.extend([
            json!(obj["type"].as_str().unwrap_or("Opaque")),
            json!(obj["data"].as_object().map_or(0, |m| m.len())),
            a,
        ]),
        ("coordination.k8s.io", "leases") => {
            cells.extend([str_or_none(&spec["holderIdentity"]), a]);
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            cells.push(json!(obj["metadata"]["creationTimestamp"]));
        }
        _ => cells.push(a),
    }
    cells
}

/// Evaluates the JSONPath subset used in `additionalPrinterColumns`: `.a.b`, `.a[0]`,
/// `.a[*]`, `.a['x.y']` and `.a[?(@.type=="Ready")]`. Several matches print comma-joined.
pub fn json_path(obj: &Value, path: &str) -> Vec<Value> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(p);
    let mut cur = vec![obj.clone()];
    let mut rest = p.strip_prefix('$').unwrap_or(p);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            rest = &r[end..];
            if key.is_empty() {
                continue;
            }
            cur = cur.iter().filter_map(|v| v.get(key).cloned()).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return vec![];
            };
            // A filter may contain ']' only inside quotes, which CRD paths do not use.
            let inner = &r[..end];
            rest = &r[end + 1..];
            cur = step(&cur, inner);
        } else {
            return vec![];
        }
    }
    cur.into_iter().filter(|v| !v.is_null()).collect()
}

fn step(cur: &[Value], inner: &str) -> Vec<Value> {
    let unquote = |s: &str| s.trim().trim_matches(|c| c == '\'' || c == '"').to_string();
    if inner == "*" {
        return cur
            .iter()
            .flat_map(|v| match v {
                Value::Array(a) => a.clone(),
                Value::Object(m) => m.values().cloned().collect(),
                _ => vec![],
            })
            .collect();
    }
    if let Ok(i) = inner.trim().parse::<i64>() {
        return cur
            .iter()
            .filter_map(|v| {
                let a = v.as_array()?;
                let idx = if i < 0 { a.len() as i64 + i } else { i };
                a.get(usize::try_from(idx).ok()?).cloned()
            })
            .collect();
    }
    if let Some(f) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        let f = f.trim().strip_prefix("@.").unwrap_or(f);
        let (field, want) = match f.split_once("==") {
            Some((k, v)) => (k.trim(), Some(unquote(v))),
            None => (f.trim(), None),
        };
        return cur
            .iter()
            .flat_map(|v| v.as_array().cloned().unwrap_or_default())
            .filter(|item| {
                let got = &item[field];
                match &want {
                    Some(w) => match got {
                        Value::String(s) => s == w,
                        Value::Null => false,
                        other => *other == serde_json::from_str::<Value>(w).unwrap_or(Value::Null),
                    },
                    None => !got.is_null(),
                }
            })
            .collect();
    }
    let key = unquote(inner);
    cur.iter().filter_map(|v| v.get(&key).cloned()).collect()
}

fn custom_cell(col: &Column, obj: &Value, now: i64) -> Value {
    let Some(path) = &col.path else {
        return Value::Null;
    };
    let found = json_path(obj, path);
    if found.is_empty() {
        return Value::Null;
    }
    if col.kind == "date" {
        return match found[0].as_str().and_then(parse_rfc3339) {
            Some(t) => json!(human_duration(now - t)),
            None => Value::Null,
        };
    }
    if found.len() == 1 {
        let v = found.into_iter().next().unwrap_or_default();
        // A string column shows objects and arrays as their JSON text.
        return if col.kind == "string" && (v.is_object() || v.is_array()) {
            json!(v.to_string())
        } else {
            v
        };
    }
    json!(
        found
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), String::from))
            .collect::<Vec<_>>()
            .join(",")
    )
}

fn row(res: &ResourceInfo, cols: &[Column], obj: &Value, include: Include, now: i64) -> Value {
    let cells = if res.printer_columns.is_empty() {
        builtin_cells(res, obj, now)
    } else {
        cols.iter()
            .map(|c| {
                if c.format == "name" {
                    obj["metadata"]["name"].clone()
                } else if c.path.is_none() {
                    age(obj, now)
                } else {
                    custom_cell(c, obj, now)
                }
            })
            .collect()
    };
    let mut r = json!({"cells": cells});
    match include {
        Include::None => {}
        Include::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            });
        }
        Include::Object => r["object"] = obj.clone(),
    }
    r
}

/// A Table of `objects` (already presented in the requested version).
pub fn table(
    res: &ResourceInfo,
    version: &str,
    objects: &[Value],
    include: Include,
    metadata: Value,
    with_columns: bool,
) -> Value {
    let cols = columns(res, version);
    let now = unix_now();
    let defs: Vec<Value> = if with_columns {
        cols.iter()
            .map(|c| {
                json!({"name": c.name, "type": c.kind, "format": c.format,
                       "description": c.description, "priority": c.priority})
            })
            .collect()
    } else {
        vec![]
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": defs,
        "rows": objects.iter().map(|o| row(res, &cols, o, include, now)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::Registry;
    use crate::apiserver::time::rfc3339;

    fn builtin(group: &str, plural: &str) -> ResourceInfo {
        Registry::builtin()
            .all()
            .iter()
            .find(|r| r.group == group && r.plural == plural)
            .cloned()
            .expect("builtin resource")
    }

    #[test]
    fn accept_header_asks_for_tables() {
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
        assert!(!wanted(
            "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"
        ));
    }

    #[test]
    fn timestamps_and_ages() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-21T02:43:50Z"), Some(1_795_229_030));
        assert_eq!(parse_rfc3339(&rfc3339(1_795_229_030)), Some(1_795_229_030));
        assert_eq!(
            parse_rfc3339("2026-11-21T02:43:50.123456Z"),
            Some(1_795_229_030)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-13-21T02:43:50Z"), None);
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (192, "3m12s"),
            (600, "10m"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (20 * 3600, "20h"),
            (3 * 86_400 + 3600, "3d1h"),
            (30 * 86_400, "30d"),
            (3 * 365 * 86_400 + 86_400, "3y1d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn pod_rows_show_ready_status_and_restarts() {
        let res = builtin("", "pods");
        let created = rfc3339(unix_now() - 30);
        let pod = json!({
            "metadata": {"name": "p", "creationTimestamp": created},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "127.0.1.2", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ]},
        });
        let t = table(
            &res,
            "v1",
            std::slice::from_ref(&pod),
            Include::Metadata,
            json!({}),
            true,
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node"]
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "p");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], 3);
        assert!(
            cells[4].as_str().is_some_and(|a| a.ends_with('s')),
            "{}",
            cells[4]
        );
        assert_eq!(cells[5], "127.0.1.2");
        assert_eq!(cells[6], "n1");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "p");

        let mut done = pod.clone();
        done["status"]["containerStatuses"][1]["state"] =
            json!({"terminated": {"exitCode": 137, "signal": 9}});
        assert_eq!(pod_status(&done), "Signal:9");
        let mut init = pod.clone();
        init["spec"]["initContainers"] = json!([{"name": "i"}]);
        init["status"]["initContainerStatuses"] = json!([{"name": "i", "state": {"running": {}}}]);
        assert_eq!(pod_status(&init), "Init:0/1");
        let mut gone = pod;
        gone["metadata"]["deletionTimestamp"] = json!(created);
        assert_eq!(pod_status(&gone), "Terminating");
    }

    #[test]
    fn job_rows_show_status_and_completions() {
        let res = builtin("batch", "jobs");
        let job = json!({
            "metadata": {"name": "j", "creationTimestamp": rfc3339(unix_now() - 100)},
            "spec": {"completions": 3, "parallelism": 2},
            "status": {"succeeded": 3, "startTime": "2026-01-01T00:00:00Z",
                       "completionTime": "2026-01-01T00:00:42Z",
                       "conditions": [{"type": "Complete", "status": "True"}]},
        });
        let t = table(&res, "v1", &[job], Include::None, json!({}), true);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "Complete");
        assert_eq!(cells[2], "3/3");
        assert_eq!(cells[3], "42s");
        assert!(t["rows"][0].get("object").is_none());
    }

    #[test]
    fn json_paths_of_printer_columns() {
        let o = json!({
            "metadata": {"name": "x", "labels": {"a.b/c": "d"}},
            "spec": {"shards": 4, "items": [{"n": 1}, {"n": 2}]},
            "status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "Degraded", "status": "False"},
            ]},
        });
        assert_eq!(json_path(&o, ".spec.shards"), [json!(4)]);
        assert_eq!(json_path(&o, "{.spec.items[1].n}"), [json!(2)]);
        assert_eq!(json_path(&o, ".spec.items[-1].n"), [json!(2)]);
        assert_eq!(json_path(&o, ".spec.items[*].n"), [json!(1), json!(2)]);
        assert_eq!(json_path(&o, ".metadata.labels['a.b/c']"), [json!("d")]);
        assert_eq!(
            json_path(&o, r#".status.conditions[?(@.type=="Ready")].status"#),
            [json!("True")]
        );
        assert!(json_path(&o, ".status.phase").is_empty());
        assert!(json_path(&o, "spec").is_empty());
    }

    #[test]
    fn custom_resources_use_their_printer_columns() {
        let mut res = builtin("", "configmaps");
        res.printer_columns.insert(
            "v1".into(),
            json!([
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Shards", "type": "integer", "jsonPath": ".spec.shards"},
                {"name": "Ready", "type": "string",
                 "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status", "priority": 1},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ]),
        );
        let o = json!({
            "metadata": {"name": "vi", "creationTimestamp": rfc3339(unix_now() - 3 * 3600)},
            "spec": {"shards": 2},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        });
        let t = table(&res, "v1", &[o], Include::Object, json!({}), true);
        assert_eq!(t["columnDefinitions"][3]["priority"], 1);
        assert_eq!(t["columnDefinitions"][4]["type"], "date");
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "vi");
        assert!(cells[1].is_null(), "a missing value is an empty cell");
        assert_eq!(cells[2], 2);
        assert_eq!(cells[3], "False");
        assert_eq!(cells[4], "3h");
        assert_eq!(t["rows"][0]["object"]["spec"]["shards"], 2);
        // A version without columns gets Name and Age.
        res.printer_columns.insert("v2".into(), json!([]));
        let t = table(&res, "v2", &[], Include::None, json!({}), true);
        assert_eq!(t["columnDefinitions"].as_array().map(Vec::len), Some(2));
    }
}
