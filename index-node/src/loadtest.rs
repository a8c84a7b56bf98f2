//! `index-node loadtest`: drive a router's Query API with query vectors at a fixed
//! concurrency for a bounded time or count; report QPS, latency percentiles, recall@k against
//! a ground truth, errors by gRPC code, and which versions answered (with the id range each
//! returned, so a test can prove no answer mixed versions).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use quiver_ivf::dataset::{Vectors, parse_ivecs, parse_vectors};
use quiver_proto::SearchRequest;
use quiver_proto::query_client::QueryClient;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::source::read_uri;

#[derive(clap::Args, Debug)]
pub struct LoadtestCmd {
    /// Router address, `ip:port`.
    #[arg(long, required_unless_present = "local_storage")]
    pub target: Option<String>,
    /// Instead of a router, load this storage's version whole in-process and query the engine
    /// directly on --concurrency threads (same queries, k and nprobe): the baseline the
    /// gRPC path is compared with.
    #[arg(long, requires = "local_version")]
    pub local_storage: Option<String>,
    #[arg(long, default_value = "default")]
    pub local_namespace: String,
    #[arg(long, default_value = "")]
    pub local_index: String,
    #[arg(long)]
    pub local_version: Option<String>,
    /// Query vectors (.fvecs/.bvecs/.npy; path, file:// or s3://).
    #[arg(long)]
    pub queries: String,
    /// Ground truth (.ivecs) for recall@k.
    #[arg(long)]
    pub gt: Option<String>,
    #[arg(long, default_value_t = 10)]
    pub k: u32,
    #[arg(long)]
    pub nprobe: Option<u32>,
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Stop after this many seconds (default 10 when --count is not given).
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Stop after this many queries.
    #[arg(long)]
    pub count: Option<u64>,
    /// HTTP/2 connections to open (queries are spread over them).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    #[arg(long)]
    pub allow_partial: bool,
    /// Pin this version instead of the router's active one.
    #[arg(long)]
    pub version: Option<String>,
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Send a query again, up to this many times, when it failed with UNAVAILABLE or
    /// UNKNOWN (the router went away before answering; searches have no side effects, so a
    /// client may retry them). Latency counts every attempt; `retried` counts the retries.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Skewed traffic: draw query i with probability proportional to 1/(i+1)^S, so that a
    /// few queries (and the lists they probe) take most of the load, as real traffic does.
    /// 0 (the default) sends the queries in turn.
    #[arg(long, default_value_t = 0.0, value_name = "S")]
    pub zipf: f64,
    /// Threads driving the client: 0 = one per core, 1 = a single-threaded runtime.
    #[arg(long, default_value_t = 0)]
    pub worker_threads: usize,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Exit non-zero when any query failed.
    #[arg(long)]
    pub fail_on_error: bool,
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct VersionSeen {
    pub answers: u64,
    pub min_id: u64,
    pub max_id: u64,
    /// Wall-clock time (Unix ms) of the first and last answer from this version: how long a
    /// swap or rollback took to reach clients, measured from outside.
    pub first_unix_ms: u64,
    pub last_unix_ms: u64,
}

impl VersionSeen {
    fn new() -> Self {
        VersionSeen {
            answers: 0,
            min_id: u64::MAX,
            max_id: 0,
            first_unix_ms: u64::MAX,
            last_unix_ms: 0,
        }
    }

