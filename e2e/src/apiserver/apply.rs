//! Server-side apply: field ownership per manager (`managedFields`, FieldsV1).
//!
//! Lists are owned atomically (as a whole); maps field by field. That is coarser than the
//! real structured-merge-diff for keyed lists, but gives the same answers for the cases
//! clients rely on: re-applying without a field removes it, and taking a field another
//! manager set to a different value is a conflict unless forced.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::time::now_rfc3339;

pub type Path = Vec<String>;

#[derive(Debug, Clone)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub subresource: String,
    pub time: String,
    pub fields: BTreeSet<Path>,
}

/// Metadata fields the server owns; never tracked.
const SYSTEM_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

/// Leaf paths of an object, skipping identity fields. `status_only` selects the status
/// subresource's fields; otherwise status is skipped when `skip_status`.
pub fn leaf_paths(obj: &Value, status_only: bool, skip_status: bool) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    let Value::Object(m) = obj else { return out };
    for (k, v) in m {
        if k == "apiVersion" || k == "kind" {
            continue;
        }
        if status_only {
            if k != "status" {
                continue;
            }
        } else if k == "status" && skip_status {
            continue;
        }
        if k == "metadata" {
            if let Value::Object(mm) = v {
                for (mk, mv) in mm {
                    if !SYSTEM_META.contains(&mk.as_str()) {
                        walk(mv, vec![k.clone(), mk.clone()], &mut out);
                    }
                }
            }
            continue;
        }
        walk(v, vec![k.clone()], &mut out);
    }
    out
}

fn walk(v: &Value, path: Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                let mut p = path.clone();
                p.push(k.clone());
                walk(c, p, out);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

pub fn get_path<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for s in path {
        cur = cur.get(s)?;
    }
    Some(cur)
}

/// Value equality as structured-merge-diff compares applied and live values: numbers by
/// value, so `1` (Helm's JSON of a YAML `1.0`) is the `1.0` a client stored.
fn same_value(a: Option<&Value>, b: Option<&Value>) -> bool {
    fn eq(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
                (Some(i), Some(j)) => i == j,
                _ => x.as_f64() == y.as_f64(),
            },
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| eq(p, q))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| eq(v, w)))
            }
            _ => a == b,
        }
    }
    match (a, b) {
        (Some(a), Some(b)) => eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, init)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for s in init {
        match cur.get_mut(s) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let Value::Object(m) = cur {
        m.remove(last);
    }
}

fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

pub fn fields_to_v1(fields: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in fields {
        let mut cur = &mut root;
        for seg in p {
            let e = cur.entry(format!("f:{seg}")).or_insert_with(|| json!({}));
            let Value::Object(m) = e else { break };
            cur = m;
        }
    }
    Value::Object(root)
}

fn fields_from_v1(v: &Value, prefix: Path, out: &mut BTreeSet<Path>) {
    let Value::Object(m) = v else { return };
    let children: Vec<_> = m.iter().filter(|(k, _)| k.starts_with("f:")).collect();
    if (children.is_empty() || m.contains_key(".")) && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
    for (k, c) in children {
        let mut p = prefix.clone();
        p.push(k[2..].to_string());
        fields_from_v1(c, p, out);
    }
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    let mut out = Vec::new();
    for e in obj["metadata"]["managedFields"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let mut fields = BTreeSet::new();
        fields_from_v1(&e["fieldsV1"], vec![], &mut fields);
        let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
        out.push(Entry {
            manager: s("manager"),
            operation: s("operation"),
            api_version: s("apiVersion"),
            subresource: s("subresource"),
            time: s("time"),
            fields,
        });
    }
    out
}

pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_to_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(m) = obj["metadata"].as_object_mut() {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Deep merge for apply: maps merge, everything else (lists included) is replaced.
fn merge_into(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                match t.get_mut(k) {
                    Some(tv) if tv.is_object() && v.is_object() => merge_into(tv, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

/// Applies `applied` as `manager` onto `current` (an empty object when creating).
/// Returns the new object with updated managedFields.
pub fn apply(
    current: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
    subresource: &str,
    has_status_sub: bool,
) -> Result<Value, ApiError> {
    let status_only = subresource == "status";
    let mut entries = read_entries(current);
    let new_fields = leaf_paths(applied, status_only, has_status_sub);
    let me =
        |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource == subresource;

    // Conflicts: another manager owns a related path whose value this apply changes.
    let mut conflicts: Vec<(String, Path)> = Vec::new();
    for e in entries.iter().filter(|e| !me(e)) {
        for p in &new_fields {
            for q in e.fields.iter().filter(|q| related(p, q)) {
                let longest = if p.len() >= q.len() { p } else { q };
                if !same_value(get_path(current, longest), get_path(applied, longest)) {
                    conflicts.push((e.manager.clone(), q.clone()));
                }
            }
        }
    }
    conflicts.sort();
    conflicts.dedup();
    if !conflicts.is_empty() {
        if !force {
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|(m, p)| {
                    json!({"type": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": format!(".{}", p.join("."))})
                })
                .collect();
            let list: Vec<String> = conflicts
                .iter()
                .map(|(m, p)| format!("conflict with \"{m}\": .{}", p.join(".")))
                .collect();
            return Err(ApiError::apply_conflict(
                format!(
                    "Apply failed with {} conflict{}: {}",
                    conflicts.len(),
                    if conflicts.len() == 1 { "" } else { "s" },
                    list.join("; ")
                ),
                causes,
            ));
        }
        for e in entries
            .iter_mut()
            .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        {
            e.fields
                .retain(|q| !conflicts.iter().any(|(m, p)| *m == e.manager && p == q));
        }
    }

    let mut out = current.clone();
    // Fields this manager applied before and no longer applies are removed, unless shared.
    let old_fields = entries
        .iter()
        .find(|e| me(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for p in old_fields.difference(&new_fields) {
        let shared = entries
            .iter()
            .filter(|e| !me(e))
            .any(|e| e.fields.iter().any(|q| related(p, q)));
        if !shared {
            remove_path(&mut out, p);
        }
    }
    let mut body = applied.clone();
    if let Some(m) = body.as_object_mut() {
        if status_only {
            m.retain(|k, _| k == "status" || k == "metadata" || k == "apiVersion" || k == "kind");
        } else if has_status_sub {
            m.remove("status");
        }
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                !SYSTEM_META.contains(&k.as_str()) || k == "name" || k == "namespace"
            });
        }
    }
    merge_into(&mut out, &body);

    let api_version = applied["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match entries.iter_mut().find(|e| me(e)) {
        Some(e) => {
            e.fields = new_fields;
            e.time = now_rfc3339();
            e.api_version = api_version;
        }
        None => entries.push(Entry {
            manager: manager.into(),
            operation: "Apply".into(),
            api_version,
            subresource: subresource.into(),
            time: now_rfc3339(),
            fields: new_fields,
        }),
    }
    write_entries(&mut out, &entries);
    Ok(out)
}

/// Records a non-apply write: the writer takes every field it changed.
pub fn record_update(
    old: &Value,
    new: &mut Value,
    manager: &str,
    subresource: &str,
    has_status_sub: bool,
) {
    let status_only = subresource == "status";
    let mut entries = read_entries(old);
    let before = leaf_paths(old, status_only, has_status_sub);
    let after = leaf_paths(new, status_only, has_status_sub);
    let changed: BTreeSet<Path> = after
        .iter()
        .filter(|p| get_path(old, p) != get_path(new, p))
        .cloned()
        .collect();
    let removed: BTreeSet<Path> = before.difference(&after).cloned().collect();
    for e in &mut entries {
        e.fields.retain(|q| !removed.iter().any(|p| related(p, q)));
        if !(e.manager == manager && e.operation == "Update") {
            e.fields
                .retain(|q| !changed.iter().any(|p| p == q || q.starts_with(p)));
        }
    }
    if !changed.is_empty() {
        let api_version = new["apiVersion"].as_str().unwrap_or_default().to_string();
        match entries.iter_mut().find(|e| {
            e.manager == manager && e.operation == "Update" && e.subresource == subresource
        }) {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now_rfc3339();
            }
            None => entries.push(Entry {
                manager: manager.into(),
                operation: "Update".into(),
                api_version,
                subresource: subresource.into(),
                time: now_rfc3339(),
                fields: changed,
            }),
        }
    }
    write_entries(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_by_value_not_by_spelling() {
        let current = json!({"spec": {"max": 1.0, "list": [{"min": 0.0}]}, "metadata": {"managedFields": [
            {"manager": "kube-client", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": {"f:max": {}, "f:list": {}}}}]}});
        let same = json!({"spec": {"max": 1, "list": [{"min": 0}]}});
        apply(&current, &same, "helm", false, "", false).expect("1 is 1.0: no conflict");
        let other = json!({"spec": {"max": 2}});
        apply(&current, &other, "helm", false, "", false).expect_err("2 is not 1.0");
    }

    #[test]
    fn apply_removes_dropped_field_and_detects_conflicts() {
        let a1 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1", "b": "2"}});
        let o1 = apply(&json!({}), &a1, "m1", false, "", false).expect("apply");
        let a2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
        let o2 = apply(&o1, &a2, "m1", false, "", false).expect("apply");
        assert_eq!(o2["data"], json!({"a": "1"}));
        let a3 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "9"}});
        let err = apply(&o2, &a3, "m2", false, "", false).expect_err("conflict");
        assert_eq!(err.code, 409);
        let o3 = apply(&o2, &a3, "m2", true, "", false).expect("forced");
        assert_eq!(o3["data"]["a"], "9");
        let entries = read_entries(&o3);
        assert_eq!(entries.len(), 1, "m1 lost its only field: {entries:?}");
    }
}
