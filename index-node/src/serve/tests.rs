//! In-process tests of batched shard search: the shard's ShardBatchSearch against its
//! ShardSearch, and the router's per-replica batcher against a real gRPC shard on loopback.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use quiver_ivf::{IvfIndex, IvfParams, Metric, QuantizerKind};
use quiver_proto::shard_client::ShardClient;
use quiver_proto::shard_server::{Shard, ShardServer};
use quiver_proto::{ShardBatchSearchRequest, ShardSearchRequest, ShardSearchResponse};
use tonic::{Request, Status};

use quiver_ivf::dataset::Vectors;
use quiver_proto::admin_server::{Admin, AdminServer};
use quiver_proto::query_server::Query;
use quiver_proto::{
    BatchSearchRequest, EvaluateRequest, SearchRequest, StatusRequest, StatusResponse, Vector,
};

use super::admin::AdminSvc;
use super::batcher::{Batcher, from_result};
use super::holder::Failure;
use super::metrics::Metrics;
use super::router::{DRIFT_BUCKETS, Drift, FailureLog, QuerySvc, RouterState, RouterVersion};
use super::shard::{ShardState, ShardSvc, ShardVersion, Slot};
use super::{Ctx, Node, REFUSED_HEADER, RoleState};
use crate::loader::Eval;
use crate::manifest::{BuildStats, FileEntry, Manifest, ShardEntry};
use crate::storage::Storage;
use crate::versions::Desired;

const DIM: usize = 8;
const NLIST: usize = 8;
const N: usize = 800;
/// Ids of v2 are offset by this, so an answer from the wrong version shows in its ids.
const V2_OFFSET: u64 = 1_000_000;
/// Lists this shard serves; the others belong to another shard.
const OWNED: [u32; 6] = [0, 1, 2, 3, 4, 5];

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n * DIM)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn version(name: &str, id_offset: u64) -> ShardVersion {
    version_n(name, id_offset, N)
}

/// A version of `n` vectors (ids from `id_offset`).
fn version_n(name: &str, id_offset: u64, n: usize) -> ShardVersion {
    let base = data(n, 7);
    let params = IvfParams::new(DIM, Metric::L2, NLIST, QuantizerKind::Flat);
    let mut index = IvfIndex::train(params, &base).expect("train");
    let ids: Vec<u64> = (0..n as u64).map(|i| i + id_offset).collect();
    index.add(&ids, &base).expect("add");
    let sizes: Vec<u64> = (0..NLIST as u32)
        .map(|l| index.list(l).map_or(0, |x| x.len() as u64))
        .collect();
    let file = FileEntry {
        path: String::new(),
        size: 0,
        crc32: 0,
    };
    let manifest = Manifest {
        format: crate::manifest::FORMAT,
        namespace: "default".into(),
        index: "t".into(),
        version: name.into(),
        created_unix: 0,
        dim: DIM,
        metric: Metric::L2,
        nlist: NLIST,
        quantizer: QuantizerKind::Flat,
        default_nprobe: 4,
        ntotal: n as u64,
        spec_hash: None,
        centroids: file,
        lists: Vec::new(),
        eval: None,
        list_sizes: sizes.clone(),
        shards: vec![ShardEntry {
            shard: 0,
            lists: OWNED.to_vec(),
            vectors: 0,
        }],
        build: BuildStats::default(),
    };
    let mut owned = vec![false; NLIST];
    OWNED.iter().for_each(|&l| owned[l as usize] = true);
    ShardVersion {
        manifest,
        index,
        owned,
        sizes,
        sources: vec![Vec::new(); NLIST],
        probes: (0..NLIST).map(|_| AtomicU64::new(0)).collect(),
        vectors: n as u64,
        bytes: 0,
    }
}

fn test_ctx(max_k: u32, max_batch: usize) -> Ctx {
    let dir = std::env::temp_dir().join(format!("quiver-serve-tests-{}", std::process::id()));
    Ctx {
        storage: Storage::open(&dir.to_string_lossy()).expect("storage"),
        namespace: "default".into(),
        index: "t".into(),
        max_k,
        max_batch,
    }
}

