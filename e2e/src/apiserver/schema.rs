//! Validation, defaulting and pruning of custom resources against a CRD's openAPIV3Schema,
//! with the field errors a real API server returns.
//!
//! Checked: type, required, enum, minimum/maximum (and exclusive), minLength/maxLength,
//! minItems/maxItems, minProperties/maxProperties, pattern (the `regex` crate standing in for
//! Go's RE2), format (see `formats`), nullable, properties/additionalProperties/items
//! recursion, default, x-kubernetes-preserve-unknown-fields, x-kubernetes-int-or-string,
//! x-kubernetes-embedded-resource (treated as preserve), x-kubernetes-list-type `set` and
//! `map` uniqueness; then the CEL rules (`x-kubernetes-validations`, see `cel`). Not checked:
//! oneOf/anyOf/allOf/not.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use regex::Regex;
use serde_json::Value;

use super::formats;

/// The `field.ErrorType` of a field error (its `reason` in a Status cause).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Invalid,
    TypeInvalid,
    Required,
    NotSupported,
    TooLong,
    TooMany,
    Duplicate,
    Forbidden,
    Internal,
}

impl ErrorType {
    /// The `reason` of a Status cause.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Invalid => "FieldValueInvalid",
            Self::TypeInvalid => "FieldValueTypeInvalid",
            Self::Required => "FieldValueRequired",
            Self::NotSupported => "FieldValueNotSupported",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
            Self::Duplicate => "FieldValueDuplicate",
            Self::Forbidden => "FieldValueForbidden",
            Self::Internal => "InternalError",
        }
    }

    /// What the error body starts with.
    fn text(self) -> &'static str {
        match self {
            Self::Invalid | Self::TypeInvalid => "Invalid value",
            Self::Required => "Required value",
            Self::NotSupported => "Unsupported value",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
            Self::Duplicate => "Duplicate value",
            Self::Forbidden => "Forbidden",
            Self::Internal => "Internal error",
        }
    }

    /// Errors after which a real server does not run the CEL rules (`hasBlockingErr`).
    pub fn blocks_cel(self) -> bool {
        matches!(
            self,
            Self::TypeInvalid | Self::Required | Self::NotSupported | Self::TooLong | Self::TooMany
        )
    }
}

/// One field error, as `k8s.io/apimachinery/pkg/util/validation/field.Error` renders it:
/// `field` is the path (`spec.x`, `spec.items[2]`, `spec.labels[key]`, `<nil>` for the root),
/// `body` what follows it (`Invalid value: "x": detail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub kind: ErrorType,
    pub field: String,
    pub body: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body)
    }
}

/// A field path; empty is the root, shown as `<nil>` as Go prints a nil `*field.Path`.
pub fn show_path(path: &str) -> String {
    if path.is_empty() {
        "<nil>".into()
    } else {
        path.to_string()
    }
}

impl FieldError {
    /// `shown` is the value as Go prints it (`None`: omitted, as `field.OmitValueType`).
    pub fn new(kind: ErrorType, path: &str, shown: Option<String>, detail: &str) -> Self {
        let mut body = kind.text().to_string();
        let with_value = !matches!(
            kind,
            ErrorType::Required | ErrorType::Forbidden | ErrorType::TooLong | ErrorType::Internal
        );
        if with_value && let Some(v) = shown {
            body.push_str(": ");
            body.push_str(&v);
        }
        if !detail.is_empty() {
            body.push_str(": ");
            body.push_str(detail);
        }
        Self {
            kind,
            field: show_path(path),
            body,
        }
    }

    pub fn invalid(path: &str, value: &Value, detail: &str) -> Self {
        Self::new(ErrorType::Invalid, path, Some(go_value(value)), detail)
    }

    pub fn required(path: &str, detail: &str) -> Self {
        Self::new(ErrorType::Required, path, None, detail)
    }
}

/// A JSON value as Go's `%v`/`%q` print the unstructured value in a field error: strings
/// quoted, numbers and booleans plain, null as "null", maps and lists as `%#v`.
pub fn go_value(v: &Value) -> String {
    match v {
        Value::Null => "\"null\"".into(),
        Value::String(s) => go_quote(s),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => go_number(n),
        other => go_sharp(other),
    }
}

fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn go_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    // strconv.FormatFloat(f, 'g', -1, 64): %e when the exponent is < -4 or >= 6.
    let e = format!("{f:e}");
    let (m, x) = e.split_once('e').unwrap_or((&e, "0"));
    let x: i32 = x.parse().unwrap_or(0);
    if f != 0.0 && !(-4..6).contains(&x) {
        return format!("{m}e{}{:02}", if x < 0 { '-' } else { '+' }, x.abs());
    }
    format!("{f}")
}

