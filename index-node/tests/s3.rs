//! The s3:// storage path against a real S3-compatible server (moto in server mode) started
//! by the test on 127.0.0.1: train, build, serve a shard and a router from it, query.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Moto(std::process::Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_moto() -> (Moto, u16) {
    let check = Command::new("python3")
        .args(["-c", "import moto.server"])
        .output();
    match check {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "this test needs moto's S3 server: run `pip install 'moto[server]'` (python3 -m moto.server must work)"
        ),
    }
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let moto = Moto(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (moto, port)
}

/// CreateBucket (moto does not check signatures).
fn create_bucket(port: u16, bucket: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "create bucket: {out}");
}

#[test]
fn s3_storage_round_trip() {
    let (_moto, port) = start_moto();
    create_bucket(port, "quiver");
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let storage = "s3://quiver/clusters/a";
    build_version(storage, "v1", 3_000, 1, 2, 0, &env);

    let dir = tmpdir("s3");
    let vfile = dir.join("versions.json");
    write_versions(&vfile, &["v1"], "v1");
    let shard_ip = "127.61.3.2";
    let router_ip = "127.61.3.3";
    let a = serve_args(
        "shard",
        shard_ip,
        storage,
        &vfile,
        &["--shard".into(), "0".into()],
    );
    let shard = Proc::spawn("shard", &dir, &a, &env);
    let a = serve_args(
        "router",
        router_ip,
        storage,
        &vfile,
        &["--shards".into(), format!("0={shard_ip}:{GRPC}")],
    );
    let router = Proc::spawn("router", &dir, &a, &env);
    wait_ready(&shard, shard_ip, Duration::from_secs(60));
    wait_ready(&router, router_ip, Duration::from_secs(60));
    // Queries read from S3 too.
    let out = run_ok(
        &[
            "loadtest",
            "--target",
            &format!("{router_ip}:{GRPC}"),
            "--queries",
            "s3://quiver/clusters/a/test/idx/versions/v1/eval.fvecs",
            "--gt",
            "s3://quiver/clusters/a/test/idx/versions/v1/eval.ivecs",
            "--k",
            "10",
            "--count",
            "200",
            "--concurrency",
            "2",
            "--json",
            "--fail-on-error",
        ],
        &env,
    );
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["ok"], 200, "{s}");
    assert!(s["recall"].as_f64().unwrap() > 0.8, "{s}");
    assert_eq!(s["versions"]["v1"]["answers"], 200, "{s}");
}
