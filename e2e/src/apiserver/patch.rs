//! JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.

use serde_json::{Map, Value};

use super::error::ApiError;

pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn invalid(msg: String) -> ApiError {
    // The API server reports a patch that cannot be applied as 422 Invalid.
    let mut e = ApiError::invalid("", "", &[]);
    e.message = msg;
    e.details = None;
    e
}

fn unescape(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}

fn pointer_parts(path: &str) -> Result<Vec<String>, ApiError> {
    if path.is_empty() {
        return Ok(vec![]);
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| invalid(format!("invalid JSON pointer: {path}")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(doc: &'a mut Value, parts: &[String]) -> Result<&'a mut Value, ApiError> {
    let mut cur = doc;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m.get_mut(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| invalid(format!("doc is missing path: /{}", parts.join("/"))))?;
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    let parts = pointer_parts(path)?;
    let Some((last, init)) = parts.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, init)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| invalid(format!("invalid index {last}")))?;
                if i > a.len() {
                    return Err(invalid(format!("index {i} out of bounds")));
                }
                a.insert(i, value);
            }
        }
        _ => return Err(invalid(format!("cannot add at {path}"))),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let parts = pointer_parts(path)?;
    let Some((last, init)) = parts.split_last() else {
        return Err(invalid("cannot remove the whole document".into()));
    };
    match parent_mut(doc, init)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| invalid(format!("unable to remove nonexistent key: {last}"))),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| invalid(format!("invalid index {last}")))?;
            if i >= a.len() {
                return Err(invalid(format!("index {i} out of bounds")));
            }
            Ok(a.remove(i))
        }
        _ => Err(invalid(format!("cannot remove {path}"))),
    }
}

fn get(doc: &Value, path: &str) -> Result<Value, ApiError> {
    doc.pointer(path)
        .cloned()
        .ok_or_else(|| invalid(format!("doc is missing path: {path}")))
}

pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array"))?;
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| invalid("missing path in JSON patch".into()))?;
        let from = || {
            op["from"]
                .as_str()
                .ok_or_else(|| invalid("missing from in JSON patch".into()))
        };
        match op["op"].as_str().unwrap_or_default() {
            "add" => add(doc, path, op["value"].clone())?,
            "remove" => {
                remove(doc, path)?;
            }
            "replace" => {
                remove(doc, path)?;
                add(doc, path, op["value"].clone())?;
            }
            "move" => {
                let v = remove(doc, from()?)?;
                add(doc, path, v)?;
            }
            "copy" => {
                let v = get(doc, from()?)?;
                add(doc, path, v)?;
            }
            "test" => {
                // As the API server's json-patch library: a missing key under an existing
                // parent tests equal to null (kube-runtime's finalizer helper relies on it).
                let v = match doc.pointer(path) {
                    Some(v) => v.clone(),
                    None => {
                        let parts = pointer_parts(path)?;
                        let init = parts.split_last().map(|(_, i)| i).unwrap_or_default();
                        parent_mut(doc, init)?;
                        Value::Null
                    }
                };
                if v != op["value"] {
                    return Err(invalid(format!("testing value {path} failed")));
                }
            }
            other => return Err(invalid(format!("unexpected JSON patch operation: {other}"))),
        }
    }
    Ok(())
}

/// The merge key of a built-in list, as the Go types declare with `patchMergeKey`.
fn merge_key(field: &str, sample: &Value) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "ports" if sample.get("containerPort").is_some() => Some("containerPort"),
        "ports" => Some("port"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        _ => None,
    }
}

/// Strategic merge patch for built-in kinds: keyed lists merge element by element,
/// `$patch: delete` removes an element, `$patch: replace` replaces a map.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = p.clone();
        p.remove("$patch");
        *target = Value::Object(p);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if k.starts_with('$') {
            // Directives such as $setElementOrder/… and $retainKeys only order or narrow.
            continue;
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Array(items) => {
                let key = items.first().and_then(|s| merge_key(k, s));
                match (key, t.get_mut(k)) {
                    (Some(mk), Some(Value::Array(existing))) => merge_list(existing, items, mk),
                    (Some(mk), _) => {
                        let mut fresh = Vec::new();
                        merge_list(&mut fresh, items, mk);
                        t.insert(k.clone(), Value::Array(fresh));
                    }
                    (None, Some(Value::Array(existing))) if k == "finalizers" => {
                        for i in items {
                            if !existing.contains(i) {
                                existing.push(i.clone());
                            }
                        }
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
            _ => strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v),
        }
    }
}

fn merge_list(existing: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let id = &item[key];
        let pos = existing.iter().position(|e| &e[key] == id);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut existing[i], item),
            (None, false) => {
                let mut fresh = Value::Null;
                strategic_merge(&mut fresh, item);
                existing.push(fresh);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_by_name() {
        let mut doc = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        strategic_merge(
            &mut doc,
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "a", "$patch": "delete"}, {"name": "c", "image": "w"}]}}),
        );
        assert_eq!(
            doc,
            json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}]}})
        );
    }

    #[test]
    fn json_patch_test_op_guards() {
        let mut doc = json!({"a": 1, "l": [1, 2]});
        json_patch(&mut doc, &json!([{"op": "test", "path": "/a", "value": 1}, {"op": "add", "path": "/l/-", "value": 3}]))
            .expect("patch");
        assert_eq!(doc, json!({"a": 1, "l": [1, 2, 3]}));
        let err = json_patch(&mut doc, &json!([{"op": "test", "path": "/a", "value": 2}]))
            .expect_err("must fail");
        assert_eq!(err.code, 422);
    }

    #[test]
    fn json_patch_test_of_missing_key_equals_null() {
        let mut doc = json!({"metadata": {"name": "x"}});
        json_patch(
            &mut doc,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]),
        )
        .expect("test of a missing key against null passes");
        assert_eq!(doc["metadata"]["finalizers"], json!(["f"]));
        // ...but not against a value, and not when the parent is missing too.
        let mut doc = json!({"metadata": {}});
        let err = json_patch(
            &mut doc,
            &json!([{"op": "test", "path": "/metadata/x", "value": 1}]),
        )
        .expect_err("missing is not 1");
        assert_eq!(err.code, 422);
        let err = json_patch(
            &mut doc,
            &json!([{"op": "test", "path": "/spec/x", "value": null}]),
        )
        .expect_err("no parent");
        assert_eq!(err.code, 422);
    }
}