/// A shard node with the given limits holding `versions` warm.
fn shard_svc_with(max_k: u32, max_batch: usize, versions: Vec<(&str, ShardVersion)>) -> ShardSvc {
    let metrics = Metrics::new("shard");
    let state = ShardState::new(test_ctx(max_k, max_batch), 0, metrics.version_gauges());
    for (name, v) in versions {
        state.holder.insert(name, Slot::Warm(Arc::new(v)));
    }
    let node = Arc::new(Node {
        name: "test".into(),
        metrics,
        shutting_down: AtomicBool::new(false),
        inner: RoleState::Shard(state.clone()),
    });
    ShardSvc { state, node }
}

fn shard_svc() -> ShardSvc {
    shard_svc_with(
        100,
        64,
        vec![("v1", version("v1", 0)), ("v2", version("v2", V2_OFFSET))],
    )
}

/// Queries alternating between v1 and v2, plus one per failure kind: an unknown version
/// (refused), a list the shard does not serve, a vector of the wrong dimension.
fn requests() -> Vec<ShardSearchRequest> {
    let q = data(16, 99);
    let mut reqs: Vec<ShardSearchRequest> = (0..16)
        .map(|i| ShardSearchRequest {
            version: if i % 2 == 0 { "v1" } else { "v2" }.into(),
            vector: q[i * DIM..(i + 1) * DIM].to_vec(),
            k: 5,
            lists: vec![(i % 6) as u32, ((i + 1) % 6) as u32, ((i + 3) % 6) as u32],
        })
        .collect();
    let mut bad = |f: &dyn Fn(&mut ShardSearchRequest)| {
        let mut r = reqs[0].clone();
        f(&mut r);
        reqs.insert(5, r);
    };
    bad(&|r| r.version = "v9".into());
    bad(&|r| r.lists = vec![7]);
    bad(&|r| {
        r.vector.pop();
    });
    reqs
}

fn same(a: &Result<ShardSearchResponse, Status>, b: &Result<ShardSearchResponse, Status>) {
    match (a, b) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => {
            assert_eq!(a.code(), b.code());
            assert_eq!(a.message(), b.message());
            assert_eq!(
                a.metadata().get(REFUSED_HEADER).is_some(),
                b.metadata().get(REFUSED_HEADER).is_some()
            );
        }
        _ => panic!("batched answer {a:?} differs from single answer {b:?}"),
    }
}

/// Every answer comes from the version its query named.
fn check_versions(reqs: &[ShardSearchRequest], answers: &[Result<ShardSearchResponse, Status>]) {
    for (r, a) in reqs.iter().zip(answers) {
        if let Ok(a) = a {
            assert_eq!(a.version, r.version);
            let from_v2 = a.ids.iter().all(|&id| id >= V2_OFFSET);
            let from_v1 = a.ids.iter().all(|&id| id < V2_OFFSET);
            assert!(!a.ids.is_empty());
            assert!(if r.version == "v2" { from_v2 } else { from_v1 }, "{a:?}");
        }
    }
}

async fn singles(
    svc: &ShardSvc,
    reqs: &[ShardSearchRequest],
) -> Vec<Result<ShardSearchResponse, Status>> {
    let mut out = Vec::new();
    for r in reqs {
        out.push(
            svc.shard_search(Request::new(r.clone()))
                .await
                .map(|r| r.into_inner()),
        );
    }
    out
}

