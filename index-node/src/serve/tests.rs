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

use super::batcher::{Batcher, from_result};
use super::metrics::Metrics;
use super::shard::{ShardState, ShardSvc, ShardVersion, Slot};
use super::{Ctx, Node, REFUSED_HEADER, RoleState};
use crate::manifest::{BuildStats, FileEntry, Manifest, ShardEntry};
use crate::storage::Storage;

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
    let base = data(N, 7);
    let params = IvfParams::new(DIM, Metric::L2, NLIST, QuantizerKind::Flat);
    let mut index = IvfIndex::train(params, &base).expect("train");
    let ids: Vec<u64> = (0..N as u64).map(|i| i + id_offset).collect();
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
        ntotal: N as u64,
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
        probes: (0..NLIST).map(|_| AtomicU64::new(0)).collect(),
        vectors: N as u64,
        bytes: 0,
    }
}

fn shard_svc() -> ShardSvc {
    let dir = std::env::temp_dir().join(format!("quiver-serve-tests-{}", std::process::id()));
    let ctx = Ctx {
        storage: Storage::open(&dir.to_string_lossy()).expect("storage"),
        namespace: "default".into(),
        index: "t".into(),
        max_k: 100,
        max_batch: 64,
    };
    let state = ShardState::new(ctx, 0);
    let mut m = BTreeMap::new();
    m.insert(
        "v1".to_string(),
        Arc::new(Slot::Warm(Arc::new(version("v1", 0)))),
    );
    m.insert(
        "v2".to_string(),
        Arc::new(Slot::Warm(Arc::new(version("v2", V2_OFFSET)))),
    );
    state.versions.store(Arc::new(m));
    let node = Arc::new(Node {
        name: "test".into(),
        metrics: Metrics::new("shard"),
        shutting_down: AtomicBool::new(false),
        inner: RoleState::Shard(state.clone()),
    });
    ShardSvc { state, node }
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
