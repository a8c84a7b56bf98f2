//! A tiny container program for kubelet and controller tests.
//!
//! `quiver-testpod serve <port> [ready-after-ms]`: HTTP on $POD_IP (or 0.0.0.0): `/healthz`
//! is 200, `/ready` is 200 after the delay (503 before). Runs until signalled.
//! `quiver-testpod exit <code> [sleep-ms]`: prints its env, sleeps, exits with `code`.

use std::io::{Read, Write};
use std::net::TcpListener;
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
        _ => {
            eprintln!(
                "usage: quiver-testpod serve <port> [ready-after-ms] | exit <code> [sleep-ms]"
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
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        let req = String::from_utf8_lossy(&buf[..n]);
        let path = req.split_whitespace().nth(1).unwrap_or("/");
        let ok = match path {
            "/ready" => start.elapsed() >= ready_after,
            _ => true,
        };
        let (code, text) = if ok {
            (200, "OK")
        } else {
            (503, "Service Unavailable")
        };
        let _ = write!(
            s,
            "HTTP/1.1 {code} {text}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
}
