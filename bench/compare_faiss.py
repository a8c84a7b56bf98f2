#!/usr/bin/env python3
"""Side-by-side benchmark of Quiver's IVF engine (`index-node bench`) and FAISS.

Both run on the same files, nlist, nprobe values, k and thread count, one after the other in
one invocation, so the ratios are comparable on a noisy machine. FAISS indexes:
IndexIVFFlat, IndexIVFScalarQuantizer (QT_8bit) and IndexIVFPQ (m x 8 bits).

    pip install faiss-cpu numpy
    cargo build --release -p index-node
    python3 bench/compare_faiss.py --data DIR --quantizer flat --nlist 1024 --threads 1,2

DIR holds base.fvecs, queries.fvecs and groundtruth.ivecs (`index-node bench generate`
writes such a directory). For each thread count it prints both curves, then Quiver's QPS
interpolated at each FAISS recall point ("QPS at equal recall") and the train+add times.
QPS is given by wall clock and by CPU time (process CPU seconds): on a machine shared with
other work, the CPU-time figure is the one that is not distorted by preemption.
Extra arguments after `--` go to `index-node bench` only (e.g. `-- --balance 1`).

To compare both sides on AVX2 alone (as on a CPU without AVX-512), set FAISS's SIMD level,
OpenBLAS's kernels and Quiver's kernels before the run; the header line shows FAISS's level:

    FAISS_SIMD_LEVEL=AVX2 OPENBLAS_CORETYPE=Haswell QUIVER_KERNELS=avx2 \
        python3 bench/compare_faiss.py --data DIR --quantizer flat --nlist 1024 --threads 1,2
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

try:
    import faiss
except ImportError:  # pragma: no cover - explained to the user
    sys.exit("faiss is not installed: pip install faiss-cpu numpy")


def faiss_simd():
    """FAISS's SIMD level, where the build reports it."""
    try:
        return "simd " + faiss.SIMDConfig.get_level_name()
    except AttributeError:
        return "simd level not reported"


def read_vecs(path, dtype):
    raw = np.fromfile(path, dtype=np.int32)
    if raw.size == 0:
        sys.exit(f"{path}: empty file")
    dim = int(raw[0])
    rec = raw.reshape(-1, dim + 1)
    if not (rec[:, 0] == dim).all():
        sys.exit(f"{path}: mixed dimensions")
    return np.ascontiguousarray(rec[:, 1:]).view(dtype) if dtype == np.float32 else rec[:, 1:].copy()


def recall_at_k(found, gt, k):
    hits = 0
    for f, t in zip(found, gt):
        hits += len(set(f[:k].tolist()) & set(t[:k].tolist()))
    return hits / (len(found) * k)


def run_faiss(args, base, queries, gt, threads):
    faiss.omp_set_num_threads(threads)
    d = base.shape[1]
    metric = faiss.METRIC_L2 if args.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if args.metric == "cosine":
        base = base.copy()
        queries = queries.copy()
        faiss.normalize_L2(base)
        faiss.normalize_L2(queries)
    coarse = faiss.IndexFlatL2(d) if metric == faiss.METRIC_L2 else faiss.IndexFlatIP(d)
    if args.quantizer == "flat":
        index = faiss.IndexIVFFlat(coarse, d, args.nlist, metric)
    elif args.quantizer == "sq8":
        index = faiss.IndexIVFScalarQuantizer(coarse, d, args.nlist, faiss.ScalarQuantizer.QT_8bit, metric)
    else:
        index = faiss.IndexIVFPQ(coarse, d, args.nlist, args.pq_m, 8, metric)
    index.cp.seed = args.seed
    index.cp.niter = args.kmeans_iters
    t = time.perf_counter()
    index.train(base)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    index.add(base)
    add_s = time.perf_counter() - t
    sizes = np.array([index.invlists.list_size(i) for i in range(args.nlist)], dtype=np.float64)
    imbalance = args.nlist * (sizes ** 2).sum() / sizes.sum() ** 2
    rows = []
    for nprobe in args.nprobe:
        index.nprobe = nprobe
        index.search(queries[:50], args.k)  # warm-up
        best = best_cpu = float("inf")
        for _ in range(args.repeat):
            c = time.process_time()
            t = time.perf_counter()
            _, ids = index.search(queries, args.k)
            best = min(best, time.perf_counter() - t)
            best_cpu = min(best_cpu, time.process_time() - c)
        rows.append({"nprobe": nprobe, "recall_at_k": recall_at_k(ids, gt, args.k),
                     "qps": len(queries) / best, "cpu_qps": len(queries) / best_cpu})
    return {"train_s": train_s, "add_s": add_s, "imbalance": imbalance}, rows


