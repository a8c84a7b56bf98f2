//! The `scale` subresource (`autoscaling/v1` `Scale`) of Deployments, ReplicaSets,
//! StatefulSets and of custom resources whose CRD declares `subresources.scale`: what
//! `kubectl scale` and autoscalers read and write.

use serde_json::{Value, json};

use super::error::ApiError;

/// Where a resource keeps its replica counts (dotted paths such as `.spec.replicas`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    /// A string field holding the selector in label-selector syntax (CRDs); built-in kinds
    /// serialize their `spec.selector` instead.
    pub label_selector: Option<String>,
}

pub fn builtin(group: &str, plural: &str) -> Option<ScalePaths> {
    matches!(
        (group, plural),
        ("apps", "deployments" | "replicasets" | "statefulsets")
    )
    .then(|| ScalePaths {
        spec_replicas: ".spec.replicas".into(),
        status_replicas: ".status.replicas".into(),
        label_selector: None,
    })
}

/// From a CRD version's `subresources.scale`.
pub fn from_crd(scale: &Value) -> Option<ScalePaths> {
    Some(ScalePaths {
        spec_replicas: scale["specReplicasPath"].as_str()?.to_string(),
        status_replicas: scale["statusReplicasPath"].as_str()?.to_string(),
        label_selector: scale["labelSelectorPath"].as_str().map(String::from),
    })
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('.').filter(|s| !s.is_empty())
}

fn at<'a>(obj: &'a Value, path: &str) -> &'a Value {
    segments(path).fold(obj, |v, k| &v[k])
}

/// `matchLabels` and `matchExpressions` in the string form clients parse back.
fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    for e in sel["matchExpressions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

/// The `Scale` view of an object.
pub fn to_scale(paths: &ScalePaths, obj: &Value) -> Value {
    let m = &obj["metadata"];
    let selector = match &paths.label_selector {
        Some(p) => at(obj, p).as_str().unwrap_or_default().to_string(),
        None => selector_string(&obj["spec"]["selector"]),
    };
    let mut status = json!({"replicas": at(obj, &paths.status_replicas).as_i64().unwrap_or(0)});
    if !selector.is_empty() {
        status["selector"] = json!(selector);
    }
    // ScaleSpec.replicas is `omitempty` in the Go type: a real server omits a zero count.
    let mut spec = json!({});
    match at(obj, &paths.spec_replicas).as_i64().unwrap_or(0) {
        0 => {}
        n => spec["replicas"] = json!(n),
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": spec,
        "status": status,
    })
}

/// The replica count a written `Scale` asks for, validated as the real server does.
pub fn wanted_replicas(scale: &Value) -> Result<i64, ApiError> {
    let name = scale["metadata"]["name"].as_str().unwrap_or_default();
    match &scale["spec"]["replicas"] {
        Value::Null => Ok(0),
        v => match v.as_i64() {
            Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                "Scale",
                name,
                &[format!(
                    "spec.replicas: Invalid value: {v}: must be a non-negative 32-bit integer"
                )],
            )),
        },
    }
}

/// A merge patch setting the replica count at `spec_replicas`.
pub fn replicas_patch(paths: &ScalePaths, n: i64) -> Value {
    let segs: Vec<&str> = segments(&paths.spec_replicas).collect();
    segs.iter()
        .rev()
        .fold(json!(n), |inner, k| json!({ *k: inner }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_view_and_patch() {
        let p = builtin("apps", "statefulsets").expect("statefulsets scale");
        let obj = json!({
            "metadata": {"name": "db", "namespace": "n", "resourceVersion": "7"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "db"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}},
            "status": {"replicas": 2},
        });
        let s = to_scale(&p, &obj);
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["replicas"], 2);
        assert_eq!(s["status"]["selector"], "app=db,tier in (a,b)");
        assert_eq!(s["metadata"]["resourceVersion"], "7");
        assert_eq!(replicas_patch(&p, 5), json!({"spec": {"replicas": 5}}));
        assert!(builtin("", "pods").is_none());

        let crd = from_crd(&json!({"specReplicasPath": ".spec.nodes.replicas",
            "statusReplicasPath": ".status.nodes", "labelSelectorPath": ".status.selector"}))
        .expect("crd scale");
        let cr = json!({"metadata": {"name": "vi"}, "spec": {"nodes": {"replicas": 4}},
            "status": {"nodes": 4, "selector": "app=vi"}});
        let s = to_scale(&crd, &cr);
        assert_eq!(
            (
                s["spec"]["replicas"].clone(),
                s["status"]["selector"].clone()
            ),
            (json!(4), json!("app=vi"))
        );
        assert_eq!(
            replicas_patch(&crd, 1),
            json!({"spec": {"nodes": {"replicas": 1}}})
        );
        assert!(from_crd(&json!({"specReplicasPath": ".spec.r"})).is_none());
    }

    #[test]
    fn written_replicas_are_validated() {
        assert_eq!(
            wanted_replicas(&json!({"spec": {"replicas": 4}})).ok(),
            Some(4)
        );
        for bad in [json!(-1), json!("3"), json!(1.5), json!(1u64 << 40)] {
            let e = wanted_replicas(&json!({"spec": {"replicas": bad}})).expect_err("invalid");
            assert!(e.to_string().contains("spec.replicas"), "{e}");
        }
    }
}
