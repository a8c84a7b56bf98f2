//! Startup, readiness and liveness probes as a kubelet runs them: httpGet, tcpSocket, grpc
//! (a `grpc.health.v1.Health/Check` call over HTTP/2) and exec (the command run as a local
//! process with the container's environment, working directory and volume paths).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::{Instant, timeout};

use super::process::{self, Spec};

/// What a probe runs against: the pod IP, the container's spec, and how its process was
/// started (for exec probes).
pub struct Target<'a> {
    pub ip: Ipv4Addr,
    pub container: &'a Value,
    pub process: Option<&'a Spec>,
}

pub struct ProbeState {
    spec: Value,
    next: Instant,
    successes: i64,
    failures: i64,
    /// None until the first result that crosses a threshold.
    pub result: Option<bool>,
}

impl ProbeState {
    pub fn new(spec: &Value, started: Instant) -> Option<Self> {
        if !spec.is_object() {
            return None;
        }
        let delay = spec["initialDelaySeconds"].as_u64().unwrap_or(0);
        Some(Self {
            spec: spec.clone(),
            next: started + Duration::from_secs(delay),
            successes: 0,
            failures: 0,
            result: None,
        })
    }

    /// Runs the probe if due; returns true when the result changed.
    pub async fn tick(&mut self, target: &Target<'_>) -> bool {
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        let period = self.spec["periodSeconds"].as_u64().unwrap_or(10).max(1);
        self.next = now + Duration::from_secs(period);
        let ok = run(&self.spec, target).await;
        let before = self.result;
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= self.spec["successThreshold"].as_i64().unwrap_or(1) {
                self.result = Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= self.spec["failureThreshold"].as_i64().unwrap_or(3) {
                self.result = Some(false);
            }
        }
        before != self.result
    }
}