#[tokio::test]
async fn batch_answers_match_single_answers_and_never_mix_versions() {
    let svc = shard_svc();
    let reqs = requests();
    let single = singles(&svc, &reqs).await;
    assert!(single.iter().filter(|r| r.is_err()).count() == 3);
    let batch = svc
        .shard_batch_search(Request::new(ShardBatchSearchRequest {
            queries: reqs.clone(),
        }))
        .await
        .expect("batch")
        .into_inner()
        .results;
    assert_eq!(batch.len(), reqs.len());
    let batch: Vec<_> = batch.into_iter().map(from_result).collect();
    for (b, s) in batch.iter().zip(&single) {
        same(b, s);
    }
    check_versions(&reqs, &batch);

    let e = svc
        .shard_batch_search(Request::new(ShardBatchSearchRequest { queries: vec![] }))
        .await
        .expect_err("empty batch accepted");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

/// A shard on a loopback port, and a batcher with one call slot in front of it.
async fn served() -> (ShardSvc, Arc<Batcher>, Histogram) {
    served_by(shard_svc()).await
}

/// As `served`, with the given implementation of the shard service.
async fn served_by<S: Shard>(svc: S) -> (ShardSvc, Arc<Batcher>, Histogram) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ShardServer::new(svc))
            .serve_with_incoming(incoming),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy();
    let sizes = Histogram::new(exponential_buckets(1.0, 2.0, 11));
    let b = Arc::new(Batcher::new(
        ShardClient::new(channel),
        1,
        64,
        Duration::from_secs(10),
        sizes.clone(),
    ));
    (shard_svc(), b, sizes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_waiting_for_a_replica_go_out_as_one_batch() {
    let (svc, b, sizes) = served().await;
    let reqs = requests();
    let single = singles(&svc, &reqs).await;
    // All calls start in the same poll: the first takes the replica's only slot, the others
    // wait and go out together when it returns.
    let answers = futures::future::join_all(reqs.iter().map(|r| b.call(r.clone()))).await;
    for (a, s) in answers.iter().zip(&single) {
        same(a, s);
    }
    check_versions(&reqs, &answers);
    assert_eq!(sizes.count(), 2, "one single call, then one batch");
    assert_eq!(sizes.sum() as usize, reqs.len());
}

#[tokio::test]
async fn a_caller_giving_up_frees_the_slot() {
    let (svc, b, _) = served().await;
    let reqs = requests();
    // The caller drops its call at once (whether or not it was answered by then) ...
    let _ = tokio::time::timeout(Duration::ZERO, b.call(reqs[0].clone())).await;
    // ... and later calls are still served.
    for r in &reqs[..4] {
        let a = b.call(r.clone()).await;
        same(&a, &singles(&svc, std::slice::from_ref(r)).await[0]);
    }
}

/// A shard from before ShardBatchSearch existed: it answers single calls only. It counts the
/// batch calls it refuses, and holds the first single call of a round until the test lets
/// it go, so that the round's other queries are queued (a batch forms) whatever the timing.
struct SinglesOnly {
    svc: ShardSvc,
    batch_calls: Arc<AtomicU64>,
    hold: Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>>,
}

#[tonic::async_trait]
impl Shard for SinglesOnly {
    async fn shard_search(
        &self,
        req: Request<ShardSearchRequest>,
    ) -> Result<tonic::Response<ShardSearchResponse>, Status> {
        let held = self.hold.lock().map(|mut h| h.take()).unwrap_or(None);
        if let Some(release) = held {
            let _ = release.await;
        }
        self.svc.shard_search(req).await
    }

    async fn shard_batch_search(
        &self,
        _req: Request<ShardBatchSearchRequest>,
    ) -> Result<tonic::Response<quiver_proto::ShardBatchSearchResponse>, Status> {
        self.batch_calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(Status::unimplemented("ShardBatchSearch"))
    }
}

/// Polls `cond` until it holds; fails the test after 10 s.
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_without_batches_gets_single_calls() {
    let batch_calls = Arc::new(AtomicU64::new(0));
    let hold = Arc::new(std::sync::Mutex::new(None));
    let shard = SinglesOnly {
        svc: shard_svc(),
        batch_calls: batch_calls.clone(),
        hold: hold.clone(),
    };
    let (svc, b, sizes) = served_by(shard).await;
    let reqs = requests();
    let single = singles(&svc, &reqs).await;
    // Three rounds, each one single call (held at the shard) and then one batch of the
    // others. The first batch learns the replica has no ShardBatchSearch and falls back to
    // single calls; later batches go straight to single calls. Every query still gets its
    // own answer.
    for round in 0..3 {
        // Callers are answered before the batch task gives its slot back: wait for that, so
        // that this round's first call takes the slot.
        wait_for(&format!("round {round}: slot freed"), || b.load().0 == 0).await;
        let (release, held) = tokio::sync::oneshot::channel();
        *hold.lock().expect("hold") = Some(held);
        let calls = reqs.clone().into_iter().map(|r| {
            let b = b.clone();
            async move { b.call(r).await }
        });
        let answers = tokio::spawn(futures::future::join_all(calls));
        let n = reqs.len();
        wait_for(&format!("round {round}: {} queued", n - 1), || {
            b.load().1 == n - 1
        })
        .await;
        let _ = release.send(());
        let answers = answers.await.expect("round task");
        for (a, s) in answers.iter().zip(&single) {
            same(a, s);
        }
        check_versions(&reqs, &answers);
        assert!(
            answers.iter().all(|a| a
                .as_ref()
                .err()
                .is_none_or(|e| e.code() != tonic::Code::Unimplemented)),
            "round {round}: UNIMPLEMENTED leaked to a caller"
        );
    }
    assert_eq!(
        sizes.count(),
        6,
        "each round: one single call, then one batch"
    );
    assert_eq!(
        batch_calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the first batch tries ShardBatchSearch"
    );
}

/// Serves a shard node's Shard, Admin and health services on a loopback port.
async fn serve_node(svc: ShardSvc) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(super::health_loop(
        svc.node.clone(),
        reporter,
        tokio::sync::watch::channel(false).1,
    ));
    let limit = super::batcher::message_limit(svc.state.ctx.max_k as usize);
    let admin = AdminServer::new(AdminSvc {
        node: svc.node.clone(),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(admin)
            .add_service(ShardServer::new(svc).max_decoding_message_size(limit))
            .serve_with_incoming(incoming),
    );
    addr
}

fn batcher_to(
    addr: std::net::SocketAddr,
    max_k: usize,
    max_batch: usize,
) -> (Arc<Batcher>, Histogram) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy();
    let limit = super::batcher::message_limit(max_k);
    let sizes = Histogram::new(exponential_buckets(1.0, 2.0, 11));
    let b = Arc::new(Batcher::new(
        ShardClient::new(channel)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        1,
        max_batch,
        Duration::from_secs(30),
        sizes.clone(),
    ));
    (b, sizes)
}