/// Go's `%#v` of an unstructured map or list.
fn go_sharp(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", go_quote(k), go_sharp(&m[k.as_str()])))
                .collect();
            format!("map[string]interface {{}}{{{}}}", inner.join(", "))
        }
        Value::Array(a) => {
            let inner: Vec<String> = a.iter().map(go_sharp).collect();
            format!("[]interface {{}}{{{}}}", inner.join(", "))
        }
        Value::Null => "interface {}(nil)".into(),
        Value::String(s) => go_quote(s),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if n.is_i64() || n.is_u64() => format!("{n}"),
        Value::Number(n) => go_number(n),
    }
}

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

fn child(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// Validates a custom resource as a real server does on a write: defaults applied and
/// unknown fields pruned in place, then the schema checked, then (unless a schema error
/// blocks them) the CEL rules, with `old` the stored object on updates.
pub fn validate_custom_resource(
    obj: &mut Value,
    old: Option<&Value>,
    schema: &Value,
) -> Vec<FieldError> {
    let mut errs = validate_schema(obj, schema);
    if !super::cel::has_rules(schema) {
        return errs;
    }
    if !errs.iter().any(|e| e.kind.blocks_cel()) {
        errs.extend(super::cel::validate(obj, old, schema));
    } else {
        errs.push(FieldError::new(
            ErrorType::Invalid,
            "",
            Some("\"null\"".into()),
            "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
        ));
    }
    errs
}

/// Validates `obj` (a whole custom resource) in place: defaults applied, unknown fields
/// pruned. Returns field errors in the API server's wording (schema only, no CEL).
pub fn validate_object(obj: &mut Value, schema: &Value) -> Vec<String> {
    validate_schema(obj, schema)
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn validate_schema(obj: &mut Value, schema: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if schema.is_null() {
        return errs;
    }
    let Some(m) = obj.as_object_mut() else {
        errs.push(FieldError::new(
            ErrorType::Invalid,
            "",
            None,
            "must be an object",
        ));
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
    errs: &mut Vec<FieldError>,
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
            errs.push(FieldError::required(&child(path, r), ""));
        }
    }
}

thread_local! {
    static PATTERNS: RefCell<HashMap<String, Option<Regex>>> = RefCell::new(HashMap::new());
}

/// Whether `s` matches `pattern` (unanchored, as Go's `MatchString`); a pattern that does
/// not compile matches nothing.
fn matches_pattern(pattern: &str, s: &str) -> bool {
    PATTERNS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() > 4096 {
            c.clear();
        }
        c.entry(pattern.to_string())
            .or_insert_with(|| Regex::new(pattern).ok())
            .as_ref()
            .is_some_and(|r| r.is_match(s))
    })
}

/// Why `pattern` is not a regular expression a CRD may carry, if it is not.
pub fn pattern_error(pattern: &str) -> Option<String> {
    Regex::new(pattern).err().map(|e| e.to_string())
}

