//! Opportunistic batching of router -> shard calls, per replica.
//!
//! A query for a replica that has fewer than `max_inflight` calls in flight goes out at once as
//! a plain `ShardSearch`, so an idle router adds no delay. Queries that arrive while the
//! replica's slots are all busy wait in a queue; when a call returns, everything queued goes
//! out as one `ShardBatchSearch`. No timers: batches only form under load, and then save the
//! per-RPC work (HTTP/2 frames, syscalls, wake-ups) on both sides, which dominates on small
//! machines.
//!
//! Every queued query keeps its own pinned version; the shard answers each from exactly that
//! version, and the caller still checks the version of each answer. Failures come back per
//! query, with the refusal mark restored, so the caller's retry and failover logic is the same
//! as for a single call.
//!
//! One query never fails another: a batch is cut so that its request and its answer stay
//! within [`CALL_BUDGET`] (estimated from each query's vector, lists and k), both ends accept
//! messages of [`message_limit`], and a batch the shard refuses as a whole for its content
//! (too large, too many queries for the shard's `--max-batch`) is split in halves and sent
//! again, down to single queries. Only transport failures (replica down, timeout) reach every
//! query of a call, and each query then fails over to another replica on its own.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use quiver_proto::shard_batch_result::Result as BatchResult;
use quiver_proto::shard_client::ShardClient;
use quiver_proto::{ShardBatchSearchRequest, ShardSearchRequest, ShardSearchResponse};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

type Answer = Result<ShardSearchResponse, Status>;

/// Bytes of one hit in a ShardSearchResponse at most: the id as a varint (up to 10 bytes)
/// and the distance (4 bytes), in packed fields.
pub const HIT_BYTES: usize = 14;
/// Bytes of one query's request or answer besides its vector, lists and hits (version name,
/// field tags and lengths, counters), with margin.
const QUERY_OVERHEAD: usize = 128;
/// Estimated bytes of requests, and of answers, that one ShardBatchSearch carries at most (a
/// single query larger than this still goes, alone). At k = 1000 that is ~75 queries a call,
/// at k = 10 the whole `--max-batch`.
pub const CALL_BUDGET: usize = 1 << 20;

/// Largest message either end of a router <-> shard call accepts: four batches' worth of
/// budget plus one full answer at `max_k`, never below gRPC's usual 4 MiB.
pub fn message_limit(max_k: usize) -> usize {
    (4 * CALL_BUDGET + max_k.saturating_mul(HIT_BYTES) + QUERY_OVERHEAD).max(4 << 20)
}

/// (request bytes, answer bytes) one query adds to a batch, at most.
fn cost(r: &ShardSearchRequest) -> (usize, usize) {
    let fixed = QUERY_OVERHEAD + r.version.len();
    (
        fixed + 4 * r.vector.len() + 5 * r.lists.len(),
        fixed + HIT_BYTES * r.k as usize,
    )
}

/// Whether a whole-call failure of a batch may come from its content (its size, its number of
/// queries): then the halves are sent again rather than failing every query with it.
fn splittable(code: Code) -> bool {
    matches!(
        code,
        Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
    )
}

const BATCH_UNKNOWN: u8 = 0;
const BATCH_YES: u8 = 1;
const BATCH_NO: u8 = 2;

struct Waiter {
    req: ShardSearchRequest,
    tx: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    inflight: usize,
    waiting: Vec<Waiter>,
}

/// The call path to one replica: its client and the queue of queries waiting for a slot.
pub struct Batcher {
    client: ShardClient<Channel>,
    max_inflight: usize,
    max_batch: usize,
    timeout: Duration,
    /// Whether the replica serves ShardBatchSearch: unknown until its first batch answer. An
    /// older shard (rolling upgrade) answers UNIMPLEMENTED; batches then go out as concurrent
    /// single calls.
    batch_rpc: AtomicU8,
    queue: Mutex<Queue>,
    /// Queries per call.
    sizes: Histogram,
}

impl Batcher {
    pub fn new(
        client: ShardClient<Channel>,
        max_inflight: usize,
        max_batch: usize,
        timeout: Duration,
        sizes: Histogram,
    ) -> Self {
        Self {
            client,
            max_inflight: max_inflight.max(1),
            max_batch: max_batch.max(1),
            timeout,
            batch_rpc: AtomicU8::new(BATCH_UNKNOWN),
            queue: Mutex::new(Queue::default()),
            sizes,
        }
    }