/// ~700 queries at k = 1000 arriving together, plus one small query among them: the answers
/// of one batch would pass 4 MiB (ids near 2^40 take 6 bytes each). The batcher cuts the
/// batch so every call stays within its budget, and every query gets the answer a single call
/// gives it; the small query is not failed by the big ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_batch_at_k_1000_is_cut_and_every_query_answered() {
    let big = || shard_svc_with(1000, 1024, vec![("v1", version_n("v1", 1 << 40, 2000))]);
    let svc = big();
    let addr = serve_node(big()).await;
    let (b, sizes) = batcher_to(addr, 1000, 1024);
    let q = data(701, 5);
    let mut reqs: Vec<ShardSearchRequest> = (0..700)
        .map(|i| ShardSearchRequest {
            version: "v1".into(),
            vector: q[i * DIM..(i + 1) * DIM].to_vec(),
            k: 1000,
            lists: OWNED.to_vec(),
        })
        .collect();
    reqs.insert(
        350,
        ShardSearchRequest {
            version: "v1".into(),
            vector: q[700 * DIM..].to_vec(),
            k: 5,
            lists: vec![0, 1],
        },
    );
    let single = singles(&svc, &reqs).await;
    assert!(single.iter().all(|r| r.is_ok()));
    assert_eq!(single[0].as_ref().map(|r| r.ids.len()).ok(), Some(1000));
    let wire: usize = single
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(prost::Message::encoded_len)
        .sum();
    assert!(
        wire > 4 << 20,
        "answers take {wire} bytes: not a test of the limit"
    );
    let answers = futures::future::join_all(reqs.iter().map(|r| b.call(r.clone()))).await;
    for (a, s) in answers.iter().zip(&single) {
        same(a, s);
    }
    assert!(
        sizes.count() > 2,
        "the batch was not cut: {} calls",
        sizes.count()
    );
    assert_eq!(sizes.sum() as usize, reqs.len());
}

/// A shard whose --max-batch is smaller than the router's refuses the router's batch as a
/// whole: the batcher sends the halves again, and no query fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_shard_refuses_as_a_whole_is_split() {
    let small = || {
        shard_svc_with(
            100,
            8,
            vec![("v1", version("v1", 0)), ("v2", version("v2", V2_OFFSET))],
        )
    };
    let svc = small();
    let addr = serve_node(small()).await;
    let (b, _) = batcher_to(addr, 100, 1024);
    let mut reqs = Vec::new();
    for _ in 0..4 {
        reqs.extend(requests());
    }
    let single = singles(&svc, &reqs).await;
    let answers = futures::future::join_all(reqs.iter().map(|r| b.call(r.clone()))).await;
    for (a, s) in answers.iter().zip(&single) {
        same(a, s);
    }
    check_versions(&reqs, &answers);
}

