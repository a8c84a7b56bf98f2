//! `GET .../pods/{name}/log`: as a real API server does, find the pod's node and proxy the
//! request to that node's kubelet (`https://<InternalIP>:<daemonEndpoints port>/containerLogs/
//! <ns>/<pod>/<container>`), streaming its answer back (`follow=true` stays open). The
//! kubelet's serving certificate is not verified, as kube-apiserver does not without
//! `--kubelet-certificate-authority`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, DigitallySignedStruct, SignatureScheme};

use super::error::ApiError;
use super::store::Store;

/// The kubelet port when a Node does not advertise one.
const DEFAULT_KUBELET_PORT: u64 = 10250;

/// The container a log request is about: `container` when given (and the pod has it), else
/// the pod's only container.
pub fn pick_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let names: Vec<&str> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    match asked {
        Some(c) if names.contains(&c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None => {
            let main: Vec<&str> = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            match main.as_slice() {
                [one] => Ok(one.to_string()),
                _ => Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    main.join(" ")
                ))),
            }
        }
    }
}

/// `https://ip:port` of the kubelet on `node`.
pub fn kubelet_address(node: &Value) -> Option<(String, u16)> {
    let ip = node["status"]["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?
        .to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Some((ip, u16::try_from(port).ok()?))
}

pub async fn proxy(
    store: &Store,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let pods = store
        .resolve("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not registered"))?;
    let nodes = store
        .resolve("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not registered"))?;
    let pod = store.get(&pods, ns, name)?;
    let container = pick_container(&pod, q.get("container").map(String::as_str))?;
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let node = store.get(&nodes, "", node_name)?;
    let (ip, port) = kubelet_address(&node)
        .ok_or_else(|| ApiError::internal(format!("node {node_name} has no InternalIP address")))?;
    let mut query: Vec<String> = q
        .iter()
        .filter(|(k, _)| k.as_str() != "container" && k.as_str() != "pretty")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    query.sort();
    let path = format!(
        "/containerLogs/{ns}/{name}/{container}{}{}",
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    let url = format!("https://{ip}:{port}{path}");
    let fail = |e: String| ApiError::internal(format!("Get \"{url}\": {e}"));
    let tcp = tokio::net::TcpStream::connect((ip.as_str(), port))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let server = ServerName::try_from(ip.clone()).map_err(|e| fail(e.to_string()))?;
    let tls = connector()
        .map_err(|e| fail(e.to_string()))?
        .connect(server, tcp)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "kubelet log connection ended");
        }
    });
    let req = http::Request::get(&path)
        .header(http::header::HOST, format!("{ip}:{port}"))
        .body(Body::empty())
        .map_err(|e| fail(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        // The kubelet's plain-text reason, as a Status the client can show.
        let text = read_small(resp.into_body()).await;
        return Err(ApiError {
            code: status.as_u16(),
            reason: if status == http::StatusCode::NOT_FOUND {
                "NotFound"
            } else {
                "BadRequest"
            },
            message: text.trim().to_string(),
            details: None,
        });
    }
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = parts.status;
    if let Some(ct) = parts.headers.get(http::header::CONTENT_TYPE) {
        out.headers_mut()
            .insert(http::header::CONTENT_TYPE, ct.clone());
    }
    Ok(out)
}

/// The first 64 KiB of a (small, error) body.
async fn read_small(body: hyper::body::Incoming) -> String {
    use futures::StreamExt;
    let mut stream = Body::new(body).into_data_stream();
    let mut out = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        out.extend_from_slice(&chunk);
        if out.len() > 64 * 1024 {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn connector() -> Result<TlsConnector, rustls::Error> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyKubeletCert(provider)))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// Accepts the kubelet's certificate unverified (signatures on the handshake are still
/// checked), as kube-apiserver does by default.
#[derive(Debug)]
struct AnyKubeletCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyKubeletCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_the_asked_one_or_the_only_one() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "node"}]}});
        assert_eq!(pick_container(&one, None).unwrap(), "node");
        assert_eq!(pick_container(&one, Some("node")).unwrap(), "node");
        let e = pick_container(&one, Some("x")).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "container x is not valid for pod p")
        );
        let two = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let e = pick_container(&two, None).unwrap_err();
        assert!(e.message.contains("choose one of: [a b]"), "{}", e.message);
    }

    #[test]
    fn the_kubelet_is_found_by_internal_ip_and_daemon_port() {
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 4321}}}});
        assert_eq!(kubelet_address(&n), Some(("127.0.0.1".into(), 4321)));
        let d = json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}});
        assert_eq!(kubelet_address(&d), Some(("10.0.0.2".into(), 10250)));
        assert_eq!(kubelet_address(&json!({})), None);
    }
}
