//! Startup, readiness and liveness probes: httpGet and tcpSocket as a kubelet runs them.
//! gRPC probes are checked as a TCP connect to the port (no grpc.health.v1 call); exec
//! probes are not run and count as success.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

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
    pub async fn tick(&mut self, ip: Ipv4Addr, container: &Value) -> bool {
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        let period = self.spec["periodSeconds"].as_u64().unwrap_or(10).max(1);
        self.next = now + Duration::from_secs(period);
        let ok = run(&self.spec, ip, container).await;
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

async fn run(spec: &Value, ip: Ipv4Addr, container: &Value) -> bool {
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
    let tcp_port = if spec["tcpSocket"].is_object() {
        Some((
            host(&spec["tcpSocket"]["host"]),
            port_of(&spec["tcpSocket"]["port"], container),
        ))
    } else if spec["grpc"].is_object() {
        Some((ip, port_of(&spec["grpc"]["port"], container)))
    } else {
        None
    };
    match tcp_port {
        Some((h, Some(port))) => timeout(limit, TcpStream::connect(SocketAddr::from((h, port))))
            .await
            .is_ok_and(|r| r.is_ok()),
        Some((_, None)) => false,
        None => true,
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