#[tokio::test]
async fn duplicate_lists_are_counted_once_and_their_number_capped() {
    let svc = shard_svc();
    let v = svc.state.get("v1").expect("v1");
    let q = data(1, 3);
    let ask = |lists: Vec<u32>| ShardSearchRequest {
        version: "v1".into(),
        vector: q.clone(),
        k: 10,
        lists,
    };
    let once = svc
        .shard_search(Request::new(ask(vec![0, 1])))
        .await
        .expect("search")
        .into_inner();
    let dup = svc
        .shard_search(Request::new(ask(vec![1, 0, 0, 1, 0, 0, 1, 1])))
        .await
        .expect("search")
        .into_inner();
    assert_eq!(once.candidates_scanned, v.sizes[0] + v.sizes[1]);
    assert_eq!(dup, once);
    let e = svc
        .shard_search(Request::new(ask(vec![0; NLIST + 1])))
        .await
        .expect_err("more list ids than lists accepted");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with("lists: 9 list ids, more than the 8 lists"),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn huge_coordinates_are_refused_naming_the_problem() {
    let svc = shard_svc();
    for vector in [
        {
            let mut v = vec![0.5f32; DIM];
            v[2] = 1e20;
            v
        },
        vec![1e19f32; DIM],
    ] {
        let e = svc
            .shard_search(Request::new(ShardSearchRequest {
                version: "v1".into(),
                vector,
                k: 10,
                lists: vec![0, 1],
            }))
            .await
            .expect_err("huge vector answered");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("vector: squared norm"),
            "{}",
            e.message()
        );
    }
}

/// gRPC health answers the whole server, the role's service and Admin, by name.
#[tokio::test]
async fn health_answers_for_the_named_services() {
    let addr = serve_node(shard_svc()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy();
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = |service: &str| tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    };
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    for service in ["", "quiver.v1.Shard", "quiver.v1.Admin"] {
        let mut h = h.clone();
        wait_for_async(&format!("{service:?} serving"), || {
            let mut h = h.clone();
            async move {
                h.check(check(service))
                    .await
                    .is_ok_and(|r| r.into_inner().status == serving)
            }
        })
        .await;
        let _ = h.check(check(service)).await;
    }
    let e = h
        .check(check("quiver.v1.Query"))
        .await
        .expect_err("a shard serves no Query service");
    assert_eq!(e.code(), tonic::Code::NotFound);
}

