//! A tiny container program for kubelet and controller tests.
//!
//! `quiver-testpod serve <port> [ready-after-ms]`: HTTP on $POD_IP (or 0.0.0.0): `/healthz`
//! is 200, `/ready` is 200 after the delay (503 before) unless `/readiness/off` was called
//! (`/readiness/on` undoes it), `/name` answers with $POD_NAME. Runs until signalled.
//! `quiver-testpod exit <code> [sleep-ms]`: prints its env, sleeps, exits with `code`.
//! `quiver-testpod whoami`: with in-cluster config exactly as a pod's program uses it
//! (`kube::Config::incluster()`: the service-account files at their real path and
//! `KUBERNETES_SERVICE_HOST`), asks the API who it is and reads its own Pod; prints
//! `user=...` and `pod-uid=...`, exits 1 with the error otherwise.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    match args.first().map(String::as_str) {
        Some("serve") => serve(num(1, 8080) as u16, Duration::from_millis(num(2, 0))),
        Some("exit") => {
            for key in [
                "POD_NAME",
                "POD_NAMESPACE",
                "POD_IP",
                "JOB_COMPLETION_INDEX",
            ] {
                if let Ok(v) = std::env::var(key) {
                    println!("{key}={v}");
                }
            }
            std::thread::sleep(Duration::from_millis(num(2, 0)));
            let code = num(1, 0) as i32;
            eprintln!("exiting with {code}");
            std::process::exit(code);
        }
        Some("whoami") => match whoami() {
            Ok(()) => {}
            Err(e) => {
                eprintln!("whoami: {e}");
                std::process::exit(1);
            }
        },
        _ => {
            eprintln!(
                "usage: quiver-testpod serve <port> [ready-after-ms] | exit <code> [sleep-ms] | whoami"
            );
            std::process::exit(2);
        }
    }
}

fn serve(port: u16, ready_after: Duration) {
    let ip = std::env::var("POD_IP").unwrap_or_else(|_| "0.0.0.0".into());
    let listener = match TcpListener::bind((ip.as_str(), port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind {ip}:{port}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {ip}:{port}");
    let start = Instant::now();
    let name: Arc<str> = std::env::var("POD_NAME").unwrap_or_default().into();
    let off = Arc::new(AtomicBool::new(false));
    for stream in listener.incoming() {
        let Ok(s) = stream else { continue };
        let (name, off) = (name.clone(), off.clone());
        // A slow client must not hold up the probes.
        std::thread::spawn(move || answer(s, start, ready_after, &name, &off));
    }
}

fn whoami() -> Result<(), String> {
    use k8s_openapi::api::core::v1::Pod;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let cfg = kube::Config::incluster().map_err(|e| format!("in-cluster config: {e}"))?;
        let ns = cfg.default_namespace.clone();
        let client = kube::Client::try_from(cfg).map_err(|e| e.to_string())?;
        let review = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
        let req = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
            .header("content-type", "application/json")
            .body(review.to_string().into_bytes())
            .map_err(|e| e.to_string())?;
        let answer: serde_json::Value = client
            .request(req)
            .await
            .map_err(|e| format!("SelfSubjectReview: {e}"))?;
        let user = answer["status"]["userInfo"]["username"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        println!("namespace={ns}");
        println!("user={user}");
        let name = std::env::var("POD_NAME").map_err(|_| "POD_NAME is not set".to_string())?;
        let pods: kube::Api<Pod> = kube::Api::namespaced(client, &ns);
        let me = pods
            .get(&name)
            .await
            .map_err(|e| format!("get pod {ns}/{name}: {e}"))?;
        println!("pod-uid={}", me.metadata.uid.unwrap_or_default());
        Ok(())
    })
}

fn answer(mut s: TcpStream, start: Instant, ready_after: Duration, name: &str, off: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap_or(0);
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("/");
    let mut body = String::new();
    let ok = match path {
        "/ready" => start.elapsed() >= ready_after && !off.load(Ordering::SeqCst),
        "/readiness/off" => {
            off.store(true, Ordering::SeqCst);
            println!("readiness off");
            true
        }
        "/readiness/on" => {
            off.store(false, Ordering::SeqCst);
            println!("readiness on");
            true
        }
        "/name" => {
            body = name.to_string();
            true
        }
        _ => true,
    };
    let (code, text) = if ok {
        (200, "OK")
    } else {
        (503, "Service Unavailable")
    };
    let _ = write!(
        s,
        "HTTP/1.1 {code} {text}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
