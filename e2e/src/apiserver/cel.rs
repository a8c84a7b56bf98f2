//! CEL rules (`x-kubernetes-validations`) of custom resources, evaluated as the real API
//! server's apiextensions validator does, with kube's CEL support (the `cel` interpreter
//! plus the Kubernetes libraries: strings, lists, sets, regex, URLs, IPs/CIDRs, quantities,
//! semver, format, math, base64).
//!
//! * `self` is the node's value (typed by the schema: `number` fields are doubles,
//!   `date-time` strings timestamps, `duration` strings durations, `byte` strings bytes;
//!   property names escaped as Kubernetes escapes them; at the root and in embedded
//!   resources `metadata` holds only `name` and `generateName`). Rules on a null value are
//!   not run, as a real server skips them.
//! * Transition rules (those that mention `oldSelf`) run only on updates, when the old
//!   object has a value at the same place: object properties and map entries correlate by
//!   name, items of `x-kubernetes-list-type: map` lists by their keys, other list items not
//!   at all. With `optionalOldSelf: true` they also run otherwise, `oldSelf` then being
//!   `optional.none()` (else `optional.of(old)`).
//! * Ratcheting: a failing rule that does not use `oldSelf`, on a value unchanged from the
//!   old object, is not an error (a real server returns a warning instead).
//! * Errors: `<path>: Invalid value: <value>: <message>`, the path that of the node or its
//!   rule's `fieldPath`, the value shown for scalars and omitted for objects and lists;
//!   `message` (trimmed), else a string `messageExpression`, else `failed rule: <rule>`;
//!   `reason` picks Forbidden, Required, Duplicate or Invalid. A rule that fails at run time
//!   gives `<node path>: Invalid value: "<type>": <error> evaluating rule: <message or rule>`.
//!
//! The interpreter has no type checker, so only syntax errors make a CRD's rule fail to
//! compile (`check_crd_schema`); a rule naming a field the schema lacks, which a real server
//! refuses with the CRD, fails here on every object instead. No cost limits.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use kube::core::cel::KubeCelExt;
use kube::core::cel::cel::objects::{Key, Map, OptionalValue};
use kube::core::cel::cel::{Context, ExecutionError, Program, Value as Cel};
use serde_json::Value;

use super::formats;
use super::schema::{ErrorType, FieldError, go_value};

thread_local! {
    static BASE: Context<'static> = Context::default().with_all();
    static PROGRAMS: RefCell<HashMap<String, Rc<Result<Program, String>>>> =
        RefCell::new(HashMap::new());
}

/// The compiled program of `src`, cached per thread.
fn compile(src: &str) -> Rc<Result<Program, String>> {
    PROGRAMS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() > 4096 {
            c.clear();
        }
        c.entry(src.to_string())
            .or_insert_with(|| Rc::new(Program::compile(src).map_err(|e| e.to_string())))
            .clone()
    })
}

/// The CEL rule errors of a custom resource (already defaulted and pruned); `old` is the
/// stored object on an update.
pub fn validate(obj: &Value, old: Option<&Value>, schema: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    BASE.with(|base| {
        let w = Walker { base };
        w.node(schema, obj, old, "", true, false, &mut errs);
    });
    errs
}

/// Whether the schema has CEL rules anywhere (a real server builds a CEL validator then).
pub fn has_rules(s: &Value) -> bool {
    if !s.is_object() {
        return false;
    }
    s["x-kubernetes-validations"]
        .as_array()
        .is_some_and(|r| !r.is_empty())
        || s["properties"]
            .as_object()
            .is_some_and(|p| p.values().any(has_rules))
        || has_rules(&s["items"])
        || has_rules(&s["additionalProperties"])
}

struct Walker<'a> {
    base: &'a Context<'static>,
}