async fn wait_for_async<F, Fut>(what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn desired(versions: &[&str], active: &str) -> Option<Desired> {
    Some(Desired {
        versions: versions.iter().map(|v| v.to_string()).collect(),
        active: Some(active.to_string()),
        nprobe: None,
    })
}

/// A shard that starts with versions held and has not heard from its source (unknown, not
/// empty) keeps them; it drops one only when the source stops listing it.
#[tokio::test]
async fn a_node_keeps_its_versions_until_the_source_says_otherwise() {
    let svc = shard_svc();
    let (tx, rx) = tokio::sync::watch::channel(None);
    svc.state.clone().start(rx);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let held = |svc: &ShardSvc| svc.state.holder.slots().keys().cloned().collect::<Vec<_>>();
    assert_eq!(held(&svc), ["v1", "v2"]);
    assert!(svc.state.readiness().0);
    tx.send(desired(&["v1"], "v1")).expect("send");
    wait_for("v2 dropped", || held(&svc) == ["v1"]).await;
    assert!(svc.state.get("v2").is_err());
    assert_eq!(svc.state.readiness(), (true, "serving v1".to_string()));
}

fn router_version(name: &str, id_offset: u64) -> RouterVersion {
    let v = version(name, id_offset);
    RouterVersion {
        name: name.into(),
        owners: v.manifest.list_owners(),
        probes: (0..NLIST).map(|_| AtomicU64::new(0)).collect(),
        quantizer: v.index,
        manifest: v.manifest,
        eval: None,
        inflight: AtomicU64::new(0),
        drift: None,
    }
}

/// A shard version that owns every list, so that a router can send it any query.
fn whole_version(name: &str) -> ShardVersion {
    let mut v = version(name, 0);
    v.owned = vec![true; NLIST];
    v.manifest.shards[0].lists = (0..NLIST as u32).collect();
    v
}

/// The router's side of `whole_version`, with `eval_n` evaluation queries drawn like the
/// data and its drift reference built from them as the router's loader does.
fn router_version_with_eval(name: &str, eval_n: usize) -> RouterVersion {
    let v = whole_version(name);
    let eval = Eval {
        queries: Vectors {
            dim: DIM,
            data: data(eval_n, 11),
        },
        // The gate's recall is not under test here, only that its queries are not counted.
        gt: vec![0; eval_n * 10],
        k: 10,
    };
    let drift = Drift::from_eval(&v.index, Some(&eval));
    RouterVersion {
        name: name.into(),
        owners: v.manifest.list_owners(),
        probes: (0..NLIST).map(|_| AtomicU64::new(0)).collect(),
        quantizer: v.index,
        manifest: v.manifest,
        eval: Some(eval),
        inflight: AtomicU64::new(0),
        drift,
    }
}

/// A router node holding `versions` warm, whose only shard (0) is served at `addr`.
fn router_node(
    addr: std::net::SocketAddr,
    versions: Vec<RouterVersion>,
) -> (Arc<RouterState>, Arc<Node>) {
    let metrics = Metrics::new("router");
    let replicas = BTreeMap::from([(0u32, vec![addr.to_string()])]);
    let router = RouterState::new(
        test_ctx(100, 64),
        tokio::sync::watch::channel(Some(replicas)).1,
        Duration::from_secs(5),
        1,
        metrics.shard_batch.clone(),
        metrics.version_gauges(),
    );
    for v in versions {
        router
            .holder
            .insert(&v.name.clone(), super::holder::Slot::Warm(Arc::new(v)));
    }
    let node = Arc::new(Node {
        name: "router".into(),
        metrics,
        shutting_down: AtomicBool::new(false),
        inner: RoleState::Router(router.clone()),
    });
    (router, node)
}

/// The router is told to activate v2, which the only shard of the map failed to load (a
/// corrupt list file). It keeps serving v1 and says why in Admin status; once the shard
/// holds v2 warm, it switches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_activates_only_a_version_every_shard_holds_warm() {
    let shard = shard_svc();
    let corrupt = "lists.qivf: checksum 1234abcd does not match the manifest's 00000000 (corrupt)";
    shard.state.holder.insert(
        "v2",
        Slot::Failed(Failure {
            reason: corrupt.into(),
            attempts: 1,
            next_retry: std::time::Instant::now() + Duration::from_secs(3600),
        }),
    );
    let shard_state = shard.state.clone();
    let addr = serve_node(shard).await;

    let (router, node) = router_node(
        addr,
        vec![router_version("v1", 0), router_version("v2", V2_OFFSET)],
    );
    let (tx, rx) = tokio::sync::watch::channel(desired(&["v1", "v2"], "v1"));
    router.clone().start(node.clone(), rx);
    let active = |r: &RouterState| r.active.load().as_ref().map(|v| v.name.clone());
    wait_for("v1 active", || active(&router).as_deref() == Some("v1")).await;

    tx.send(desired(&["v1", "v2"], "v2")).expect("send");
    wait_for("v2 pending", || router.pending.load().is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(active(&router).as_deref(), Some("v1"));
    assert_eq!(
        router.pin(None).map(|v| v.name.clone()).ok().as_deref(),
        Some("v1")
    );
    let st = AdminSvc { node: node.clone() }
        .status(Request::new(StatusRequest {}))
        .await
        .expect("status")
        .into_inner();
    assert_eq!(st.active_version, "v1");
    assert_eq!(st.pending_active_version, "v2");
    assert!(
        st.pending_reason
            .contains("shard 0 holds it warm on no replica")
            && st.pending_reason.contains("corrupt"),
        "{}",
        st.pending_reason
    );
    assert!(st.ready);

    // The shard loads v2 (say, after the file was repaired): the router switches.
    shard_state
        .holder
        .insert("v2", Slot::Warm(Arc::new(version("v2", V2_OFFSET))));
    wait_for("v2 active", || active(&router).as_deref() == Some("v2")).await;
    assert!(router.pending.load().is_none());
}

/// `spec.index.nprobe` is a query-time setting: a new desired default reaches queries that do
/// not say (capped at the version's nlist) with the same version serving, a query's own
/// nprobe still wins, and clearing it returns to the manifest's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desired_nprobe_is_the_default_of_queries_without_a_new_version() {
    let shard = shard_svc_with(100, 64, vec![("v1", whole_version("v1"))]);
    let addr = serve_node(shard).await;
    let (router, node) = router_node(addr, vec![router_version("v1", 0)]);
    let (tx, rx) = tokio::sync::watch::channel(desired(&["v1"], "v1"));
    router.clone().start(node.clone(), rx);
    let query = QuerySvc {
        state: router.clone(),
        node: node.clone(),
    };
    let probed = |nprobe: Option<u32>| {
        let query = &query;
        async move {
            let r = query
                .search(Request::new(SearchRequest {
                    vector: data(1, 5),
                    k: 5,
                    nprobe,
                    ..Default::default()
                }))
                .await
                .expect("search")
                .into_inner();
            assert_eq!(r.version, "v1");
            r.counters.map(|c| c.lists_probed).unwrap_or_default()
        }
    };
    wait_for_async("v1 active", || async { router.active.load().is_some() }).await;
    let manifest_default = 4;
    assert_eq!(probed(None).await, manifest_default);

    let with = |n: Option<u32>| {
        let mut d = desired(&["v1"], "v1");
        if let Some(d) = &mut d {
            d.nprobe = n;
        }
        d
    };
    tx.send(with(Some(2))).expect("send");
    wait_for_async("nprobe 2", || async { probed(None).await == 2 }).await;
    assert_eq!(probed(Some(3)).await, 3, "a query's own nprobe wins");
    tx.send(with(Some(1000))).expect("send");
    wait_for_async("nprobe capped at nlist", || async {
        probed(None).await == NLIST as u32
    })
    .await;
    tx.send(with(None)).expect("send");
    wait_for_async("manifest default again", || async {
        probed(None).await == manifest_default
    })
    .await;
}

