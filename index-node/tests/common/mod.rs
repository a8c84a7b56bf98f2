//! Helpers for tests that run real `index-node` processes on loopback addresses.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const GRPC: u16 = 7100;
pub const HTTP: u16 = 7101;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_index-node")
}

/// A fresh directory for one test.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("quiver-node-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs index-node to completion; panics with its stderr on failure.
pub fn run_ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "index-node {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn run_err(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        !out.status.success(),
        "index-node {args:?} should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn spawn(name: &str, dir: &Path, args: &[String], env: &[(&str, &str)]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        Proc {
            child,
            name: name.to_string(),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// A tiny HTTP/1.0 GET (status code, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Waits until `/readyz` answers 200; panics with the node log on timeout.
pub fn wait_ready(p: &Proc, ip: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let addr = format!("{ip}:{HTTP}");
    while Instant::now() < deadline {
        if let Some((200, _)) = http_get(&addr, "/readyz") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{} not ready within {within:?}; log:\n{}",
        p.name,
        p.log_text()
    );
}

pub fn storage_args(storage: &str, version: &str) -> Vec<String> {
    storage_args_at(storage, "test", "idx", version)
}

/// `--storage`, `--namespace`, `--index`, `--version`.
pub fn storage_args_at(storage: &str, namespace: &str, index: &str, version: &str) -> Vec<String> {
    [
        "--storage",
        storage,
        "--namespace",
        namespace,
        "--index",
        index,
        "--version",
        version,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Trains and builds a synthetic version (`parts` > 1 exercises the parallel build).
pub fn build_version(
    storage: &str,
    version: &str,
    n: usize,
    shards: u32,
    parts: u32,
    id_offset: u64,
    env: &[(&str, &str)],
) {
    build_version_at(
        storage,
        ("test", "idx", version),
        n,
        shards,
        parts,
        id_offset,
        env,
    )
}

/// [`build_version`] of `(namespace, index, version)`.
pub fn build_version_at(
    storage: &str,
    (namespace, index, version): (&str, &str, &str),
    n: usize,
    shards: u32,
    parts: u32,
    id_offset: u64,
    env: &[(&str, &str)],
) {
    let mut train: Vec<String> = vec!["train".into()];
    train.extend(storage_args_at(storage, namespace, index, version));
    train.extend(
        [
            "--synthetic",
            &n.to_string(),
            "--dim",
            "16",
            "--seed",
            "7",
            "--nlist",
            "32",
            "--iters",
            "8",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    run_ok(&train.iter().map(String::as_str).collect::<Vec<_>>(), env);
    let mut base: Vec<String> = vec!["build".into()];
    base.extend(storage_args_at(storage, namespace, index, version));
    base.extend(
        [
            "--synthetic",
            &n.to_string(),
            "--dim",
            "16",
            "--seed",
            "7",
            "--shards",
            &shards.to_string(),
            "--parts",
            &parts.to_string(),
            "--eval-queries",
            "50",
            "--eval-k",
            "10",
            "--default-nprobe",
            "8",
            "--id-offset",
            &id_offset.to_string(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    if parts == 1 {
        run_ok(&base.iter().map(String::as_str).collect::<Vec<_>>(), env);
    } else {
        for p in 0..parts {
            let mut a = base.clone();
            a.extend(["--part".to_string(), p.to_string()]);
            run_ok(&a.iter().map(String::as_str).collect::<Vec<_>>(), env);
        }
        let mut a = base.clone();
        a.push("--finalize".into());
        run_ok(&a.iter().map(String::as_str).collect::<Vec<_>>(), env);
    }
}

pub fn serve_args(
    role: &str,
    ip: &str,
    storage: &str,
    versions_file: &Path,
    extra: &[String],
) -> Vec<String> {
    let mut a: Vec<String> = [
        "serve",
        "--role",
        role,
        "--listen-ip",
        ip,
        "--grpc-port",
        &GRPC.to_string(),
        "--http-port",
        &HTTP.to_string(),
        "--storage",
        storage,
        "--namespace",
        "test",
        "--index",
        "idx",
        "--shutdown-delay-ms",
        "200",
        "--versions-poll-ms",
        "50",
        "--versions-file",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(versions_file.display().to_string());
    a.extend(extra.iter().cloned());
    a
}

pub fn write_versions(path: &Path, versions: &[&str], active: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::json!({"versions": versions, "active": active}).to_string(),
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `index-node loadtest` against `router` for `secs` seconds at concurrency `conc`.
pub fn loadtest(router: &str, queries: &str, secs: f64, conc: usize) -> std::process::Child {
    std::process::Command::new(bin())
        .args([
            "loadtest",
            "--target",
            router,
            "--queries",
            queries,
            "--k",
            "10",
            "--concurrency",
            &conc.to_string(),
            "--duration-secs",
            &secs.to_string(),
            "--json",
            "--timeout-ms",
            "5000",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a loadtest and returns its JSON summary.
pub fn summary(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "loadtest failed");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim().lines().last().unwrap()).unwrap()
}