impl Walker<'_> {
    /// `old` is the correlated old value; `parent_same`: the nearest correlated ancestor is
    /// unchanged (used for ratcheting where this node has no correlated old value).
    #[allow(clippy::too_many_arguments)]
    fn node(
        &self,
        s: &Value,
        v: &Value,
        old: Option<&Value>,
        path: &str,
        resource_root: bool,
        parent_same: bool,
        errs: &mut Vec<FieldError>,
    ) {
        if v.is_null() || !s.is_object() {
            return;
        }
        let same = match old {
            Some(o) => o == v,
            None => parent_same,
        };
        if let Some(rules) = s["x-kubernetes-validations"].as_array()
            && !rules.is_empty()
        {
            self.rules(rules, s, v, old, path, resource_root, same, errs);
        }
        match v {
            Value::Object(m) => {
                let props = s["properties"].as_object();
                let additional = &s["additionalProperties"];
                for (k, cv) in m {
                    let old_child = old.and_then(|o| o.get(k));
                    if let Some(sub) = props.and_then(|p| p.get(k)) {
                        let embedded = sub["x-kubernetes-embedded-resource"] == true;
                        self.node(sub, cv, old_child, &child(path, k), embedded, same, errs);
                    } else if additional.is_object() {
                        let embedded = additional["x-kubernetes-embedded-resource"] == true;
                        let p = format!("{path}[{k}]");
                        self.node(additional, cv, old_child, &p, embedded, same, errs);
                    }
                }
            }
            Value::Array(items) => {
                let item_s = &s["items"];
                let embedded = item_s["x-kubernetes-embedded-resource"] == true;
                let keys = map_keys(s);
                for (i, item) in items.iter().enumerate() {
                    let old_item = match (&keys, old.and_then(Value::as_array)) {
                        (Some(keys), Some(olds)) => {
                            olds.iter().find(|o| same_key(o, item, keys, item_s))
                        }
                        _ => None,
                    };
                    let p = format!("{path}[{i}]");
                    self.node(item_s, item, old_item, &p, embedded, same, errs);
                }
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rules(
        &self,
        rules: &[Value],
        s: &Value,
        v: &Value,
        old: Option<&Value>,
        path: &str,
        resource_root: bool,
        same: bool,
        errs: &mut Vec<FieldError>,
    ) {
        let ty = s["type"]
            .as_str()
            .unwrap_or(if s["x-kubernetes-int-or-string"] == true {
                "string"
            } else {
                "object"
            });
        let type_shown = format!("\"{ty}\"");
        let this = to_cel(v, s, resource_root);
        let old_cel = old.map(|o| to_cel(o, s, resource_root));
        for r in rules {
            let src = r["rule"].as_str().unwrap_or_default();
            if src.trim().is_empty() {
                continue;
            }
            let program = compile(src);
            let program = match program.as_ref() {
                Ok(p) => p,
                Err(e) => {
                    errs.push(FieldError::new(
                        ErrorType::Invalid,
                        path,
                        Some(type_shown.clone()),
                        &format!("rule compile error: compilation failed: {e}"),
                    ));
                    continue;
                }
            };
            let uses_old = program.references().has_variable("oldSelf");
            let optional = r["optionalOldSelf"] == true;
            if uses_old && old_cel.is_none() && !optional {
                continue;
            }
            let mut ctx = self.base.new_inner_scope();
            ctx.add_variable_from_value("self", this.clone());
            if optional {
                let o = match &old_cel {
                    Some(o) => OptionalValue::of(o.clone()),
                    None => OptionalValue::none(),
                };
                ctx.add_variable_from_value("oldSelf", Cel::Opaque(Arc::new(o)));
            } else if let Some(o) = &old_cel {
                ctx.add_variable_from_value("oldSelf", o.clone());
            }
            let message = r["message"].as_str().map(str::trim).unwrap_or_default();
            let rule_text = if message.is_empty() {
                src.trim()
            } else {
                message
            };
            match program.execute(&ctx) {
                Ok(Cel::Bool(true)) => continue,
                Ok(_) => {}
                Err(e) => {
                    let (err, overload) = go_error(&e);
                    let detail = if overload {
                        format!(
                            "'{err}': call arguments did not match a supported operator, function or macro signature for rule: {rule_text}"
                        )
                    } else {
                        format!("{err} evaluating rule: {rule_text}")
                    };
                    errs.push(FieldError::new(
                        ErrorType::Invalid,
                        path,
                        Some(type_shown.clone()),
                        &detail,
                    ));
                    continue;
                }
            }
            if !uses_old && same {
                // Ratcheting: a real server only warns about an unchanged value.
                continue;
            }
            let at = match r["fieldPath"].as_str().filter(|f| !f.is_empty()) {
                Some(fp) => match normalize_field_path(fp, s) {
                    Ok(rel) => join(path, &rel),
                    Err(_) => path.to_string(),
                },
                None => path.to_string(),
            };
            let detail = r["messageExpression"]
                .as_str()
                .and_then(|m| message_expression(m, &ctx))
                .unwrap_or_else(|| {
                    if message.is_empty() {
                        format!("failed rule: {}", src.trim())
                    } else {
                        message.to_string()
                    }
                });
            let shown = (!matches!(ty, "object" | "array")).then(|| go_value(v));
            let e = match r["reason"].as_str() {
                Some("FieldValueForbidden") => {
                    FieldError::new(ErrorType::Forbidden, &at, None, &detail)
                }
                Some("FieldValueRequired") => {
                    FieldError::new(ErrorType::Required, &at, None, &detail)
                }
                Some("FieldValueDuplicate") => {
                    FieldError::new(ErrorType::Duplicate, &at, shown, "")
                }
                _ => FieldError::new(ErrorType::Invalid, &at, shown, &detail),
            };
            errs.push(e);
        }
    }
}

/// A `messageExpression`'s message, or `None` (fall back to `message`) when it fails, is
/// not a string, is empty or holds a line break, as a real server falls back.
fn message_expression(src: &str, ctx: &Context<'_>) -> Option<String> {
    let program = compile(src);
    let p = program.as_ref().as_ref().ok()?;
    match p.execute(ctx) {
        Ok(Cel::String(s)) => {
            let t = s.trim();
            (!t.is_empty() && !t.contains('\n') && t.len() <= 5 * 1024).then(|| t.to_string())
        }
        _ => None,
    }
}

/// A run-time error as cel-go words it, and whether it is an overload error.
fn go_error(e: &ExecutionError) -> (String, bool) {
    match e {
        ExecutionError::NoSuchKey(k) => (format!("no such key: {k}"), false),
        ExecutionError::NoSuchOverload => ("no such overload".into(), true),
        ExecutionError::UnsupportedBinaryOperator(..)
        | ExecutionError::UnsupportedUnaryOperator(..)
        | ExecutionError::ValuesNotComparable(..) => ("no such overload".into(), true),
        ExecutionError::DivisionByZero(_) => ("division by zero".into(), false),
        ExecutionError::RemainderByZero(_) => ("modulus by zero".into(), false),
        ExecutionError::Overflow(..) => ("integer overflow".into(), false),
        ExecutionError::IndexOutOfBounds(i) => {
            (format!("index out of bounds: {}", cel_scalar(i)), false)
        }
        other => {
            let s = other.to_string();
            let mut c = s.chars();
            let lower = match c.next() {
                Some(f) => f.to_lowercase().chain(c).collect(),
                None => s,
            };
            (lower, false)
        }
    }
}

fn cel_scalar(v: &Cel) -> String {
    match v {
        Cel::Int(i) => i.to_string(),
        Cel::UInt(u) => u.to_string(),
        other => format!("{other:?}"),
    }
}

fn child(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// `path` then a normalized relative path (`a.b`, `a[k]`).
fn join(path: &str, rel: &str) -> String {
    if path.is_empty() || rel.starts_with('[') {
        format!("{path}{rel}")
    } else {
        format!("{path}.{rel}")
    }
}

/// A rule's `fieldPath` (`.a.b`, `.a['x.y']`) checked against the schema of the rule's node
/// and written as a field path relative to it (`a.b`, `a.x.y` for a property, `a[x.y]` for a
/// map key), as `ValidFieldPath` does.
pub fn normalize_field_path(fp: &str, s: &Value) -> Result<String, String> {
    let mut out = String::new();
    let mut node = s;
    let mut rest = fp;
    let step = |name: &str, out: &mut String, node: &mut &Value| -> Result<(), String> {
        if node["properties"].is_object() {
            let next = node["properties"]
                .get(name)
                .ok_or("does not refer to a valid field")?;
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(name);
            *node = next;
        } else if node["additionalProperties"].is_object() {
            out.push_str(&format!("[{name}]"));
            *node = &node["additionalProperties"];
        } else {
            return Err("does not refer to a valid field".into());
        }
        Ok(())
    };
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            if name.is_empty() {
                return Err("unexpected end of JSON path".into());
            }
            step(name, &mut out, &mut node)?;
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']").ok_or("unexpected end of JSON path")?;
            let name = r[..end].replace("\\'", "'").replace("\\\\", "\\");
            step(&name, &mut out, &mut node)?;
            rest = &r[end + 2..];
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            return Err(format!("expected [ or . but got: {c}"));
        }
    }
    Ok(out)
}

/// The keys of an `x-kubernetes-list-type: map` list.
fn map_keys(s: &Value) -> Option<Vec<String>> {
    if s["x-kubernetes-list-type"] != "map" {
        return None;
    }
    Some(
        s["x-kubernetes-list-map-keys"]
            .as_array()?
            .iter()
            .filter_map(|k| k.as_str().map(String::from))
            .collect(),
    )
}

fn same_key(a: &Value, b: &Value, keys: &[String], item_s: &Value) -> bool {
    keys.iter().all(|k| {
        let d = item_s["properties"][k].get("default");
        a.get(k).or(d) == b.get(k).or(d)
    })
}

/// Kubernetes' escaping of property names for CEL (`cel.Escape`): reserved words become
/// `__word__`; `__`, `.`, `-`, `/` become `__underscores__`, `__dot__`, `__dash__`,
/// `__slash__`; names that still are not identifiers are not visible to rules.
pub fn escape(name: &str) -> Option<String> {
    const RESERVED: &[&str] = &[
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        if let Some(r) = rest.strip_prefix("__") {
            out.push_str("__underscores__");
            rest = r;
            continue;
        }
        match c {
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c if c.is_ascii_alphanumeric() || c == '_' => out.push(c),
            _ => return None,
        }
        rest = &rest[c.len_utf8()..];
    }
    Some(out)
}

fn string(s: &str) -> Cel {
    Cel::String(Arc::new(s.to_string()))
}

/// A JSON value as the CEL value a real server binds for it under schema `s`.
fn to_cel(v: &Value, s: &Value, resource_root: bool) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => {
            if s["type"] == "number" {
                Cel::Float(n.as_f64().unwrap_or(f64::NAN))
            } else if let Some(i) = n.as_i64() {
                Cel::Int(i)
            } else if let Some(u) = n.as_u64() {
                Cel::UInt(u)
            } else {
                Cel::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(st) => {
            if s["x-kubernetes-int-or-string"] == true {
                return string(st);
            }
            match s["format"].as_str() {
                Some("date-time") | Some("datetime") => formats::parse_datetime(st)
                    .map(Cel::Timestamp)
                    .unwrap_or_else(|| string(st)),
                Some("duration") => formats::parse_duration(st)
                    .map(Cel::Duration)
                    .unwrap_or_else(|| string(st)),
                Some("byte") => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(st)
                        .map(|b| Cel::Bytes(Arc::new(b)))
                        .unwrap_or_else(|_| string(st))
                }
                _ => string(st),
            }
        }
        Value::Array(items) => Cel::List(Arc::new(
            items
                .iter()
                .map(|i| {
                    let embedded = s["items"]["x-kubernetes-embedded-resource"] == true;
                    to_cel(i, &s["items"], embedded)
                })
                .collect(),
        )),
        Value::Object(m) => {
            let props = s["properties"].as_object();
            let additional = &s["additionalProperties"];
            let is_map = props.is_none() && (additional.is_object() || *additional == true);
            let mut out: HashMap<Key, Cel> = HashMap::with_capacity(m.len());
            for (k, cv) in m {
                if resource_root && k == "metadata" {
                    continue;
                }
                let sub = props
                    .and_then(|p| p.get(k))
                    .unwrap_or(if additional.is_object() {
                        additional
                    } else {
                        &Value::Null
                    });
                let key = if is_map {
                    k.clone()
                } else {
                    match escape(k) {
                        Some(e) => e,
                        None => continue,
                    }
                };
                let embedded = sub["x-kubernetes-embedded-resource"] == true;
                out.insert(Key::String(Arc::new(key)), to_cel(cv, sub, embedded));
            }
            if resource_root {
                // A resource root: apiVersion and kind always there, metadata only with
                // name and generateName (model.WithTypeAndObjectMeta).
                for k in ["apiVersion", "kind"] {
                    out.entry(Key::String(Arc::new(k.to_string())))
                        .or_insert_with(|| string(""));
                }
                let mut meta: HashMap<Key, Cel> = HashMap::new();
                for k in ["name", "generateName"] {
                    if let Some(Value::String(x)) = v["metadata"].get(k) {
                        meta.insert(Key::String(Arc::new(k.to_string())), string(x));
                    }
                }
                out.insert(
                    Key::String(Arc::new("metadata".into())),
                    Cel::Map(Map {
                        map: Arc::new(meta),
                    }),
                );
            }
            Cel::Map(Map { map: Arc::new(out) })
        }
    }
}

