"""A small client for Quiver's query API (`quiver.v1.Query`, served by an index's routers).

The gRPC stubs are generated with grpcio-tools from the project's own
`index-node/proto/proto/quiver/v1/quiver.proto` when first needed, into a cache directory
keyed by the .proto's content and the generator's version, so they never drift from the API
the routers serve (nothing generated is checked in).

    from quiver_client import QuiverClient, QuiverError

    with QuiverClient("127.0.0.1:7000", timeout=5.0) as client:
        hit = client.search([0.1] * 128, k=10)
        print(hit.version, hit.ids, hit.distances)
        batch = client.batch_search([[0.1] * 128, [0.2] * 128], k=5, nprobe=32)
        try:
            client.search([0.1] * 3)
        except QuiverError as e:
            print(e.code_name, e.details)  # INVALID_ARGUMENT vector: dimension 3 does not ...

Distances are "smaller is better": squared L2, or the negated dot product for inner-product
and cosine indexes. Every answer comes from exactly one index version, named in `version`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import grpc

# The .proto of this checkout: examples/python/ -> the repository root.
DEFAULT_PROTO = (
    Path(__file__).resolve().parents[2] / "index-node" / "proto" / "proto" / "quiver" / "v1" / "quiver.proto"
)
# The .proto's path under its include root: also the generated modules' package path.
PROTO_NAME = "quiver/v1/quiver.proto"

__all__ = ["QuiverClient", "QuiverError", "SearchResult", "BatchResult", "load_stubs"]


class QuiverError(Exception):
    """A failed call: the gRPC status code and the server's message.

    The routers name the offending field in INVALID_ARGUMENT (`vector: dimension 3 does not
    match the index dimension 128`, `k: 5000 exceeds the maximum 1000`, `nprobe: ...`), answer
    NOT_FOUND for a pinned version they do not hold, and UNAVAILABLE when a shard has no
    replica (or the router is shutting down: retry another one).
    """

    def __init__(self, code: grpc.StatusCode, details: str, method: str):
        self.code = code
        self.details = details
        self.method = method
        super().__init__(f"{method}: {self.code_name}: {details}")

    @property
    def code_name(self) -> str:
        """The status code's name as gRPC spells it: INVALID_ARGUMENT, UNAVAILABLE, ..."""
        return self.code.name


@dataclass
class SearchResult:
    """The k nearest neighbours of one query vector, nearest first."""

    ids: list[int]
    distances: list[float]
    # The index version that answered (every shard asked answered from it).
    version: str
    # Shards that did not answer (only with allow_partial=True).
    missing_shards: list[int] = field(default_factory=list)
    lists_probed: int = 0
    candidates_scanned: int = 0
    shards_asked: int = 0


@dataclass
class BatchResult:
    """One SearchResult per query vector, in order; all from the same version."""

    results: list[SearchResult]
    version: str


def _cache_root() -> Path:
    explicit = os.environ.get("QUIVER_STUB_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quiver" / "python-stubs"


def load_stubs(proto: Optional[os.PathLike] = None, cache_dir: Optional[os.PathLike] = None):
    """Generates (once) and imports the stubs of `quiver.proto`: returns (pb2, pb2_grpc).

    `proto` defaults to this checkout's .proto (or $QUIVER_PROTO); `cache_dir` to
    $QUIVER_STUB_CACHE, else $XDG_CACHE_HOME/quiver/python-stubs (~/.cache/...).
    """
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
        import grpc_tools
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "grpcio-tools is needed to generate the Quiver stubs: "
            "pip install -r examples/python/requirements.txt"
        ) from e
    proto_path = Path(proto or os.environ.get("QUIVER_PROTO") or DEFAULT_PROTO).resolve()
    if not proto_path.is_file():
        raise FileNotFoundError(f"no Quiver .proto at {proto_path} (set QUIVER_PROTO)")
    source = proto_path.read_bytes()
    # The generated code depends on the .proto and on the generator: key the cache by both.
    tools_version = getattr(grpc_tools, "__version__", None) or _dist_version("grpcio-tools")
    key = hashlib.sha256(source + b"\0" + tools_version.encode()).hexdigest()[:16]
    out = Path(cache_dir or _cache_root()) / key
    if not (out / "quiver" / "v1" / "quiver_pb2_grpc.py").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        # Generate beside the final place, then rename: concurrent runs never see half a tree.
        work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=out.parent))
        include = work / "src"
        (include / "quiver" / "v1").mkdir(parents=True)
        (include / PROTO_NAME).write_bytes(source)
        gen = work / "gen"
        gen.mkdir()
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{include}",
                f"-I{well_known}",
                f"--python_out={gen}",
                f"--grpc_python_out={gen}",
                str(include / PROTO_NAME),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed ({rc}) on {proto_path}")
        try:
            os.replace(gen, out)
        except OSError:
            if not out.is_dir():  # another process may have won the race
                raise
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    pb2 = importlib.import_module("quiver.v1.quiver_pb2")
    pb2_grpc = importlib.import_module("quiver.v1.quiver_pb2_grpc")
    return pb2, pb2_grpc


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # pragma: no cover
        return "unknown"