def run_quiver(args, threads):
    cmd = [
        args.index_node, "bench",
        "--base", os.path.join(args.data, "base.fvecs"),
        "--queries", os.path.join(args.data, "queries.fvecs"),
        "--groundtruth", os.path.join(args.data, "groundtruth.ivecs"),
        "--metric", args.metric, "--nlist", str(args.nlist),
        "--nprobe", ",".join(map(str, args.nprobe)), "--quantizer", args.quantizer,
        "--pq-m", str(args.pq_m), "--k", str(args.k), "--threads", str(threads),
        "--kmeans-iters", str(args.kmeans_iters), "--seed", str(args.seed),
        "--latency-queries", "200", "--repeat", str(args.repeat), "--json",
    ] + args.extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return lines[0], lines[1:]


def qps_at_recall(curve, recall, key):
    """Log-linear interpolation of QPS (`key`) at a recall on a curve sorted by recall."""
    pts = sorted((r["recall_at_k"], r[key]) for r in curve)
    if recall <= pts[0][0]:
        return pts[0][1]
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= recall <= r1:
            if r1 == r0:
                return max(q0, q1)
            f = (recall - r0) / (r1 - r0)
            return float(np.exp(np.log(q0) + f * (np.log(q1) - np.log(q0))))
    return None  # beyond our best recall


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="directory with base.fvecs, queries.fvecs, groundtruth.ivecs")
    p.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"])
    p.add_argument("--quantizer", default="flat", choices=["flat", "sq8", "pq"])
    p.add_argument("--pq-m", type=int, default=16)
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--nprobe", default="1,2,4,8,16,32,64")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--kmeans-iters", type=int, default=25)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--repeat", type=int, default=3, help="best-of-N batch timing, for both engines")
    p.add_argument("--index-node", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "index-node"))
    p.add_argument("extra", nargs="*", help="extra index-node bench arguments (after --)")
    args = p.parse_args()
    args.nprobe = [int(x) for x in args.nprobe.split(",")]
    base = read_vecs(os.path.join(args.data, "base.fvecs"), np.float32)
    queries = read_vecs(os.path.join(args.data, "queries.fvecs"), np.float32)
    gt = read_vecs(os.path.join(args.data, "groundtruth.ivecs"), np.int32)
    print(f"# {args.data}: base {base.shape}, queries {queries.shape}; {args.quantizer} nlist={args.nlist} "
          f"k={args.k} metric={args.metric}; faiss {faiss.__version__} ({faiss_simd()}); extra quiver args: {args.extra}")
    summary = {"qps": [], "cpu_qps": []}
    for threads in [int(t) for t in args.threads.split(",")]:
        fb, frows = run_faiss(args, base, queries, gt, threads)
        qb, qrows = run_quiver(args, threads)
        print(f"\n## threads={threads}")
        print(f"build      faiss: train {fb['train_s']:.2f}s add {fb['add_s']:.2f}s imbalance {fb['imbalance']:.2f}")
        print(f"build     quiver: train {qb['train_s']:.2f}s add {qb['add_s']:.2f}s imbalance {qb['imbalance']:.2f}"
              f" ({qb['kernels']} kernels)")
        ratio_build = (qb["train_s"] + qb["add_s"]) / (fb["train_s"] + fb["add_s"])
        print(f"train+add quiver/faiss = {ratio_build:.2f}")
        print(f"{'nprobe':>6} | {'faiss R@k':>9} {'QPS':>8} {'cpuQPS':>8} | {'quiver R@k':>10} {'QPS':>8}"
              f" {'cpuQPS':>8} {'scanned':>8} | {'ratio@R wall':>12} {'ratio@R cpu':>11}")
        for f, q in zip(frows, qrows):
            cells = []
            for key in ("qps", "cpu_qps"):
                at = qps_at_recall(qrows, f["recall_at_k"], key)
                cells.append(f"{at / f[key]:.2f}" if at else "beyond")
                if at:
                    summary[key].append(at / f[key])
            print(f"{f['nprobe']:>6} | {f['recall_at_k']:>9.4f} {f['qps']:>8.0f} {f['cpu_qps']:>8.0f} |"
                  f" {q['recall_at_k']:>10.4f} {q['qps']:>8.0f} {q['cpu_qps']:>8.0f} {q['scanned']:>8.0f} |"
                  f" {cells[0]:>12} {cells[1]:>11}")
    for key, label in (("qps", "wall-clock"), ("cpu_qps", "CPU-time")):
        v = summary[key]
        if v:
            print(f"\n{label} QPS ratio at equal recall (quiver/faiss), all thread counts: min {min(v):.2f}, "
                  f"geomean {float(np.exp(np.mean(np.log(v)))):.2f}, max {max(v):.2f}")


if __name__ == "__main__":
    main()