#[test]
fn failing_shard_calls_are_logged_at_most_once_a_second_with_a_count() {
    let log = FailureLog::new();
    assert_eq!(
        log.record(5),
        Some(1),
        "the first failure is logged at once"
    );
    for t in 6..500 {
        assert_eq!(log.record(t), None);
    }
    assert_eq!(log.record(1005), Some(495));
    assert_eq!(log.record(1006), None);
}

/// The drift counts a router's Admin status reports for `version`.
fn drift_counts(st: &StatusResponse, version: &str) -> Vec<u64> {
    st.versions
        .iter()
        .find(|v| v.version == version)
        .map(|v| v.drift_counts.clone())
        .expect("version in status")
}

/// Live queries (Search and BatchSearch) are counted by their nearest-centroid distance in
/// the ventile buckets of the version's evaluation queries: near uniform for queries drawn
/// like the data, all in the top bucket for queries far from every centroid; the gate's
/// Evaluate adds nothing; a version without a reference reports no counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_count_live_queries_by_nearest_centroid_distance() {
    assert!(
        router_version_with_eval("v1", 39).drift.is_none(),
        "39 evaluation queries are too few for a reference"
    );
    let shard = shard_svc_with(100, 64, vec![("v1", whole_version("v1"))]);
    let addr = serve_node(shard).await;
    let v1 = router_version_with_eval("v1", 200);
    assert_eq!(v1.drift.as_ref().map(|d| d.edges.len()), Some(19));
    let (router, node) = router_node(addr, vec![v1, router_version("v2", V2_OFFSET)]);
    let (_tx, rx) = tokio::sync::watch::channel(desired(&["v1", "v2"], "v1"));
    router.clone().start(node.clone(), rx);
    wait_for("v1 active", || {
        router
            .active
            .load()
            .as_ref()
            .map(|v| v.name.clone())
            .as_deref()
            == Some("v1")
    })
    .await;
    let query = QuerySvc {
        state: router.clone(),
        node: node.clone(),
    };
    let admin = AdminSvc { node: node.clone() };
    let status = || async {
        admin
            .status(Request::new(StatusRequest {}))
            .await
            .expect("status")
            .into_inner()
    };
    // Half the queries one by one, half in batches: both paths count.
    let query = &query;
    let ask = |q: Vec<f32>| async move {
        let (single, batched) = q.split_at(q.len() / 2);
        for v in single.chunks_exact(DIM) {
            query
                .search(Request::new(SearchRequest {
                    vector: v.to_vec(),
                    k: 10,
                    ..Default::default()
                }))
                .await
                .expect("search");
        }
        for b in batched.chunks(50 * DIM) {
            query
                .batch_search(Request::new(BatchSearchRequest {
                    queries: b
                        .chunks_exact(DIM)
                        .map(|v| Vector { values: v.to_vec() })
                        .collect(),
                    k: 10,
                    ..Default::default()
                }))
                .await
                .expect("batch search");
        }
    };

    const Q: usize = 400;
    assert_eq!(drift_counts(&status().await, "v1"), vec![0; DRIFT_BUCKETS]);
    ask(data(Q, 21)).await;
    let like_data = drift_counts(&status().await, "v1");
    assert_eq!(like_data.iter().sum::<u64>(), Q as u64, "{like_data:?}");
    assert!(
        like_data.iter().all(|&c| c <= (Q * 4 / 10) as u64),
        "{like_data:?}"
    );
    assert!(
        like_data.iter().filter(|&&c| c > 0).count() >= 15,
        "{like_data:?}"
    );

    // Scaled ×4: far from every centroid.
    ask(data(Q, 23).iter().map(|x| x * 4.0).collect()).await;
    let after = drift_counts(&status().await, "v1");
    let new: Vec<u64> = after.iter().zip(&like_data).map(|(a, b)| a - b).collect();
    assert_eq!(new.iter().sum::<u64>(), Q as u64, "{new:?}");
    assert!(new[DRIFT_BUCKETS - 1] >= (Q * 95 / 100) as u64, "{new:?}");

    // The gate's queries are the reference itself: not counted.
    let e = admin
        .evaluate(Request::new(EvaluateRequest {
            version: "v1".into(),
            k: 10,
            nprobe: None,
            max_queries: 0,
        }))
        .await
        .expect("evaluate")
        .into_inner();
    assert_eq!(e.queries, 200);
    let st = status().await;
    assert_eq!(drift_counts(&st, "v1"), after);
    assert!(drift_counts(&st, "v2").is_empty(), "v2 has no reference");
}