    /// Calls in flight and queries waiting for a slot (tests wait on them to know that the
    /// batcher is idle, or that a batch has formed).
    #[cfg(test)]
    pub(crate) fn load(&self) -> (usize, usize) {
        let q = self.lock();
        (q.inflight, q.waiting.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue holds no invariant a panic elsewhere could break halfway.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers one query: at once when a slot is free, else in the next batch.
    pub async fn call(self: &std::sync::Arc<Self>, req: ShardSearchRequest) -> Answer {
        let queued = {
            let mut q = self.lock();
            if q.inflight < self.max_inflight {
                q.inflight += 1;
                Err(req)
            } else {
                let (tx, rx) = oneshot::channel();
                q.waiting.push(Waiter { req, tx });
                Ok(rx)
            }
        };
        match queued {
            Ok(rx) => rx
                .await
                .unwrap_or_else(|_| Err(Status::unavailable("shard batch was dropped"))),
            Err(req) => {
                // This task holds a slot. The guard hands it to the queue (or frees it) even
                // when the caller gives up on this future half-way (timeout, cancelled client).
                let _slot = Slot(self.clone());
                self.sizes.observe(1.0);
                self.single(req).await
            }
        }
    }

    async fn single(&self, req: ShardSearchRequest) -> Answer {
        let mut client = self.client.clone();
        let mut r = Request::new(req);
        r.set_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, client.shard_search(r)).await {
            Ok(r) => r.map(|r| r.into_inner()),
            Err(_) => Err(Status::deadline_exceeded("shard call timed out")),
        }
    }

    /// Takes the next batch, or frees the slot when nothing waits.
    fn next_batch(&self) -> Option<Vec<Waiter>> {
        let mut q = self.lock();
        if q.waiting.is_empty() {
            q.inflight -= 1;
            return None;
        }
        let (mut n, mut req_bytes, mut answer_bytes) = (0, 0, 0);
        for w in q.waiting.iter().take(self.max_batch) {
            let (a, b) = cost(&w.req);
            if n > 0 && (req_bytes + a > CALL_BUDGET || answer_bytes + b > CALL_BUDGET) {
                break;
            }
            (n, req_bytes, answer_bytes) = (n + 1, req_bytes + a, answer_bytes + b);
        }
        Some(q.waiting.drain(..n).collect())
    }

    /// Sends batches until the queue is empty, then frees the slot. Runs as its own task so
    /// that no caller's answer waits for other queries' batches.
    async fn drain(self: std::sync::Arc<Self>, mut batch: Vec<Waiter>) {
        loop {
            self.send(batch).await;
            match self.next_batch() {
                Some(b) => batch = b,
                None => return,
            }
        }
    }

    async fn send(&self, batch: Vec<Waiter>) {
        let (reqs, txs): (Vec<_>, Vec<_>) = batch.into_iter().map(|w| (w.req, w.tx)).unzip();
        let answers = self.answer(reqs).await;
        for (tx, a) in txs.into_iter().zip(answers) {
            // A waiter that gave up (timeout) has dropped its receiver: nothing to do.
            let _ = tx.send(a);
        }
    }

    /// One answer per query, in order.
    fn answer(
        &self,
        reqs: Vec<ShardSearchRequest>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Vec<Answer>> + Send + '_>> {
        Box::pin(self.answer_inner(reqs))
    }

    async fn answer_inner(&self, mut reqs: Vec<ShardSearchRequest>) -> Vec<Answer> {
        let n = reqs.len();
        self.sizes.observe(n as f64);
        if n == 1 {
            if let Some(req) = reqs.pop() {
                return vec![self.single(req).await];
            }
            return Vec::new();
        }
        let support = self.batch_rpc.load(Ordering::Relaxed);
        if support == BATCH_NO {
            return self.singles(reqs).await;
        }
        // Until the replica has shown it serves batches, keep a copy to fall back on; keep
        // one as well to split a batch the shard refuses as a whole.
        let fallback = (support == BATCH_UNKNOWN).then(|| reqs.clone());
        let retry = fallback.is_none().then(|| reqs.clone());
        let mut client = self.client.clone();
        let mut r = Request::new(ShardBatchSearchRequest { queries: reqs });
        r.set_timeout(self.timeout);
        let res = tokio::time::timeout(self.timeout, client.shard_batch_search(r)).await;
        let status = match res {
            Ok(Ok(resp)) => {
                let results = resp.into_inner().results;
                if results.len() == n {
                    self.batch_rpc.store(BATCH_YES, Ordering::Relaxed);
                    return results.into_iter().map(from_result).collect();
                }
                Status::internal(format!(
                    "shard answered {} results for a batch of {n}",
                    results.len()
                ))
            }
            Ok(Err(s)) if s.code() == Code::Unimplemented && fallback.is_some() => {
                tracing::info!("shard replica has no ShardBatchSearch; sending single calls");
                self.batch_rpc.store(BATCH_NO, Ordering::Relaxed);
                return self.singles(fallback.unwrap_or_default()).await;
            }
            Ok(Err(s)) if splittable(s.code()) => {
                // The shard (or our decoder) refused the call as a whole for its content:
                // send the halves again, so each query ends up with its own answer or error.
                let Some(mut reqs) = fallback.or(retry) else {
                    return vec![Err(s); n];
                };
                tracing::debug!(queries = n, code = ?s.code(), error = %s.message(),
                    "shard refused a batch as a whole; splitting it");
                let right = reqs.split_off(n / 2);
                let (mut a, b) = futures::future::join(self.answer(reqs), self.answer(right)).await;
                a.extend(b);
                return a;
            }
            Ok(Err(s)) => s,
            Err(_) => Status::deadline_exceeded("shard batch call timed out"),
        };
        vec![Err(status); n]
    }

    async fn singles(&self, reqs: Vec<ShardSearchRequest>) -> Vec<Answer> {
        let calls = reqs.into_iter().map(|req| self.single(req));
        futures::future::join_all(calls).await
    }
}

/// A per-query result of a batch, turned back into what a single call would have returned.
pub(crate) fn from_result(r: quiver_proto::ShardBatchResult) -> Answer {
    match r.result {
        Some(BatchResult::Response(resp)) => Ok(resp),
        Some(BatchResult::Error(e)) => {
            let mut s = Status::new(Code::from_i32(e.code), e.message);
            if e.refused {
                s.metadata_mut().insert(
                    super::REFUSED_HEADER,
                    tonic::metadata::MetadataValue::from_static("version"),
                );
            }
            Err(s)
        }
        None => Err(Status::internal("shard batch result without an answer")),
    }
}

/// A held call slot of a replica. Dropping it starts the queued batch (in its own task) or
/// frees the slot.
struct Slot(std::sync::Arc<Batcher>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(batch) = self.0.next_batch() {
            tokio::spawn(self.0.clone().drain(batch));
        }
    }
}