fn port_of(p: &Value, container: &Value) -> Option<u16> {
    match p {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.parse().ok().or_else(|| {
            container["ports"]
                .as_array()?
                .iter()
                .find(|cp| cp["name"].as_str() == Some(s.as_str()))?["containerPort"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
        }),
        _ => None,
    }
}

async fn run(spec: &Value, target: &Target<'_>) -> bool {
    let (ip, container) = (target.ip, target.container);
    let limit = Duration::from_secs(spec["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
    let host = |h: &Value| {
        h.as_str()
            .and_then(|h| h.parse::<Ipv4Addr>().ok())
            .unwrap_or(ip)
    };
    if spec["httpGet"].is_object() {
        let g = &spec["httpGet"];
        let Some(port) = port_of(&g["port"], container) else {
            return false;
        };
        let path = g["path"].as_str().unwrap_or("/");
        let addr = SocketAddr::from((host(&g["host"]), port));
        return timeout(limit, http_get(addr, path)).await.unwrap_or(false);
    }
    if spec["tcpSocket"].is_object() {
        let Some(port) = port_of(&spec["tcpSocket"]["port"], container) else {
            return false;
        };
        let addr = SocketAddr::from((host(&spec["tcpSocket"]["host"]), port));
        return timeout(limit, TcpStream::connect(addr))
            .await
            .is_ok_and(|r| r.is_ok());
    }
    if spec["grpc"].is_object() {
        // The port must be a number for grpc probes (the API refuses names).
        let Some(port) = spec["grpc"]["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
        else {
            return false;
        };
        let service = spec["grpc"]["service"].as_str().unwrap_or_default();
        return timeout(limit, grpc_health(SocketAddr::from((ip, port)), service))
            .await
            .unwrap_or(false);
    }
    if spec["exec"].is_object() {
        return exec(&spec["exec"], target, limit).await;
    }
    // A probe with no handler is refused by a real API server; treat it as failing.
    false
}

/// `grpc.health.v1.Health/Check`: healthy only for a SERVING answer with grpc-status 0, as
/// the kubelet decides.
async fn grpc_health(addr: SocketAddr, service: &str) -> bool {
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return false;
    };
    let _ = tcp.set_nodelay(true);
    let Ok((client, conn)) = h2::client::handshake(tcp).await else {
        return false;
    };
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let ok = health_check(client, addr, service).await.unwrap_or(false);
    driver.abort();
    ok
}

async fn health_check(
    client: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    service: &str,
) -> Result<bool, ProbeError> {
    let mut client = client.ready().await?;
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/1.33")
        .body(())?;
    let (resp, mut body_tx) = client.send_request(req, false)?;
    body_tx.send_data(Bytes::from(grpc_frame(&health_request(service))), true)?;
    let resp = resp.await?;
    if resp.status() != http::StatusCode::OK {
        return Ok(false);
    }
    // A trailers-only answer (an error) carries grpc-status in the headers.
    if resp.headers().contains_key("grpc-status") {
        return Ok(false);
    }
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        if buf.len() > 1 << 16 {
            return Ok(false);
        }
    }
    let status_ok = body
        .trailers()
        .await?
        .and_then(|t| t.get("grpc-status").map(|v| v.as_bytes() == b"0"))
        .unwrap_or(false);
    Ok(status_ok && health_status(&buf) == Some(SERVING))
}

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// A `HealthCheckRequest { service }` message: field 1, length-delimited.
fn health_request(service: &str) -> Vec<u8> {
    let mut m = Vec::new();
    if !service.is_empty() {
        m.push(0x0a);
        put_varint(&mut m, service.len() as u64);
        m.extend_from_slice(service.as_bytes());
    }
    m
}

/// One uncompressed gRPC message: flag byte, big-endian length, bytes.
fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + msg.len());
    f.push(0);
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` (field 1) of a framed `HealthCheckResponse`; absent means UNKNOWN (0).
fn health_status(framed: &[u8]) -> Option<u64> {
    if framed.len() < 5 || framed[0] != 0 {
        return None;
    }
    let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
    let msg = framed.get(5..5 + len)?;
    let mut pos = 0;
    let mut status = 0;
    while pos < msg.len() {
        let key = get_varint(msg, &mut pos)?;
        match key & 7 {
            0 => {
                let v = get_varint(msg, &mut pos)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            1 => pos += 8,
            2 => {
                let n = usize::try_from(get_varint(msg, &mut pos)?).ok()?;
                pos = pos.checked_add(n)?;
            }
            5 => pos += 4,
            _ => return None,
        }
    }
    (pos == msg.len()).then_some(status)
}

#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error(transparent)]
    H2(#[from] h2::Error),
    #[error(transparent)]
    Http(#[from] http::Error),
}

/// Runs an exec probe's command as a local process: `command[0]` is the container's own
/// binary when it names it (as `command[0]` of the container does), else a host program;
/// container paths under volume mounts are rewritten as for the container itself.
async fn exec(e: &Value, target: &Target<'_>, limit: Duration) -> bool {
    let Some(spec) = target.process else {
        return false;
    };
    let argv: Vec<&str> = e["command"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some((&first, rest)) = argv.split_first() else {
        return false;
    };
    let own = target.container["command"][0].as_str() == Some(first)
        || spec.program.file_name().and_then(|f| f.to_str()) == Some(first);
    let program = if own {
        spec.program.clone()
    } else {
        std::path::PathBuf::from(process::rewrite_paths(first, &spec.mounts))
    };
    let mut cmd = Command::new(program);
    cmd.args(rest.iter().map(|a| process::rewrite_paths(a, &spec.mounts)))
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if !own && let Ok(path) = std::env::var("PATH") {
        // Host programs (sh, cat, test) are found on the kubelet's own PATH unless the
        // container sets one.
        if !spec.env.iter().any(|(k, _)| k == "PATH") {
            cmd.env("PATH", path);
        }
    }
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    match timeout(limit, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        _ => false,
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (200..400).contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;
    use tonic_health::ServingStatus;

    #[test]
    fn health_messages_encode_and_decode() {
        assert!(health_request("").is_empty());
        assert_eq!(health_request("ab"), vec![0x0a, 2, b'a', b'b']);
        assert_eq!(grpc_frame(&[7]), vec![0, 0, 0, 0, 1, 7]);
        assert_eq!(health_status(&grpc_frame(&[0x08, 0x01])), Some(SERVING));
        assert_eq!(health_status(&grpc_frame(&[0x08, 0x02])), Some(2));
        // An empty message is UNKNOWN, an unknown string field is skipped.
        assert_eq!(health_status(&grpc_frame(&[])), Some(0));
        assert_eq!(
            health_status(&grpc_frame(&[0x12, 1, b'x', 0x08, 0x01])),
            Some(SERVING)
        );
        // Truncated or compressed frames are not an answer.
        assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x08]), None);
        assert_eq!(health_status(&[1, 0, 0, 0, 0]), None);
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        let mut pos = 0;
        assert_eq!(get_varint(&v, &mut pos), Some(300));
        assert_eq!(pos, 2);
    }

    async fn health_server() -> (SocketAddr, tonic_health::server::HealthReporter) {
        let (reporter, svc) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming),
        );
        (addr, reporter)
    }

    fn grpc_probe(port: u16, service: &str) -> Value {
        json!({"grpc": {"port": port, "service": service}, "timeoutSeconds": 2})
    }

    #[tokio::test]
    async fn grpc_probe_follows_the_health_service() {
        let (addr, reporter) = health_server().await;
        let c = json!({});
        let t = Target {
            ip: Ipv4Addr::LOCALHOST,
            container: &c,
            process: None,
        };
        // tonic-health serves "" as SERVING from the start.
        assert!(run(&grpc_probe(addr.port(), ""), &t).await);
        reporter
            .set_service_status("quiver", ServingStatus::Serving)
            .await;
        assert!(run(&grpc_probe(addr.port(), "quiver"), &t).await);
        reporter
            .set_service_status("quiver", ServingStatus::NotServing)
            .await;
        assert!(!run(&grpc_probe(addr.port(), "quiver"), &t).await);
        // An unknown service is NOT_FOUND (a trailers-only answer): not healthy.
        assert!(!run(&grpc_probe(addr.port(), "other"), &t).await);
        // Nothing listening.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        assert!(!run(&grpc_probe(free, ""), &t).await);
        // A plain HTTP/1 server is not a gRPC health service.
        let http1 = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = http1.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = http1.accept().await {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            }
        });
        assert!(!run(&grpc_probe(port, ""), &t).await);
    }

    #[tokio::test]
    async fn exec_probe_runs_with_the_container_env_and_volume_paths() {
        let dir = std::env::temp_dir().join(format!("quiver-exec-probe-{}", std::process::id()));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let spec = Spec {
            program: PathBuf::from("/bin/true"),
            args: vec![],
            env: vec![("MARK".into(), "ready".into())],
            workdir: dir.clone(),
            log: dir.join("log"),
            mounts: vec![("/data".into(), data.clone())],
            binds: vec![],
        };
        let c = json!({"command": ["my-server"]});
        let t = Target {
            ip: Ipv4Addr::LOCALHOST,
            container: &c,
            process: Some(&spec),
        };
        let probe = |cmd: Value| json!({"exec": {"command": cmd}, "timeoutSeconds": 1});
        assert!(!run(&probe(json!(["test", "-f", "/data/ready"])), &t).await);
        std::fs::write(data.join("ready"), b"").expect("write");
        assert!(run(&probe(json!(["test", "-f", "/data/ready"])), &t).await);
        assert!(run(&probe(json!(["sh", "-c", "test \"$MARK\" = ready"])), &t).await);
        assert!(!run(&probe(json!(["sh", "-c", "exit 3"])), &t).await);
        // The container's own binary (here /bin/true) stands for its command[0].
        assert!(run(&probe(json!(["my-server", "health"])), &t).await);
        // Over the timeout is a failure.
        assert!(!run(&probe(json!(["sleep", "5"])), &t).await);
        assert!(!run(&probe(json!([])), &t).await);
        assert!(!run(&probe(json!(["/no/such/program"])), &t).await);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