    fn merge(&mut self, o: &VersionSeen) {
        self.answers += o.answers;
        self.min_id = self.min_id.min(o.min_id);
        self.max_id = self.max_id.max(o.max_id);
        self.first_unix_ms = self.first_unix_ms.min(o.first_unix_ms);
        self.last_unix_ms = self.last_unix_ms.max(o.last_unix_ms);
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub queries: u64,
    pub ok: u64,
    pub failed: u64,
    pub seconds: f64,
    pub qps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub mean_ms: f64,
    pub recall: Option<f64>,
    pub k: u32,
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each error code in `errors` (what went wrong, not only how
    /// often).
    pub error_examples: BTreeMap<String, String>,
    pub versions: BTreeMap<String, VersionSeen>,
    pub partial_answers: u64,
    /// Queries sent again after UNAVAILABLE or UNKNOWN (`--retries`).
    pub retried: u64,
}

#[derive(Default)]
struct Worker {
    lat_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
    error_examples: BTreeMap<String, String>,
    versions: BTreeMap<String, VersionSeen>,
    recall_sum: f64,
    recall_n: u64,
    partial: u64,
    retried: u64,
}

pub fn run(cmd: LoadtestCmd) -> anyhow::Result<()> {
    let s = crate::serve::runtime(cmd.worker_threads)?.block_on(loadtest(&cmd))?;
    // A closed stdout (e.g. piped into `head`) is not worth a panic.
    if let Err(e) = print_summary(&s, cmd.json)
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    if cmd.fail_on_error && s.failed > 0 {
        anyhow::bail!("{} queries failed", s.failed);
    }
    Ok(())
}

fn print_summary(s: &Summary, json: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string(s).map_err(std::io::Error::other)?;
        return writeln!(out, "{text}");
    }
    writeln!(
        out,
        "queries {} ok {} failed {} in {:.2}s: {:.0} QPS",
        s.queries, s.ok, s.failed, s.seconds, s.qps
    )?;
    writeln!(
        out,
        "latency ms: p50 {:.3} p99 {:.3} p999 {:.3} mean {:.3}",
        s.p50_ms, s.p99_ms, s.p999_ms, s.mean_ms
    )?;
    if let Some(r) = s.recall {
        writeln!(out, "recall@{}: {r:.4}", s.k)?;
    }
    for (code, n) in &s.errors {
        match s.error_examples.get(code) {
            Some(m) => writeln!(out, "errors {code}: {n} (first: {m})")?,
            None => writeln!(out, "errors {code}: {n}")?,
        }
    }
    for (v, seen) in &s.versions {
        writeln!(
            out,
            "version {v}: {} answers (ids {}..={})",
            seen.answers, seen.min_id, seen.max_id
        )?;
    }
    Ok(())
}

/// Which query the i-th request sends: in turn, or Zipf-distributed over the query set
/// (deterministic in i, so that runs repeat).
#[derive(Debug, Clone)]
pub struct QueryOrder {
    n: usize,
    /// Cumulative probabilities of the Zipf draw; None: in turn.
    cdf: Option<Vec<f64>>,
}

impl QueryOrder {
    pub fn new(n: usize, zipf: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            zipf.is_finite() && zipf >= 0.0,
            "--zipf must be a finite number >= 0, got {zipf}"
        );
        if zipf == 0.0 || n <= 1 {
            return Ok(Self { n, cdf: None });
        }
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|i| {
                acc += 1.0 / ((i + 1) as f64).powf(zipf);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Ok(Self { n, cdf: Some(cdf) })
    }