class QuiverClient:
    """A connection to the routers of one index (the index's Service, port `query`).

    `target` is `host:port` (a plain-text channel) unless `credentials` are given (e.g.
    `grpc.ssl_channel_credentials()` behind a TLS-terminating gateway). `timeout` is the
    default deadline of each call in seconds; each method takes its own `timeout` too.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 5.0,
        credentials: Optional[grpc.ChannelCredentials] = None,
        options: Sequence[tuple] = (),
        proto: Optional[os.PathLike] = None,
    ):
        self._pb2, pb2_grpc = load_stubs(proto)
        self.target = target
        self.timeout = timeout
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=list(options))
        else:
            self._channel = grpc.secure_channel(target, credentials, options=list(options))
        self._stub = pb2_grpc.QueryStub(self._channel)

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Blocks until the channel connects; raises QuiverError(UNAVAILABLE) if it does not."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout or self.timeout)
        except grpc.FutureTimeoutError:
            raise QuiverError(
                grpc.StatusCode.UNAVAILABLE, f"cannot connect to {self.target}", "connect"
            ) from None

    def search(
        self,
        vector: Sequence[float],
        k: int = 10,
        *,
        nprobe: Optional[int] = None,
        version: Optional[str] = None,
        allow_partial: bool = False,
        timeout: Optional[float] = None,
    ) -> SearchResult:
        """The `k` nearest neighbours of `vector`.

        `nprobe`: lists to probe (the index's `spec.index.nprobe` when None). `version`: pin
        this version instead of the active one (it must be loaded by the routers: the active,
        a warming or a draining one). `allow_partial`: accept an answer without the shards
        that could not be reached (listed in `missing_shards`).
        """
        req = self._pb2.SearchRequest(
            vector=_floats(vector), k=k, allow_partial=allow_partial
        )
        if nprobe is not None:
            req.nprobe = nprobe
        if version is not None:
            req.version = version
        resp = self._call(self._stub.Search, req, timeout, "Search")
        return _result(resp)

    def batch_search(
        self,
        vectors: Iterable[Sequence[float]],
        k: int = 10,
        *,
        nprobe: Optional[int] = None,
        version: Optional[str] = None,
        allow_partial: bool = False,
        timeout: Optional[float] = None,
    ) -> BatchResult:
        """Several vectors with the same parameters, answered from one version."""
        req = self._pb2.BatchSearchRequest(
            queries=[self._pb2.Vector(values=_floats(v)) for v in vectors],
            k=k,
            allow_partial=allow_partial,
        )
        if nprobe is not None:
            req.nprobe = nprobe
        if version is not None:
            req.version = version
        resp = self._call(self._stub.BatchSearch, req, timeout, "BatchSearch")
        return BatchResult(results=[_result(r) for r in resp.results], version=resp.version)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "QuiverClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, req, timeout: Optional[float], name: str):
        try:
            return method(req, timeout=timeout if timeout is not None else self.timeout)
        except grpc.RpcError as e:
            # Calls raise grpc.RpcError objects that are also grpc.Call: code() and details().
            raise QuiverError(e.code(), e.details() or "", name) from None


def _floats(vector: Sequence[float]) -> list[float]:
    # Accepts lists, tuples, array.array and numpy arrays alike.
    return [float(x) for x in vector]


def _result(r) -> SearchResult:
    c = r.counters
    return SearchResult(
        ids=list(r.ids),
        distances=list(r.distances),
        version=r.version,
        missing_shards=list(r.missing_shards),
        lists_probed=c.lists_probed,
        candidates_scanned=c.candidates_scanned,
        shards_asked=c.shards_asked,
    )