/// What a real server refuses in a CRD version's schema (`path` is where the schema sits,
/// e.g. `spec.versions[0].schema.openAPIV3Schema`): CEL rules or messageExpressions that do
/// not compile, an invalid `fieldPath` or `reason`, `uniqueItems: true`, a `pattern` that is
/// not a regular expression.
pub fn check_crd_schema(s: &Value, path: &str) -> Vec<String> {
    let mut errs = Vec::new();
    crd_node(s, path, &mut errs);
    errs
}

fn crd_node(s: &Value, path: &str, errs: &mut Vec<String>) {
    let Some(m) = s.as_object() else {
        return;
    };
    if m.get("uniqueItems") == Some(&Value::Bool(true)) {
        errs.push(format!("{path}.uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"));
    }
    if let Some(p) = m.get("pattern").and_then(Value::as_str)
        && let Some(e) = super::schema::pattern_error(p)
    {
        let e = e.lines().last().unwrap_or_default().trim().to_string();
        errs.push(format!(
            "{path}.pattern: Invalid value: {}: must be a valid regular expression, but isn't: {e}",
            go_value(&Value::String(p.to_string()))
        ));
    }
    for (i, r) in m
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let rp = format!("{path}.x-kubernetes-validations[{i}]");
        let shown = rule_struct(r);
        let src = r["rule"].as_str().unwrap_or_default();
        if src.trim().is_empty() {
            errs.push(format!("{rp}.rule: Required value"));
        } else if let Err(e) = compile(src).as_ref() {
            errs.push(format!(
                "{rp}.rule: Invalid value: {shown}: compilation failed: {e}"
            ));
        }
        if let Some(me) = r["messageExpression"].as_str() {
            if me.trim().is_empty() {
                errs.push(format!(
                    "{rp}.messageExpression: Required value: must be non-empty if specified"
                ));
            } else if let Err(e) = compile(me).as_ref() {
                errs.push(format!(
                    "{rp}.messageExpression: Invalid value: {shown}: messageExpression compilation failed: {e}"
                ));
            }
        }
        if let Some(msg) = r["message"].as_str()
            && msg.contains('\n')
        {
            errs.push(format!(
                "{rp}.message: Invalid value: {}: message must not contain line breaks",
                go_value(&r["message"])
            ));
        }
        if let Some(reason) = r["reason"].as_str()
            && !matches!(
                reason,
                "FieldValueRequired"
                    | "FieldValueDuplicate"
                    | "FieldValueInvalid"
                    | "FieldValueForbidden"
            )
        {
            errs.push(format!("{rp}.reason: Unsupported value: \"{reason}\": supported values: \"FieldValueDuplicate\", \"FieldValueForbidden\", \"FieldValueInvalid\", \"FieldValueRequired\""));
        }
        if let Some(fp) = r["fieldPath"].as_str().filter(|f| !f.is_empty())
            && let Err(e) = normalize_field_path(fp, s)
        {
            errs.push(format!(
                "{rp}.fieldPath: Invalid value: {}: fieldPath must be a valid path: {e}",
                go_value(&r["fieldPath"])
            ));
        }
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            crd_node(sub, &format!("{path}.properties[{k}]"), errs);
        }
    }
    if let Some(items) = m.get("items") {
        crd_node(items, &format!("{path}.items"), errs);
    }
    if let Some(a) = m.get("additionalProperties") {
        crd_node(a, &format!("{path}.additionalProperties"), errs);
    }
}