    pub fn pick(&self, i: u64) -> usize {
        let Some(cdf) = &self.cdf else {
            return (i % self.n.max(1) as u64) as usize;
        };
        // splitmix64 of i: a uniform draw in [0, 1).
        let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let u = (z >> 11) as f64 / (1u64 << 53) as f64;
        cdf.partition_point(|&c| c <= u).min(self.n - 1)
    }
}

pub async fn loadtest(cmd: &LoadtestCmd) -> anyhow::Result<Summary> {
    anyhow::ensure!(cmd.concurrency >= 1, "--concurrency must be at least 1");
    let qbytes = read_uri(&cmd.queries).await?;
    let queries = Arc::new(parse_vectors(&qbytes, &cmd.queries)?);
    anyhow::ensure!(!queries.is_empty(), "{}: no queries", cmd.queries);
    let order = Arc::new(QueryOrder::new(queries.len(), cmd.zipf)?);
    let gt = match &cmd.gt {
        Some(uri) => {
            let b = read_uri(uri).await?;
            let Vectors { data: ids, dim: k } = parse_ivecs(&b, uri)?;
            anyhow::ensure!(
                ids.len() / k.max(1) >= queries.len(),
                "{uri}: {} rows for {} queries",
                ids.len() / k.max(1),
                queries.len()
            );
            anyhow::ensure!(
                k >= cmd.k as usize,
                "{uri}: holds {k} neighbours per query, fewer than --k {}",
                cmd.k
            );
            Some(Arc::new((ids, k)))
        }
        None => None,
    };
    if let (Some(storage), Some(version)) = (&cmd.local_storage, &cmd.local_version) {
        return local(cmd, storage, version, queries, gt, order).await;
    }
    let target = cmd.target.clone().unwrap_or_default();
    let addr = if target.contains("://") {
        target.clone()
    } else {
        format!("http://{target}")
    };
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..cmd.connections.clamp(1, cmd.concurrency) {
        let ch = Endpoint::from_shared(addr.clone())
            .with_context(|| format!("bad --target {target}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .with_context(|| format!("cannot connect to {target}"))?;
        channels.push(ch);
    }
    let duration = match (cmd.duration_secs, cmd.count) {
        (Some(d), _) => Some(Duration::from_secs_f64(d.max(0.0))),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..cmd.concurrency {
        let mut client = QueryClient::new(channels[w % channels.len()].clone());
        let queries = queries.clone();
        let gt = gt.clone();
        let next = next.clone();
        let order = order.clone();
        let (count, k, nprobe, allow_partial, version, timeout, retries) = (
            cmd.count,
            cmd.k,
            cmd.nprobe,
            cmd.allow_partial,
            cmd.version.clone(),
            Duration::from_millis(cmd.timeout_ms),
            cmd.retries,
        );
        tasks.push(tokio::spawn(async move {
            let mut st = Worker::default();
            loop {
                if duration.is_some_and(|d| started.elapsed() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if count.is_some_and(|c| i >= c) {
                    break;
                }
                let qi = order.pick(i);
                let t = Instant::now();
                let mut attempt = 0;
                let result = loop {
                    let mut req = tonic::Request::new(SearchRequest {
                        vector: queries.row(qi).to_vec(),
                        k,
                        nprobe,
                        allow_partial,
                        version: version.clone(),
                    });
                    req.set_timeout(timeout);
                    match client.search(req).await {
                        Err(s)
                            if attempt < retries
                                && matches!(
                                    s.code(),
                                    tonic::Code::Unavailable | tonic::Code::Unknown
                                ) =>
                        {
                            attempt += 1;
                            st.retried += 1;
                        }
                        r => break r,
                    }
                };
                match result {
                    Ok(resp) => {
                        st.lat_us.push(t.elapsed().as_micros() as u64);
                        let r = resp.into_inner();
                        if !r.missing_shards.is_empty() {
                            st.partial += 1;
                        }
                        let seen = st
                            .versions
                            .entry(r.version.clone())
                            .or_insert_with(VersionSeen::new);
                        let now = unix_ms();
                        seen.answers += 1;
                        seen.first_unix_ms = seen.first_unix_ms.min(now);
                        seen.last_unix_ms = seen.last_unix_ms.max(now);
                        for &id in &r.ids {
                            seen.min_id = seen.min_id.min(id);
                            seen.max_id = seen.max_id.max(id);
                        }
                        if let Some(rc) = recall_of(&gt, qi, k, &r.ids) {
                            st.recall_sum += rc;
                            st.recall_n += 1;
                        }
                    }
                    Err(s) => {
                        let code = format!("{:?}", s.code());
                        st.error_examples
                            .entry(code.clone())
                            .or_insert_with(|| s.message().to_string());
                        *st.errors.entry(code).or_default() += 1;
                        tracing::debug!(code = ?s.code(), message = %s.message(), "query failed");
                    }
                }
            }
            st
        }));
    }
    let mut workers = Vec::new();
    for t in tasks {
        workers.push(t.await?);
    }
    Ok(summarize(cmd.k, started, workers))
}

fn summarize(k: u32, started: Instant, workers: Vec<Worker>) -> Summary {
    let mut all = Worker::default();
    for w in workers {
        all.lat_us.extend(w.lat_us);
        for (c, n) in w.errors {
            *all.errors.entry(c).or_default() += n;
        }
        for (c, m) in w.error_examples {
            all.error_examples.entry(c).or_insert(m);
        }
        for (v, s) in w.versions {
            all.versions
                .entry(v)
                .or_insert_with(VersionSeen::new)
                .merge(&s);
        }
        all.recall_sum += w.recall_sum;
        all.recall_n += w.recall_n;
        all.partial += w.partial;
        all.retried += w.retried;
    }
    let seconds = started.elapsed().as_secs_f64();
    all.lat_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((all.lat_us.len() as f64 * p).ceil() as usize).clamp(1, all.lat_us.len()) - 1;
        all.lat_us[i] as f64 / 1000.0
    };
    let ok = all.lat_us.len() as u64;
    let failed: u64 = all.errors.values().sum();
    Summary {
        queries: ok + failed,
        ok,
        failed,
        seconds,
        qps: ok as f64 / seconds.max(1e-9),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        mean_ms: if ok == 0 {
            0.0
        } else {
            all.lat_us.iter().sum::<u64>() as f64 / ok as f64 / 1000.0
        },
        recall: (all.recall_n > 0).then(|| all.recall_sum / all.recall_n as f64),
        k,
        errors: all.errors,
        error_examples: all.error_examples,
        versions: all.versions,
        partial_answers: all.partial,
        retried: all.retried,
    }
}

type Gt = Option<Arc<(Vec<i32>, usize)>>;

fn recall_of(gt: &Gt, qi: usize, k: u32, ids: &[u64]) -> Option<f64> {
    let (truth, gk) = gt.as_deref().map(|g| (&g.0, g.1))?;
    let truth = &truth[qi * gk..qi * gk + k as usize];
    let hit = ids
        .iter()
        .filter(|id| truth.iter().any(|t| *t as i64 as u64 == **id))
        .count();
    Some(hit as f64 / f64::from(k.max(1)))
}

/// The in-process baseline: the whole version in one engine, queried on OS threads.
async fn local(
    cmd: &LoadtestCmd,
    storage: &str,
    version: &str,
    queries: Arc<Vectors<f32>>,
    gt: Gt,
    order: Arc<QueryOrder>,
) -> anyhow::Result<Summary> {
    let st = crate::storage::Storage::open(storage)?;
    let (ns, ix) = (&cmd.local_namespace, &cmd.local_index);
    let m = crate::loader::read_manifest(&st, ns, ix, version).await?;
    let all: Vec<u32> = (0..m.nlist as u32).collect();
    let loaded = crate::loader::load_lists(&st, ns, ix, &m, &all, &[]).await?;
    let index = Arc::new(loaded.index);
    let nprobe = cmd.nprobe.map_or(m.default_nprobe, |n| n as usize);
    let k = cmd.k;
    let duration = match (cmd.duration_secs, cmd.count) {
        (Some(d), _) => Some(Duration::from_secs_f64(d.max(0.0))),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let count = cmd.count;
    let concurrency = cmd.concurrency;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let version = version.to_string();
    let workers = tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (index, queries, gt, next, version, order) =
                        (&index, &queries, &gt, &next, &version, &order);
                    scope.spawn(move || {
                        let mut st = Worker::default();
                        let p = quiver_ivf::SearchParams::new(k as usize, nprobe);
                        loop {
                            if duration.is_some_and(|d| started.elapsed() >= d) {
                                break;
                            }
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if count.is_some_and(|c| i >= c) {
                                break;
                            }
                            let qi = order.pick(i);
                            let t = Instant::now();
                            match index.search(queries.row(qi), &p) {
                                Ok(hits) => {
                                    st.lat_us.push(t.elapsed().as_micros() as u64);
                                    let ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
                                    let seen = st
                                        .versions
                                        .entry(version.clone())
                                        .or_insert_with(VersionSeen::new);
                                    seen.answers += 1;
                                    for &id in &ids {
                                        seen.min_id = seen.min_id.min(id);
                                        seen.max_id = seen.max_id.max(id);
                                    }
                                    if let Some(r) = recall_of(gt, qi, k, &ids) {
                                        st.recall_sum += r;
                                        st.recall_n += 1;
                                    }
                                }
                                Err(e) => {
                                    *st.errors.entry(e.to_string()).or_default() += 1;
                                }
                            }
                        }
                        st
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect::<Vec<Worker>>()
        })
    })
    .await?;
    Ok(summarize(k, started, workers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_turn_without_zipf() {
        let o = QueryOrder::new(3, 0.0).expect("order");
        let picks: Vec<usize> = (0..6).map(|i| o.pick(i)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    /// Zipf(1.2) over 100 queries: the first takes about 1/ζ-partial of the draws (0.24 of
    /// them), the counts fall with the rank, every pick is in range, and a run repeats.
    #[test]
    fn zipf_draws_favour_the_first_queries() {
        let o = QueryOrder::new(100, 1.2).expect("order");
        let mut counts = [0u64; 100];
        for i in 0..100_000 {
            counts[o.pick(i)] += 1;
        }
        let expect0: f64 = 1.0 / (1..=100).map(|r| 1.0 / f64::from(r).powf(1.2)).sum::<f64>();
        let got0 = counts[0] as f64 / 100_000.0;
        assert!((got0 - expect0).abs() < 0.01, "{got0} vs {expect0}");
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[99]);
        assert_eq!(o.pick(12345), o.pick(12345));
        assert!(QueryOrder::new(10, -1.0).is_err() && QueryOrder::new(10, f64::NAN).is_err());
    }
}
