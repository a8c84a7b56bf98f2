//! Service semantics of a real API server: `spec.clusterIP` allocated from the service range
//! (here the loopback block 127.96.0.0/16, so that the proxy beside the kubelet can listen on
//! it), honoured when requested and free, immutable once set and kept when an update omits
//! it; port defaults; and the `default/kubernetes` Service that points at the API server.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::error::ApiError;
use super::time::next_random;

/// The service range, as `--service-cluster-ip-range` of a real API server.
pub const SERVICE_CIDR: &str = "127.96.0.0/16";
const BASE: u32 = 0x7f60_0000;
const SIZE: u32 = 1 << 16;
/// The first address of the range, kept for `default/kubernetes` as a real server does.
pub const KUBERNETES_IP: Ipv4Addr = Ipv4Addr::new(127, 96, 0, 1);

pub fn in_range(ip: Ipv4Addr) -> bool {
    u32::from(ip) & !(SIZE - 1) == BASE
}

/// Every type but ExternalName gets a cluster IP.
fn needs_cluster_ip(svc: &Value) -> bool {
    svc["spec"]["type"].as_str() != Some("ExternalName")
}

/// The allocated address of a stored Service (None for headless and ExternalName).
pub fn allocated(svc: &Value) -> Option<Ipv4Addr> {
    svc["spec"]["clusterIP"].as_str()?.parse().ok()
}

fn requested(spec: &Value) -> Option<String> {
    spec["clusterIP"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| spec["clusterIPs"][0].as_str().filter(|s| !s.is_empty()))
        .map(String::from)
}

