//! Mutating admission a real API server runs on every pod: the `ServiceAccount` plugin
//! (a default account, and the projected `kube-api-access-*` volume that carries the
//! account's token, the cluster CA and the namespace to each container).

use serde_json::{Value, json};

use super::error::ApiError;

/// Where client libraries look for in-cluster credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount admission step for a new pod. `account` looks up a ServiceAccount in
/// the pod's namespace (its `automountServiceAccountToken`, or None when it does not exist).
pub fn admit_pod(
    pod: &mut Value,
    ns: &str,
    suffix: &str,
    account: impl Fn(&str) -> Option<Value>,
) -> Result<(), ApiError> {
    let spec = &mut pod["spec"];
    if !spec.is_object() {
        return Ok(());
    }
    let sa = spec["serviceAccountName"]
        .as_str()
        .or(spec["serviceAccount"].as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    spec["serviceAccountName"] = json!(sa);
    spec["serviceAccount"] = json!(sa);
    let name = pod["metadata"]["name"]
        .as_str()
        .or(pod["metadata"]["generateName"].as_str())
        .unwrap_or_default()
        .to_string();
    let Some(account) = account(&sa) else {
        // As the real plugin: a pod cannot name an account that does not exist (also
        // `default` in a namespace whose account the controller has not made yet).
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
        )));
    };
    let spec = &mut pod["spec"];
    let automount = spec["automountServiceAccountToken"]
        .as_bool()
        .or(account["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let volume = format!("kube-api-access-{suffix}");
    let mut mounted = false;
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec[list].as_array_mut() {
            for c in cs {
                let mounts = &mut c["volumeMounts"];
                let has = mounts.as_array().is_some_and(|m| {
                    m.iter()
                        .any(|m| m["mountPath"].as_str() == Some(SERVICE_ACCOUNT_DIR))
                });
                if has {
                    continue;
                }
                if !mounts.is_array() {
                    *mounts = json!([]);
                }
                if let Some(m) = mounts.as_array_mut() {
                    m.push(
                        json!({"name": volume, "readOnly": true, "mountPath": SERVICE_ACCOUNT_DIR}),
                    );
                    mounted = true;
                }
            }
        }
    }
    if mounted {
        if !spec["volumes"].is_array() {
            spec["volumes"] = json!([]);
        }
        if let Some(v) = spec["volumes"].as_array_mut() {
            v.push(json!({"name": volume, "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}}));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b", "volumeMounts": [{"name": "own", "mountPath": SERVICE_ACCOUNT_DIR}]}]}})
    }

    #[test]
    fn default_account_and_token_volume() {
        let mut p = pod();
        admit_pod(&mut p, "ns", "abcde", |_| Some(json!({}))).expect("admitted");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["volumes"][0]["name"], "kube-api-access-abcde");
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            SERVICE_ACCOUNT_DIR
        );
        // A container that mounts something there itself is left alone.
        assert_eq!(
            p["spec"]["containers"][1]["volumeMounts"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn opt_out_and_missing_account() {
        let mut p = pod();
        p["spec"]["automountServiceAccountToken"] = json!(false);
        admit_pod(&mut p, "ns", "x", |_| Some(json!({}))).expect("admitted");
        assert!(p["spec"]["volumes"].is_null());
        let mut p = pod();
        admit_pod(&mut p, "ns", "x", |_| {
            Some(json!({"automountServiceAccountToken": false}))
        })
        .expect("admitted");
        assert!(p["spec"]["volumes"].is_null(), "the account opts out");
        let mut p = pod();
        p["spec"]["serviceAccountName"] = json!("ghost");
        let err = admit_pod(&mut p, "ns", "x", |_| None).expect_err("no such account");
        assert_eq!(err.code, 403);
        assert!(err.message.contains("ns/ghost"), "{}", err.message);
    }
}
