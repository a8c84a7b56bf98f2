//! Two shards × two replicas + a router as real processes on loopback addresses: build two
//! versions, serve, swap under load, kill a replica under load, feed bad input.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use quiver_proto::admin_client::AdminClient;
use quiver_proto::query_client::QueryClient;
use quiver_proto::shard_client::ShardClient;
use quiver_proto::{
    BatchSearchRequest, EvaluateRequest, ListStatsRequest, SearchRequest, ShardSearchRequest,
    StatusRequest, Vector, VersionState,
};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const NET: &str = "127.61.1";

fn ip(host: u8) -> String {
    format!("{NET}.{host}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_swaps_versions_and_survives_replica_loss() {
    tokio::time::timeout(Duration::from_secs(240), scenario())
        .await
        .expect("scenario timed out");
}

async fn scenario() {
    let dir = tmpdir("cluster");
    let storage = format!("file://{}", dir.join("store").display());
    // v1: one build part. v2: same data, ids offset by 1e6 (so any answer mixing versions is
    // visible in the ids), built in two parallel parts.
    build_version(&storage, "v1", 20_000, 2, 1, 0, &[]);
    build_version(&storage, "v2", 20_000, 2, 2, 1_000_000, &[]);

    let vfile = dir.join("versions.json");
    write_versions(&vfile, &["v1", "v2"], "v1");
    let shard_ips = [(0u32, 2u8), (0, 3), (1, 4), (1, 5)];
    let mut shards = Vec::new();
    for &(shard, host) in &shard_ips {
        let a = serve_args(
            "shard",
            &ip(host),
            &storage,
            &vfile,
            &["--shard".into(), shard.to_string()],
        );
        shards.push(Proc::spawn(&format!("shard{shard}-{host}"), &dir, &a, &[]));
    }
    let spec = format!(
        "0={}:{GRPC},{}:{GRPC};1={}:{GRPC},{}:{GRPC}",
        ip(2),
        ip(3),
        ip(4),
        ip(5)
    );
    let router_ip = ip(10);
    let ra = serve_args(
        "router",
        &router_ip,
        &storage,
        &vfile,
        &["--shards".into(), spec, "--max-k".into(), "100".into()],
    );
    let router = Proc::spawn("router", &dir, &ra, &[]);
    for (p, &(_, host)) in shards.iter().zip(&shard_ips) {
        wait_ready(p, &ip(host), Duration::from_secs(60));
    }
    wait_ready(&router, &router_ip, Duration::from_secs(60));
    let raddr = format!("{router_ip}:{GRPC}");
    let eval_q = dir.join("store/test/idx/versions/v1/eval.fvecs");
    let eval_q = eval_q.to_str().unwrap();

    // Status: every shard holds both versions warm, v1 active.
    let mut admin = AdminClient::connect(format!("http://{}:{GRPC}", ip(2)))
        .await
        .unwrap();
    let st = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.active_version, "v1");
    let states: Vec<_> = st
        .versions
        .iter()
        .map(|v| (v.version.clone(), v.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("v1".into(), VersionState::Active as i32),
            ("v2".into(), VersionState::Warm as i32)
        ],
        "{st:?}"
    );
    assert!(st.versions.iter().all(|v| v.vectors > 0 && v.bytes > 0));

    // Recall gate on the router.
    let mut radmin = AdminClient::connect(format!("http://{raddr}"))
        .await
        .unwrap();
    for v in ["v1", "v2"] {
        let e = radmin
            .evaluate(EvaluateRequest {
                version: v.into(),
                k: 10,
                nprobe: Some(8),
                max_queries: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(e.queries, 50);
        assert!(e.recall > 0.8, "recall of {v}: {}", e.recall);
    }

    // Swap v1 -> v2 under load: no failed query, and no answer mixing versions.
    let lt = loadtest(&raddr, eval_q, 4.0, 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    write_versions(&vfile, &["v1", "v2"], "v2");
    let s = tokio::task::spawn_blocking(move || summary(lt))
        .await
        .unwrap();
    eprintln!("swap under load: {s}");
    assert_eq!(s["failed"], 0, "{s}");
    let v1 = &s["versions"]["v1"];
    let v2 = &s["versions"]["v2"];
    assert!(v1["answers"].as_u64().unwrap() > 0, "{s}");
    assert!(v2["answers"].as_u64().unwrap() > 0, "{s}");
    assert!(
        v1["max_id"].as_u64().unwrap() < 1_000_000,
        "v1 answer with a v2 id: {s}"
    );
    assert!(
        v2["min_id"].as_u64().unwrap() >= 1_000_000,
        "v2 answer with a v1 id: {s}"
    );
    let st = radmin.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.active_version, "v2");

    // Kill one replica of shard 0 under load: the other replica answers, nothing fails...
    let lt = loadtest(&raddr, eval_q, 3.0, 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // ... and stop one replica of shard 1 gracefully (SIGTERM) at the same time.
    shards[0].signal("-KILL");
    shards[3].signal("-TERM");
    let s = tokio::task::spawn_blocking(move || summary(lt))
        .await
        .unwrap();
    eprintln!("replicas killed / stopped under load: {s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert!(s["ok"].as_u64().unwrap() > 100, "{s}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stopped = loop {
        if let Some(st) = shards[3].child.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shard did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(stopped.success(), "shard exit on SIGTERM: {stopped:?}");

    // Bad input: INVALID_ARGUMENT naming the field, NOT_FOUND for an unknown version.
    let mut q = QueryClient::connect(format!("http://{raddr}"))
        .await
        .unwrap();
    let good = vec![0.1f32; 16];
    let req =
        |vector: Vec<f32>, k: u32, nprobe: Option<u32>, version: Option<&str>| SearchRequest {
            vector,
            k,
            nprobe,
            allow_partial: false,
            version: version.map(str::to_string),
        };
    let cases = [
        (
            req(vec![0.1; 15], 10, None, None),
            Code::InvalidArgument,
            "vector: dimension 15",
        ),
        (
            req(vec![], 10, None, None),
            Code::InvalidArgument,
            "vector: empty",
        ),
        (
            req(
                {
                    let mut v = good.clone();
                    v[3] = f32::NAN;
                    v
                },
                10,
                None,
                None,
            ),
            Code::InvalidArgument,
            "vector[3]",
        ),
        (
            req(
                {
                    let mut v = good.clone();
                    v[0] = f32::INFINITY;
                    v
                },
                10,
                None,
                None,
            ),
            Code::InvalidArgument,
            "vector[0]",
        ),
        (
            req(good.clone(), 0, None, None),
            Code::InvalidArgument,
            "k: must be at least 1",
        ),
        (
            req(good.clone(), 101, None, None),
            Code::InvalidArgument,
            "k: 101 exceeds the maximum 100",
        ),
        (
            req(good.clone(), 10, Some(0), None),
            Code::InvalidArgument,
            "nprobe",
        ),
        (
            req(good.clone(), 10, Some(33), None),
            Code::InvalidArgument,
            "nprobe",
        ),
        (
            req(good.clone(), 10, None, Some("v9")),
            Code::NotFound,
            "version: v9",
        ),
        (
            req(good.clone(), 10, None, Some("../x")),
            Code::InvalidArgument,
            "version",
        ),
    ];
    for (r, code, msg) in cases {
        let e = q.search(r).await.expect_err("bad input accepted");
        assert_eq!(e.code(), code, "{e:?}");
        assert!(
            e.message().contains(msg),
            "message {:?} should contain {msg:?}",
            e.message()
        );
    }
    // Pinning an explicit loaded version still works after the swap.
    let r = q
        .search(req(good.clone(), 5, None, Some("v1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.version, "v1");
    assert_eq!(r.ids.len(), 5);
    let c = r.counters.unwrap();
    assert_eq!(c.lists_probed, 8);
    assert!(c.shards_asked >= 1 && c.candidates_scanned > 0);

    // A shard refuses a version it does not hold, and lists it does not own.
    let mut sc = ShardClient::connect(format!("http://{}:{GRPC}", ip(4)))
        .await
        .unwrap();
    let e = sc
        .shard_search(ShardSearchRequest {
            version: "v9".into(),
            vector: good.clone(),
            k: 5,
            lists: vec![0],
        })
        .await
        .expect_err("unknown version accepted");
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.metadata().get("quiver-refused").is_some(), "{e:?}");

    // Metrics.
    let (code, body) = http_get(&format!("{router_ip}:{HTTP}"), "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("quiver_query_duration_seconds"), "{body}");
    assert!(body.contains("quiver_answers_total"), "{body}");

    // BatchSearch: one pin for the whole batch.
    let b = q
        .batch_search(BatchSearchRequest {
            queries: (0..3)
                .map(|i| Vector {
                    values: vec![0.05 * i as f32; 16],
                })
                .collect(),
            k: 4,
            nprobe: None,
            allow_partial: false,
            version: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.version, "v2");
    assert_eq!(b.results.len(), 3);
    assert!(
        b.results
            .iter()
            .all(|r| r.version == "v2" && r.ids.len() == 4)
    );

    // List statistics: the router sees all lists with probe counts, a shard only its own.
    let ls = radmin
        .list_stats(ListStatsRequest {
            version: "v2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ls.lists.len(), 32);
    assert!(ls.lists.iter().map(|l| l.probes).sum::<u64>() > 0);
    assert!(ls.imbalance >= 1.0);
    let mut sadmin = AdminClient::connect(format!("http://{}:{GRPC}", ip(4)))
        .await
        .unwrap();
    let sl = sadmin
        .list_stats(ListStatsRequest {
            version: "v2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!sl.lists.is_empty() && sl.lists.len() < 32);

    // gRPC health.
    let mut h = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{raddr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let hs = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hs.status, ServingStatus::Serving as i32);
    for service in ["quiver.v1.Query", "quiver.v1.Admin"] {
        let hs = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hs.status, ServingStatus::Serving as i32, "{service}");
    }

    // Both replicas of shard 1 gone: partial answers only when asked for, naming the shard.
    shards[2].signal("-KILL");
    shards[3].signal("-KILL");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut all = req(good.clone(), 10, Some(32), None);
    let e = q
        .search(all.clone())
        .await
        .expect_err("answered without shard 1");
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("shard 1"), "{}", e.message());
    all.allow_partial = true;
    let r = q.search(all).await.unwrap().into_inner();
    assert_eq!(r.missing_shards, vec![1]);
    assert_eq!(r.ids.len(), 10);

    // Graceful shutdown: readiness fails first, then the process exits cleanly.
    let mut router = router;
    router.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (code, _) =
        http_get(&format!("{router_ip}:{HTTP}"), "/readyz").unwrap_or((503, String::new()));
    assert_eq!(code, 503);
    let status = tokio::task::spawn_blocking(move || {
        let s = router.child.wait().unwrap();
        drop(router);
        s
    })
    .await
    .unwrap();
    assert!(status.success(), "router exit: {status:?}");
}