/// A rule as Go's `%#v` prints the `apiextensions.ValidationRule` in a CRD error.
fn rule_struct(r: &Value) -> String {
    let q = |k: &str| {
        go_value(&Value::String(
            r[k].as_str().unwrap_or_default().to_string(),
        ))
    };
    let reason = match r["reason"].as_str() {
        Some(x) => format!("(*apiextensions.FieldValueErrorReason)(\"{x}\")"),
        None => "(*apiextensions.FieldValueErrorReason)(nil)".into(),
    };
    let optional = match r["optionalOldSelf"].as_bool() {
        Some(b) => format!("(*bool)({b})"),
        None => "(*bool)(nil)".into(),
    };
    format!(
        "apiextensions.ValidationRule{{Rule:{}, Message:{}, MessageExpression:{}, Reason:{reason}, FieldPath:{}, OptionalOldSelf:{optional}}}",
        q("rule"),
        q("message"),
        q("messageExpression"),
        q("fieldPath")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "metadata": {"type": "object"},
            "spec": {"type": "object",
                "x-kubernetes-validations": [
                    {"rule": "self.min <= self.max", "message": "min must not exceed max", "fieldPath": ".min"},
                    {"rule": "!has(self.a__b) || self.a__b.size() > 0"},
                    {"rule": "self.timeout < duration('1h')", "messageExpression": "'timeout ' + string(self.timeout) + ' too long'"}
                ],
                "properties": {
                    "min": {"type": "integer"}, "max": {"type": "integer"},
                    "a_b": {"type": "string"},
                    "ratio": {"type": "number", "x-kubernetes-validations": [{"rule": "self < 1.0"}]},
                    "timeout": {"type": "string", "format": "duration", "default": "5m"},
                    "name": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}]},
                    "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"],
                        "items": {"type": "object", "properties": {"k": {"type": "string"}, "v": {"type": "integer",
                            "x-kubernetes-validations": [{"rule": "self >= oldSelf", "message": "may only grow"}]}}}}
                }}},
            "x-kubernetes-validations": [{"rule": "self.metadata.name.size() <= 5", "message": "name too long"}]})
    }

    fn errs(obj: &Value, old: Option<&Value>) -> Vec<String> {
        validate(obj, old, &schema())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn rules_paths_messages_and_transitions() {
        let ok = json!({"metadata": {"name": "a"}, "spec": {"min": 1, "max": 2, "ratio": 1, "timeout": "5m", "name": "x",
            "items": [{"k": "a", "v": 1}]}});
        assert_eq!(
            errs(&ok, None),
            vec!["spec.ratio: Invalid value: 1: failed rule: self < 1.0".to_string()]
        );
        let ok = json!({"metadata": {"name": "a"}, "spec": {"min": 1, "max": 2, "ratio": 0.5, "timeout": "5m", "name": "x",
            "items": [{"k": "a", "v": 1}]}});
        assert_eq!(errs(&ok, None), Vec::<String>::new());
        let bad = json!({"metadata": {"name": "toolong"}, "spec": {"min": 3, "max": 2, "ratio": 0.5, "timeout": "2h", "name": "y",
            "items": [{"k": "b", "v": 0}, {"k": "a", "v": 0}]}});
        let got = errs(&bad, Some(&ok));
        for want in [
            "<nil>: Invalid value: name too long",
            "spec.min: Invalid value: min must not exceed max",
            "spec.items[1].v: Invalid value: 0: may only grow",
            "spec.name: Invalid value: \"y\": immutable",
        ] {
            assert!(got.iter().any(|e| e == want), "{want:?} not in {got:?}");
        }
        assert!(
            got.iter().any(|e| e.starts_with("spec: Invalid value: timeout ") && e.ends_with(" too long")),
            "{got:?}"
        );
        // The new item "b" has no old value: its transition rule does not run.
        assert_eq!(got.len(), 5, "{got:?}");
        // On create, transition rules do not run at all.
        assert_eq!(errs(&bad, None).len(), 3);
        // A missing key at run time is a validation failure naming the node.
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"x": {"type": "integer"}},
            "x-kubernetes-validations": [{"rule": "self.x > 0", "message": "x positive"}]}}});
        let e = validate(&json!({"spec": {}}), None, &s);
        assert_eq!(
            e.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["spec: Invalid value: \"object\": no such key: x evaluating rule: x positive"]
        );
        // Ratcheting: an unchanged invalid value passes an update, a changed one does not
        // (run-time errors are never ratcheted).
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
            "x-kubernetes-validations": [{"rule": "has(self.x)", "message": "x required"}]}}});
        let old = json!({"spec": {"y": 1}});
        assert!(validate(&json!({"spec": {"y": 1}}), Some(&old), &s).is_empty());
        assert_eq!(
            validate(&json!({"spec": {"y": 2}}), Some(&old), &s).len(),
            1
        );
    }

    #[test]
    fn escaping_as_kubernetes_does() {
        assert_eq!(escape("namespace").as_deref(), Some("__namespace__"));
        assert_eq!(
            escape("a-b.c/d").as_deref(),
            Some("a__dash__b__dot__c__slash__d")
        );
        assert_eq!(escape("a__b").as_deref(), Some("a__underscores__b"));
        assert_eq!(escape("a_b").as_deref(), Some("a_b"));
        assert_eq!(escape("1a"), None);
        assert_eq!(escape("a b"), None);
    }

    #[test]
    fn field_paths_normalize() {
        let s = schema();
        assert_eq!(
            normalize_field_path(".spec.min", &s).as_deref(),
            Ok("spec.min")
        );
        assert_eq!(
            normalize_field_path(".spec['a_b']", &s).as_deref(),
            Ok("spec.a_b")
        );
        assert!(normalize_field_path(".spec.nope", &s).is_err());
    }

    #[test]
    fn crd_checks() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
            "x-kubernetes-validations": [{"rule": "self.x =="}, {"rule": "true", "fieldPath": ".nope"}],
            "properties": {"l": {"type": "array", "uniqueItems": true}, "p": {"type": "string", "pattern": "("}}}}});
        let e = check_crd_schema(&s, "spec.versions[0].schema.openAPIV3Schema");
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].starts_with("spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value: apiextensions.ValidationRule{Rule:\"self.x ==\""), "{e:?}");
        assert!(e[0].contains("compilation failed"), "{e:?}");
    }
}
