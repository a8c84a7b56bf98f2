//! Validation, defaulting and pruning of custom resources against a CRD's openAPIV3Schema.
//!
//! Checked: type, required, enum, minimum/maximum (and exclusive), minLength/maxLength,
//! minItems/maxItems, nullable, properties/additionalProperties/items recursion, default,
//! x-kubernetes-preserve-unknown-fields, x-kubernetes-int-or-string, x-kubernetes-embedded-resource
//! (treated as preserve). Not checked: pattern, format, oneOf/anyOf/allOf/not, uniqueItems,
//! x-kubernetes-list-type uniqueness, CEL (x-kubernetes-validations).

use serde_json::Value;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

/// Validates `obj` (a whole custom resource) in place: defaults applied, unknown fields
/// pruned. Returns field errors in the API server's wording.
pub fn validate_object(obj: &mut Value, schema: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    if schema.is_null() {
        return errs;
    }
    let Some(m) = obj.as_object_mut() else {
        errs.push("<root>: Invalid value: must be an object".into());
        return errs;
    };
    let props = &schema["properties"];
    let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
    let keys: Vec<String> = m.keys().cloned().collect();
    for k in keys {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.get(&k) {
            Some(s) => {
                if let Some(v) = m.get_mut(&k) {
                    check(v, s, &k, &mut errs);
                }
            }
            None if preserve => {}
            None => {
                m.remove(&k);
            }
        }
    }
    apply_defaults(m, schema, "", &mut errs);
    errs
}

fn apply_defaults(
    m: &mut serde_json::Map<String, Value>,
    schema: &Value,
    path: &str,
    errs: &mut Vec<String>,
) {
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            if !m.contains_key(k)
                && let Some(d) = s.get("default")
            {
                m.insert(k.clone(), d.clone());
            }
        }
    }
    for r in schema["required"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if let Some(r) = r.as_str()
            && !m.contains_key(r)
        {
            let p = if path.is_empty() {
                r.to_string()
            } else {
                format!("{path}.{r}")
            };
            errs.push(format!("{p}: Required value"));
        }
    }
}

fn check(v: &mut Value, s: &Value, path: &str, errs: &mut Vec<String>) {
    if v.is_null() {
        if s["nullable"].as_bool() != Some(true) {
            // A null for a non-nullable field is pruned as a real server does.
            errs.push(format!(
                "{path}: Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                s["type"].as_str().unwrap_or("object")
            ));
        }
        return;
    }
    let int_or_string = s["x-kubernetes-int-or-string"].as_bool() == Some(true);
    if let Some(want) = s["type"].as_str() {
        let got = type_name(v);
        let ok = got == want
            || (want == "number" && got == "integer")
            || (int_or_string && (got == "integer" || got == "string"));
        if !ok {
            errs.push(format!(
                "{path}: Invalid value: \"{got}\": {path} in body must be of type {want}: \"{got}\""
            ));
            return;
        }
    } else if int_or_string && !matches!(type_name(v), "integer" | "string") {
        errs.push(format!(
            "{path}: Invalid value: {}: must be an integer or a string",
            show(v)
        ));
        return;
    }
    if let Some(allowed) = s["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(show).collect();
        errs.push(format!(
            "{path}: Unsupported value: {}: supported values: {}",
            show(v),
            list.join(", ")
        ));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s["minimum"].as_f64() {
            let excl = s["exclusiveMinimum"].as_bool() == Some(true);
            if n < min || (excl && n == min) {
                errs.push(format!("{path}: Invalid value: {n}: {path} in body should be greater than or equal to {min}"));
            }
        }
        if let Some(max) = s["maximum"].as_f64() {
            let excl = s["exclusiveMaximum"].as_bool() == Some(true);
            if n > max || (excl && n == max) {
                errs.push(format!("{path}: Invalid value: {n}: {path} in body should be less than or equal to {max}"));
            }
        }
    }
    if let Some(st) = v.as_str() {
        let len = st.chars().count() as u64;
        if s["minLength"].as_u64().is_some_and(|m| len < m) {
            errs.push(format!(
                "{path}: Invalid value: {}: {path} in body should be at least {} chars long",
                show(v),
                s["minLength"]
            ));
        }
        if s["maxLength"].as_u64().is_some_and(|m| len > m) {
            errs.push(format!(
                "{path}: Too long: may not be more than {} bytes",
                s["maxLength"]
            ));
        }
    }
    match v {
        Value::Array(items) => {
            let n = items.len() as u64;
            if s["minItems"].as_u64().is_some_and(|m| n < m) {
                errs.push(format!(
                    "{path}: Invalid value: {n}: {path} in body should have at least {} items",
                    s["minItems"]
                ));
            }
            if s["maxItems"].as_u64().is_some_and(|m| n > m) {
                errs.push(format!(
                    "{path}: Too many: {n}: must have at most {} items",
                    s["maxItems"]
                ));
            }
            if s["items"].is_object() {
                for (i, item) in items.iter_mut().enumerate() {
                    check(item, &s["items"], &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(m) => {
            let preserve = s["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
                || s["x-kubernetes-embedded-resource"].as_bool() == Some(true);
            let props = s["properties"].as_object();
            let additional = &s["additionalProperties"];
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child = format!("{path}.{k}");
                let sub = props.and_then(|p| p.get(&k));
                match (sub, additional) {
                    (Some(sub), _) => {
                        if let Some(cv) = m.get_mut(&k) {
                            check(cv, sub, &child, errs);
                        }
                    }
                    (None, Value::Object(_)) => {
                        if let Some(cv) = m.get_mut(&k) {
                            check(cv, additional, &child, errs);
                        }
                    }
                    (None, Value::Bool(true)) => {}
                    (None, _) if preserve => {}
                    (None, _) => {
                        m.remove(&k);
                    }
                }
            }
            apply_defaults(m, s, path, errs);
        }
        _ => {}
    }
}

/// Fields of `obj` the schema does not know (dotted paths), for `fieldValidation=Strict`.
pub fn unknown_fields(obj: &Value, schema: &Value) -> Vec<String> {
    let mut pruned = obj.clone();
    let _ = validate_object(&mut pruned, schema);
    let mut out = Vec::new();
    diff_keys(obj, &pruned, "", &mut out);
    out
}

fn diff_keys(orig: &Value, pruned: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, pruned) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(bv) => diff_keys(v, bv, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_keys(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validates_types_enums_ranges_and_prunes() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 10},
            "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }}}});
        let mut ok = json!({"spec": {"size": 3, "junk": 1, "free": {"x": 1}}});
        assert!(validate_object(&mut ok, &schema).is_empty());
        assert_eq!(
            ok["spec"],
            json!({"size": 3, "mode": "a", "free": {"x": 1}})
        );
        let mut bad = json!({"spec": {"size": 11, "mode": "c"}});
        assert_eq!(validate_object(&mut bad, &schema).len(), 2);
        let mut missing = json!({"spec": {"mode": "a"}});
        assert_eq!(
            validate_object(&mut missing, &schema),
            vec!["spec.size: Required value".to_string()]
        );
        let mut wrong = json!({"spec": {"size": "x"}});
        assert!(validate_object(&mut wrong, &schema)[0].contains("must be of type integer"));
    }
}
