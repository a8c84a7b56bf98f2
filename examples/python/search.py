#!/usr/bin/env python3
"""Searches a Quiver index through its routers: one random vector, then a small batch.

    python3 search.py --target 127.96.12.7:7000 --dim 128
    python3 search.py --target localhost:7000 --dim 384 --k 5 --nprobe 32 --batch 4
    python3 search.py --target localhost:7000 --dim 128 --version v2-1a2b3c4d   # pin a version

Prints the ids and distances of each answer and the index version that gave it. A failed call
prints the gRPC status code and the router's message on stderr and exits 1 (e.g.
`error: Search: INVALID_ARGUMENT: vector: dimension 127 does not match the index dimension
128`); missing Python packages exit 2.
"""

from __future__ import annotations

import argparse
import random
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="HOST:PORT of the index Service (port `query`) or a router")
    p.add_argument("--dim", type=int, default=128, help="vector dimension (the index's spec.dimension; default 128, the quickstart's)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--nprobe", type=int, default=None, help="lists to probe (default: the index's spec.index.nprobe)")
    p.add_argument("--batch", type=int, default=3, help="vectors in the BatchSearch (0: none; default 3)")
    p.add_argument("--version", default=None, help="pin this index version instead of the active one")
    p.add_argument("--timeout", type=float, default=5.0, help="deadline of each call in seconds (default 5)")
    p.add_argument("--seed", type=int, default=None, help="seed of the random vectors")
    args = p.parse_args(argv)

    try:
        from quiver_client import QuiverClient, QuiverError
    except ImportError as e:
        print(
            f"error: {e}\nerror: the client needs grpcio and grpcio-tools: "
            "pip install -r examples/python/requirements.txt",
            file=sys.stderr,
        )
        return 2

    rng = random.Random(args.seed)

    def vector():
        return [rng.gauss(0.0, 1.0) for _ in range(args.dim)]

    try:
        client = QuiverClient(args.target, timeout=args.timeout)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with client:
        try:
            started = time.perf_counter()
            r = client.search(vector(), k=args.k, nprobe=args.nprobe, version=args.version)
            ms = (time.perf_counter() - started) * 1000
            print(
                f"search: {len(r.ids)} hits from version {r.version} in {ms:.1f} ms "
                f"(lists probed {r.lists_probed}, candidates scanned {r.candidates_scanned}, "
                f"shards asked {r.shards_asked})"
            )
            print(f"  {'rank':>4}  {'id':>12}  distance")
            for rank, (i, d) in enumerate(zip(r.ids, r.distances), 1):
                print(f"  {rank:>4}  {i:>12}  {d:.6g}")
            if args.batch > 0:
                started = time.perf_counter()
                b = client.batch_search(
                    [vector() for _ in range(args.batch)],
                    k=args.k,
                    nprobe=args.nprobe,
                    version=args.version,
                )
                ms = (time.perf_counter() - started) * 1000
                print(f"batch_search: {len(b.results)} queries from version {b.version} in {ms:.1f} ms")
                for q, res in enumerate(b.results):
                    ids = ", ".join(str(i) for i in res.ids)
                    dists = ", ".join(f"{d:.4g}" for d in res.distances)
                    print(f"  query {q}: {len(res.ids)} hits, ids [{ids}], distances [{dists}]")
        except QuiverError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
