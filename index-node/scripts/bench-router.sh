#!/usr/bin/env bash
# Compares queries through the gRPC path (loadtest -> router -> 2 shards, all on loopback) with
# the same version loaded whole in-process (loadtest --local-*), same data, k and nprobe; then
# runs `index-node bench` on the same files for reference. A benchmark, not a test: it prints
# figures. Environment: N, DIM, NLIST, NPROBE, SECS, CARGO_TARGET_DIR, WORKERS (tokio worker
# threads of each node and of the router-path loadtest; default 1, since the four processes share
# this machine's cores; 0 = one per core), BIN (an index-node binary to measure instead of
# building this checkout's, e.g. an older build for a before/after comparison).
set -euo pipefail
N=${N:-200000}
DIM=${DIM:-128}
NLIST=${NLIST:-1024}
NPROBE=${NPROBE:-16}
SECS=${SECS:-10}
WORKERS=${WORKERS:-1}
K=10
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ -z "${BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release -p index-node)
    BIN=$TARGET/release/index-node
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
export RUST_LOG=warn

$BIN bench generate --out "$WORK/data" --n "$N" --dim "$DIM" --nq 1000 >/dev/null
STORE="file://$WORK/store"
COMMON=(--storage "$STORE" --index bench --version v1)
$BIN train "${COMMON[@]}" --source "$WORK/data/base.fvecs" --nlist "$NLIST"
# No held-out rows: ids stay the row numbers of base.fvecs, as in the generated ground truth.
$BIN build "${COMMON[@]}" --source "$WORK/data/base.fvecs" --shards 2 --eval-queries 0 \
    --default-nprobe "$NPROBE"

serve() { # role ip extra...
    local role=$1 ip=$2
    shift 2
    $BIN serve --role "$role" --listen-ip "$ip" --storage "$STORE" --index bench --versions v1 \
        --shutdown-delay-ms 0 --worker-threads "$WORKERS" "$@" 2>"$WORK/$role-$ip.log" &
    PIDS+=($!)
}
serve shard 127.0.0.2 --shard 0
serve shard 127.0.0.3 --shard 1
serve router 127.0.0.4 --shards "0=127.0.0.2:7000;1=127.0.0.3:7000"
for ip in 127.0.0.2 127.0.0.3 127.0.0.4; do
    for _ in $(seq 600); do
        curl -sf "http://$ip:7001/readyz" >/dev/null && break
        sleep 0.1
    done
done

Q=(--queries "$WORK/data/queries.fvecs" --gt "$WORK/data/groundtruth.ivecs" --k $K --nprobe "$NPROBE" --duration-secs "$SECS")
LOCAL=(--local-storage "$STORE" --local-index bench --local-version v1)
# "calls queries" so far: router -> shard calls and the queries they carried (batching).
shard_calls() {
    curl -sf http://127.0.0.4:7001/metrics |
        awk '/^quiver_shard_batch_queries_count/ {c = $2} /^quiver_shard_batch_queries_sum/ {s = $2} END {print c + 0, s + 0}'
}
ROUTED=(--target 127.0.0.4:7000 --worker-threads "$WORKERS")
echo "== N=$N dim=$DIM nlist=$NLIST nprobe=$NPROBE k=$K, $(nproc) cores, $WORKERS worker threads per node"
echo "-- router, 2 shards, concurrency 1"
$BIN loadtest "${ROUTED[@]}" "${Q[@]}" --concurrency 1
echo "-- in-process engine, 1 thread"
$BIN loadtest "${LOCAL[@]}" "${Q[@]}" --concurrency 1
echo "-- router, 2 shards, concurrency 8"
calls0=$(shard_calls)
$BIN loadtest "${ROUTED[@]}" "${Q[@]}" --concurrency 8
echo "$calls0 $(shard_calls)" | awk '{c = $3 - $1; if (c > 0) printf "router -> shard calls: %d, %.2f queries per call\n", c, ($4 - $2) / c}'
echo "-- in-process engine, $(nproc) threads"
$BIN loadtest "${LOCAL[@]}" "${Q[@]}" --concurrency "$(nproc)"
echo "-- index-node bench (its own training), 1 thread"
$BIN bench --base "$WORK/data/base.fvecs" --queries "$WORK/data/queries.fvecs" \
    --groundtruth "$WORK/data/groundtruth.ivecs" --nlist "$NLIST" --nprobe "$NPROBE" --k $K --threads 1
