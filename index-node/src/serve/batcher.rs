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
//! query (a whole-call failure is given to every query of the batch), with the refusal mark
//! restored, so the caller's retry and failover logic is the same as for a single call.

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
        let n = q.waiting.len().min(self.max_batch);
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
    async fn answer(&self, mut reqs: Vec<ShardSearchRequest>) -> Vec<Answer> {
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
        // Until the replica has shown it serves batches, keep a copy to fall back on.
        let fallback = (support == BATCH_UNKNOWN).then(|| reqs.clone());
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