/// The canary measures the active version on its evaluation queries through the live path:
/// over the whole set its recall is the gate's figure for the same k and nprobe, and its
/// queries are neither live traffic (drift) nor answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_publishes_the_recall_the_gate_measures() {
    let shard = shard_svc_with(100, 64, vec![("v1", whole_version("v1"))]);
    let addr = serve_node(shard).await;
    let (router, node) = router_node(addr, vec![router_version_with_eval("v1", 200)]);
    let (_tx, rx) = tokio::sync::watch::channel(desired(&["v1"], "v1"));
    router.clone().start(node.clone(), rx);
    wait_for("v1 active", || router.active.load().is_some()).await;
    let ok = || {
        node.metrics
            .canary_rounds
            .get_or_create(&vec![("outcome", "ok".to_string())])
            .get()
    };
    assert_eq!(ok(), 0);
    let canary = tokio::spawn(super::eval::run(
        router.clone(),
        node.clone(),
        super::eval::Canary {
            interval: Duration::from_millis(20),
            queries: 200,
            k: 10,
        },
    ));
    wait_for("a canary round", || ok() >= 2).await;
    canary.abort();
    let admin = AdminSvc { node: node.clone() };
    let gate = admin
        .evaluate(Request::new(EvaluateRequest {
            version: "v1".into(),
            k: 10,
            nprobe: None,
            max_queries: 0,
        }))
        .await
        .expect("evaluate")
        .into_inner();
    // The test version's neighbours are made up: recall is low but not zero, so equal means measured.
    assert!(gate.recall > 0.0, "{gate:?}");
    assert_eq!(node.metrics.canary_recall.get(), gate.recall);
    let errors = node
        .metrics
        .canary_rounds
        .get_or_create(&vec![("outcome", "error".to_string())])
        .get();
    assert_eq!(errors, 0);
    let st = admin
        .status(Request::new(StatusRequest {}))
        .await
        .expect("status")
        .into_inner();
    assert_eq!(drift_counts(&st, "v1"), vec![0; DRIFT_BUCKETS]);
    let answers = node
        .metrics
        .answers_by_version
        .get_or_create(&vec![("version", "v1".to_string())])
        .get();
    assert_eq!(answers, 0);
}