/// Port defaults: `protocol: TCP`, `targetPort` = `port`.
pub fn default_ports(svc: &mut Value) {
    if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for p in ports {
            if p["protocol"].is_null() {
                p["protocol"] = json!("TCP");
            }
            if p["targetPort"].is_null() || p["targetPort"] == json!(0) || p["targetPort"] == "" {
                p["targetPort"] = p["port"].clone();
            }
        }
    }
    let ty = svc["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    if ty != "ExternalName"
        && svc["spec"].is_object()
        && svc["spec"]["internalTrafficPolicy"].is_null()
    {
        svc["spec"]["internalTrafficPolicy"] = json!("Cluster");
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer")
        && svc["spec"]["externalTrafficPolicy"].is_null()
    {
        svc["spec"]["externalTrafficPolicy"] = json!("Cluster");
    }
}

fn invalid(name: &str, cause: String) -> ApiError {
    ApiError::invalid("Service", name, &[cause])
}

fn pick(used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    // Random offset, then the next free one, as the real allocator does; .0, .1 (kubernetes)
    // and the last address are never handed out.
    let first = 2;
    let count = SIZE - 3;
    let start = (next_random() % u64::from(count)) as u32;
    (0..count)
        .map(|i| Ipv4Addr::from(BASE + first + (start + i) % count))
        .find(|ip| !used.contains(ip))
}

fn set_single_stack(spec: &mut Value) {
    if spec["ipFamilies"].is_null() {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    if spec["ipFamilyPolicy"].is_null() {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
}

/// Allocates or checks `spec.clusterIP` on a create (`old` None) or an update of the main
/// resource. `used` holds the addresses held by other Services.
pub fn on_write(
    old: Option<&Value>,
    svc: &mut Value,
    used: &HashSet<Ipv4Addr>,
    name: &str,
) -> Result<(), ApiError> {
    if !needs_cluster_ip(svc) {
        return Ok(());
    }
    if !svc["spec"].is_object() {
        svc["spec"] = json!({});
    }
    if let Some(old) = old.filter(|o| needs_cluster_ip(o) && requested(&o["spec"]).is_some()) {
        let spec = &mut svc["spec"];
        // An update that omits the allocated values keeps them, as a real server does.
        for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            let missing = match &spec[k] {
                Value::Null => true,
                Value::String(s) => s.is_empty(),
                Value::Array(a) => a.is_empty(),
                _ => false,
            };
            if missing && !old["spec"][k].is_null() {
                spec[k] = old["spec"][k].clone();
            }
        }
        if spec["clusterIP"] != old["spec"]["clusterIP"] {
            return Err(ApiError::invalid(
                "Service",
                name,
                &[
                    format!(
                        "spec.clusterIPs[0]: Invalid value: []string{{{}}}: may not change once set",
                        spec["clusterIP"]
                    ),
                    format!(
                        "spec.clusterIP: Invalid value: {}: field is immutable",
                        spec["clusterIP"]
                    ),
                ],
            ));
        }
        if spec["clusterIPs"] != old["spec"]["clusterIPs"] {
            return Err(invalid(
                name,
                format!(
                    "spec.clusterIPs[0]: Invalid value: {}: may not change once set",
                    spec["clusterIPs"]
                ),
            ));
        }
        return Ok(());
    }
    let spec = &mut svc["spec"];
    let ip = match requested(spec) {
        Some(s) if s == "None" => "None".to_string(),
        Some(s) => {
            let ip: Ipv4Addr = s.parse().map_err(|_| {
                invalid(
                    name,
                    format!(
                        "spec.clusterIPs[0]: Invalid value: \"{s}\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
                    ),
                )
            })?;
            if !in_range(ip) {
                return Err(invalid(
                    name,
                    format!(
                        "spec.clusterIPs: Invalid value: []string{{\"{s}\"}}: failed to allocate IP {s}: provided IP is not in the valid range. The range of valid IPs is {SERVICE_CIDR}"
                    ),
                ));
            }
            if used.contains(&ip) {
                return Err(invalid(
                    name,
                    format!(
                        "spec.clusterIPs: Invalid value: []string{{\"{s}\"}}: failed to allocate IP {s}: provided IP is already allocated"
                    ),
                ));
            }
            s
        }
        None => pick(used)
            .ok_or_else(|| {
                invalid(
                    name,
                    "spec.clusterIPs: Internal error: failed to allocate a serviceIP: range is full"
                        .into(),
                )
            })?
            .to_string(),
    };
    if let Some(first) = spec["clusterIPs"][0].as_str()
        && first != ip
    {
        return Err(invalid(
            name,
            format!(
                "spec.clusterIPs[0]: Invalid value: \"{first}\": must match `clusterIP` when `clusterIP` is set"
            ),
        ));
    }
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    set_single_stack(spec);
    Ok(())
}

/// `default/kubernetes`, its Endpoints and EndpointSlice, pointing at the API server.
pub fn kubernetes_objects(api: std::net::SocketAddr) -> (Value, Value, Value) {
    let ip = api.ip().to_string();
    let port = api.port();
    let svc = json!({
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": KUBERNETES_IP.to_string(), "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}
    });
    let endpoints = json!({
        "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]
    });
    let slice = json!({
        "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
    });
    (svc, endpoints, slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "s"}, "spec": spec})
    }

    #[test]
    fn allocates_in_range_and_keeps_headless() {
        let mut s = svc(json!({"ports": [{"port": 80}]}));
        on_write(None, &mut s, &HashSet::new(), "s").expect("allocate");
        let ip = allocated(&s).expect("ip");
        assert!(in_range(ip) && ip != KUBERNETES_IP, "{ip}");
        assert_eq!(s["spec"]["clusterIPs"], json!([ip.to_string()]));
        assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
        let mut h = svc(json!({"clusterIP": "None"}));
        on_write(None, &mut h, &HashSet::new(), "h").expect("headless");
        assert_eq!(h["spec"]["clusterIP"], "None");
        assert_eq!(h["spec"]["clusterIPs"], json!(["None"]));
        let mut e = svc(json!({"type": "ExternalName", "externalName": "x.example"}));
        on_write(None, &mut e, &HashSet::new(), "e").expect("external name");
        assert!(e["spec"]["clusterIP"].is_null());
    }

    #[test]
    fn requested_addresses() {
        let used: HashSet<Ipv4Addr> = [KUBERNETES_IP].into();
        let mut s = svc(json!({"clusterIP": "127.96.3.4"}));
        on_write(None, &mut s, &used, "s").expect("free address");
        assert_eq!(s["spec"]["clusterIPs"], json!(["127.96.3.4"]));
        for bad in ["127.96.0.1", "10.0.0.1", "not-an-ip"] {
            let mut s = svc(json!({"clusterIP": bad}));
            let e = on_write(None, &mut s, &used, "s").expect_err(bad);
            assert_eq!((e.code, e.reason), (422, "Invalid"), "{bad}");
        }
        let mut s = svc(json!({"clusterIP": "127.96.0.1"}));
        let e = on_write(None, &mut s, &used, "s").expect_err("taken");
        assert!(
            e.message.contains("provided IP is already allocated"),
            "{}",
            e.message
        );
    }

    #[test]
    fn updates_keep_and_protect_the_address() {
        let mut old = svc(json!({}));
        on_write(None, &mut old, &HashSet::new(), "s").expect("allocate");
        let mut omitted = svc(json!({"ports": [{"port": 81}]}));
        on_write(Some(&old), &mut omitted, &HashSet::new(), "s").expect("omitted");
        assert_eq!(omitted["spec"]["clusterIP"], old["spec"]["clusterIP"]);
        assert_eq!(omitted["spec"]["clusterIPs"], old["spec"]["clusterIPs"]);
        let mut changed = svc(json!({"clusterIP": "127.96.9.9"}));
        let e = on_write(Some(&old), &mut changed, &HashSet::new(), "s").expect_err("immutable");
        assert!(e.message.contains("field is immutable"), "{}", e.message);
    }

    #[test]
    fn pick_skips_used_addresses() {
        let used: HashSet<Ipv4Addr> = (2..SIZE - 2).map(|o| Ipv4Addr::from(BASE + o)).collect();
        assert_eq!(pick(&used), Some(Ipv4Addr::from(BASE + SIZE - 2)));
    }

    #[test]
    fn port_defaults() {
        let mut s = svc(
            json!({"ports": [{"port": 80}, {"port": 90, "targetPort": "web", "protocol": "UDP"}]}),
        );
        default_ports(&mut s);
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(
            s["spec"]["ports"][1],
            json!({"port": 90, "protocol": "UDP", "targetPort": "web"})
        );
        assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");
    }
}