fn check(v: &mut Value, s: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if v.is_null() {
        if s["nullable"].as_bool() != Some(true) {
            let want = s["type"].as_str().unwrap_or("object");
            errs.push(FieldError::new(
                ErrorType::TypeInvalid,
                path,
                Some("\"null\"".into()),
                &format!("{path} in body must be of type {want}: \"null\""),
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
            errs.push(FieldError::new(
                ErrorType::TypeInvalid,
                path,
                Some(format!("\"{got}\"")),
                &format!("{path} in body must be of type {want}: \"{got}\""),
            ));
            return;
        }
    } else if int_or_string && !matches!(type_name(v), "integer" | "string") {
        errs.push(FieldError::new(
            ErrorType::Invalid,
            path,
            Some(show(v)),
            "must be an integer or a string",
        ));
        return;
    }
    if let Some(allowed) = s["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(show).collect();
        errs.push(FieldError::new(
            ErrorType::NotSupported,
            path,
            Some(show(v)),
            &format!("supported values: {}", list.join(", ")),
        ));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s["minimum"].as_f64() {
            let excl = s["exclusiveMinimum"].as_bool() == Some(true);
            if n < min || (excl && n == min) {
                errs.push(FieldError::new(
                    ErrorType::Invalid,
                    path,
                    Some(n.to_string()),
                    &format!("{path} in body should be greater than or equal to {min}"),
                ));
            }
        }
        if let Some(max) = s["maximum"].as_f64() {
            let excl = s["exclusiveMaximum"].as_bool() == Some(true);
            if n > max || (excl && n == max) {
                errs.push(FieldError::new(
                    ErrorType::Invalid,
                    path,
                    Some(n.to_string()),
                    &format!("{path} in body should be less than or equal to {max}"),
                ));
            }
        }
    }
    if let Some(st) = v.as_str() {
        let len = st.chars().count() as u64;
        if s["minLength"].as_u64().is_some_and(|m| len < m) {
            errs.push(FieldError::new(
                ErrorType::Invalid,
                path,
                Some(show(v)),
                &format!(
                    "{path} in body should be at least {} chars long",
                    s["minLength"]
                ),
            ));
        }
        if s["maxLength"].as_u64().is_some_and(|m| len > m) {
            errs.push(FieldError::new(
                ErrorType::TooLong,
                path,
                None,
                &format!("may not be more than {} bytes", s["maxLength"]),
            ));
        }
        if let Some(p) = s["pattern"].as_str()
            && !matches_pattern(p, st)
        {
            errs.push(FieldError::new(
                ErrorType::Invalid,
                path,
                Some(go_quote(st)),
                &format!("{path} in body should match '{p}'"),
            ));
        }
        if let Some(f) = s["format"].as_str()
            && !int_or_string
            && !formats::valid(f, st)
        {
            errs.push(FieldError::new(
                ErrorType::TypeInvalid,
                path,
                Some(go_quote(st)),
                &format!("{path} in body must be of type {f}: {}", go_quote(st)),
            ));
        }
    }
    match v {
        Value::Array(items) => {
            let n = items.len() as u64;
            if s["minItems"].as_u64().is_some_and(|m| n < m) {
                errs.push(FieldError::new(
                    ErrorType::Invalid,
                    path,
                    Some(n.to_string()),
                    &format!(
                        "{path} in body should have at least {} items",
                        s["minItems"]
                    ),
                ));
            }
            if s["maxItems"].as_u64().is_some_and(|m| n > m) {
                errs.push(FieldError::new(
                    ErrorType::TooMany,
                    path,
                    Some(n.to_string()),
                    &format!("must have at most {} items", s["maxItems"]),
                ));
            }
            if s["items"].is_object() {
                for (i, item) in items.iter_mut().enumerate() {
                    check(item, &s["items"], &format!("{path}[{i}]"), errs);
                }
            }
            check_list_type(items, s, path, errs);
        }
        Value::Object(m) => {
            let preserve = s["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
                || s["x-kubernetes-embedded-resource"].as_bool() == Some(true);
            let props = s["properties"].as_object();
            let additional = &s["additionalProperties"];
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let sub = props.and_then(|p| p.get(&k));
                match (sub, additional) {
                    (Some(sub), _) => {
                        if let Some(cv) = m.get_mut(&k) {
                            check(cv, sub, &child(path, &k), errs);
                        }
                    }
                    (None, Value::Object(_)) => {
                        if let Some(cv) = m.get_mut(&k) {
                            check(cv, additional, &format!("{path}[{k}]"), errs);
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
            let n = m.len() as u64;
            if s["maxProperties"].as_u64().is_some_and(|max| n > max) {
                errs.push(FieldError::new(
                    ErrorType::TooMany,
                    path,
                    Some(n.to_string()),
                    &format!("must have at most {} items", s["maxProperties"]),
                ));
            }
            if s["minProperties"].as_u64().is_some_and(|min| n < min) {
                errs.push(FieldError::new(
                    ErrorType::Invalid,
                    path,
                    Some(n.to_string()),
                    &format!(
                        "{path} in body should have at least {} properties",
                        s["minProperties"]
                    ),
                ));
            }
        }
        _ => {}
    }
}

/// `x-kubernetes-list-type: set` (no duplicate items) and `map` (no two items with the same
/// `x-kubernetes-list-map-keys`, each key present or defaulted), as structurallisttype checks.
fn check_list_type(items: &[Value], s: &Value, path: &str, errs: &mut Vec<FieldError>) {
    match s["x-kubernetes-list-type"].as_str() {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    errs.push(FieldError::new(
                        ErrorType::Duplicate,
                        &format!("{path}[{i}]"),
                        Some(go_value(item)),
                        "",
                    ));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = s["x-kubernetes-list-map-keys"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen: Vec<Value> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let ip = format!("{path}[{i}]");
                let Some(m) = item.as_object() else {
                    errs.push(FieldError::invalid(
                        &ip,
                        item,
                        "must be an object for an array of list-type map",
                    ));
                    continue;
                };
                let mut key = serde_json::Map::new();
                let mut complete = true;
                for k in &keys {
                    match m
                        .get(*k)
                        .or_else(|| s["items"]["properties"][*k].get("default"))
                    {
                        Some(v) => {
                            key.insert((*k).to_string(), v.clone());
                        }
                        None => {
                            errs.push(FieldError::required(&child(&ip, k), ""));
                            complete = false;
                        }
                    }
                }
                if !complete {
                    continue;
                }
                let key = Value::Object(key);
                if seen.contains(&key) {
                    errs.push(FieldError::new(
                        ErrorType::Duplicate,
                        &ip,
                        Some(go_sharp(&key)),
                        "",
                    ));
                } else {
                    seen.push(key);
                }
            }
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
