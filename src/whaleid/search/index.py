"""Nearest-neighbour indexes over L2-normalised embeddings (cosine = inner product).

Two implementations behind one interface, so the Identifier, the CLI and the web app
never care which one a catalog uses:

- ``ExactIndex``: numpy/BLAS brute force, chunked over queries. No extra dependency at
  query time and exact results; the default, fast enough for Happywhale-sized catalogs.
- ``FaissIndex``: ``faiss.IndexFlatIP`` (exact) or an approximate HNSW / IVF index for
  galleries where brute force gets too slow.

Every index saves to one ``.npz`` file (a JSON ``meta`` entry plus the payload) written
atomically, and ``load_index`` rebuilds whichever kind it finds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from whaleid.errors import UserError
from whaleid.files import atomic_path

__all__ = [
    "Index",
    "ExactIndex",
    "FaissIndex",
    "build_index",
    "load_index",
    "check_vectors",
    "KINDS",
]

FORMAT = "whaleid.search.index"
FORMAT_VERSION = 1
#: accepted ``kind`` values for ``build_index``; "faiss" is an alias of "faiss-flat".
KINDS = ("exact", "faiss", "faiss-flat", "faiss-hnsw", "faiss-ivf")


# --------------------------------------------------------------------------- helpers


def check_vectors(x: Any, name: str = "vectors", dim: int | None = None) -> np.ndarray:
    """Reject what would silently give wrong neighbours (wrong shape/dtype/dim, NaN/inf).

    float64 is refused rather than cast so that a caller who forgot the model's dtype
    finds out here, not through a 2x memory bill or a mismatched saved index.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        hint = " (a single vector? use x[None, :])" if x.ndim == 1 else ""
        raise UserError(f"{name} must be 2-D (n, dim), got shape {x.shape}{hint}")
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}; convert with .astype(np.float32)")
    if x.shape[1] == 0:
        raise UserError(f"{name} has zero columns; embeddings need dim >= 1")
    if dim is not None and x.shape[1] != dim:
        raise UserError(f"{name} have dim {x.shape[1]} but the index has dim {dim}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        rows = ", ".join(map(str, bad[:5])) + (", ..." if bad.size > 5 else "")
        raise UserError(f"{name} contain NaN or inf in {bad.size} row(s): {rows}")
    return np.ascontiguousarray(x)


def _warn_if_not_normalised(x: np.ndarray, name: str = "gallery vectors") -> None:
    """Inner product only equals cosine on unit vectors; a warning beats wrong scores."""
    if len(x) == 0:
        return
    norms = np.linalg.norm(x, axis=1)
    off = np.abs(norms - 1.0) > 1e-3
    if off.any():
        warnings.warn(
            f"{off.sum()} of {len(x)} {name} are not L2-normalised (norms {norms.min():.3g}.."
            f"{norms.max():.3g}); scores will be inner products, not cosines",
            stacklevel=3,
        )


def _save_npz(path: str | os.PathLike, meta: dict, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object stops numpy from appending ".npz"
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def _blas_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):
        yield


@contextlib.contextmanager
def _faiss_threads(threads: int | None) -> Iterator[None]:
    """faiss' OpenMP thread count is process-global, so set it only around our calls."""
    import faiss

    if threads is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_threads(threads: int | None) -> int | None:
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"threads must be None or a positive integer, got {threads!r}")
    return None if threads is None else int(threads)


# --------------------------------------------------------------------------- interface


class Index(ABC):
    """k-nearest-neighbour search by inner product over a fixed gallery.

    ``search`` returns ``(scores, indices)``, each ``(nq, min(k, n))``, best first:
    float32 scores and int64 gallery row numbers. Approximate indexes may return fewer
    than k hits for a query; the missing slots hold index -1 and score -inf (the faiss
    convention), which ``identify.top_individuals`` skips.
    """

    kind: str

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def save(self, path: str | os.PathLike) -> None: ...

    def _prepare(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, int]:
        queries = check_vectors(queries, "queries", dim=self.dim)
        return queries, min(_check_k(k), len(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, n={len(self)}, dim={self.dim})"

    def _header(self, params: dict) -> dict:
        """What a saved index says about itself, checked when it is loaded."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "n": len(self),
            "dim": self.dim,
            "params": params,
        }


# --------------------------------------------------------------------------- exact


def _select_above(sims: np.ndarray, cut: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best k per row among entries >= that row's cut; also how many passed the cut."""
    rows = sims.shape[0]
    rr, cc = np.nonzero(sims >= cut[:, None])
    vals = sims[rr, cc]
    counts = np.bincount(rr, minlength=rows)
    order = np.lexsort((cc, -vals, rr))  # by row, then score desc, then gallery row
    starts = np.cumsum(counts) - counts
    take = order[np.minimum(starts[:, None] + np.arange(k), len(order) - 1)]
    return vals[take], cc[take].astype(np.int64), counts


def _top_k_rows(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k per row (k <= row width), best first, ties to the lowest gallery row.

    ``np.argpartition`` over 51k columns costs ~1 us per row element and dominated the
    exact search. Instead, the (4k)-th largest of an evenly strided column sample gives
    each row a cut that ~4k entries pass, and only those are sorted (~5x faster). The
    result stays exact: a row is trusted only if at least k entries pass (then its true
    top k all do); a row with fewer, and any narrow matrix, uses the exact k-th value
    (``np.partition``) as its cut instead.
    """
    rows, n = sims.shape
    if rows == 0:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    m = min(n, max(4096, -(-4 * n // k)))  # enough samples that the sample rank is >= ~16
    if 2 * m > n:
        return _select_above(sims, np.partition(sims, n - k, axis=1)[:, n - k], k)[:2]
    sample = sims[:, :: n // m][:, :m]
    m = sample.shape[1]
    r = max(1, round(4 * k * m / n))
    vals, idx, counts = _select_above(sims, np.partition(sample, m - r, axis=1)[:, m - r], k)
    short = np.flatnonzero(counts < k)
    if short.size:
        sub = sims[short]
        vals[short], idx[short], _ = _select_above(sub, np.partition(sub, n - k, axis=1)[:, n - k], k)
    return vals, idx


class ExactIndex(Index):
    """Brute-force inner product with numpy BLAS, a block of queries at a time.

    A full 28k x 51k score matrix would be ~5.7 GB; chunking keeps the transient at
    ``chunk_bytes`` while each block is still a large, BLAS-efficient matrix product.
    Selection is ``_top_k_rows``: a sampled-threshold prefilter, then a sort of only the
    few hundred survivors per query, several times faster than ``argpartition`` on
    51k-wide rows. Results are sorted by score, ties by gallery row.
    """

    kind = "exact"

    def __init__(
        self,
        vectors: np.ndarray,
        *,
        threads: int | None = None,
        chunk_bytes: int = 64 * 2**20,
        copy: bool = True,
    ):
        checked = check_vectors(vectors, "gallery vectors")
        if len(checked) == 0:
            raise UserError("cannot build an index over an empty gallery")
        _warn_if_not_normalised(checked)
        # Own the data, so later edits to the caller's array cannot change search results.
        if copy and np.may_share_memory(checked, vectors):
            checked = checked.copy()
        self.vectors = checked
        self.threads = _check_threads(threads)
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        self.chunk_bytes = int(chunk_bytes)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries, k = self._prepare(queries, k)
        nq, n = len(queries), len(self)
        scores = np.empty((nq, k), dtype=np.float32)
        indices = np.empty((nq, k), dtype=np.int64)
        rows = max(1, self.chunk_bytes // (4 * n))
        with _blas_threads(self.threads):
            for start in range(0, nq, rows):
                stop = min(start + rows, nq)
                sims = queries[start:stop] @ self.vectors.T
                scores[start:stop], indices[start:stop] = _top_k_rows(sims, k)
        return scores, indices

    def save(self, path: str | os.PathLike) -> None:
        _save_npz(path, self._header({}), vectors=self.vectors)


# --------------------------------------------------------------------------- faiss


class FaissIndex(Index):
    """faiss-backed index: ``method`` "flat" (exact), "hnsw" or "ivf" (approximate).

    Parameters (all optional) by method:
      hnsw: ``m`` (graph degree, 32), ``ef_construction`` (64), ``ef_search`` (128;
            raised to k at search time, since HNSW cannot return more than efSearch).
      ivf:  ``nlist`` (clusters, ~4*sqrt(n) capped so each has >= 39 training points),
            ``nprobe`` (clusters visited per query, nlist/16 by default).
    ``threads`` limits faiss' OpenMP threads during build and search only.
    """

    METHODS = ("flat", "hnsw", "ivf")

    def __init__(
        self,
        vectors: np.ndarray | None = None,
        *,
        method: str = "flat",
        threads: int | None = None,
        _index: Any = None,
        **params: Any,
    ):
        import faiss

        if method not in self.METHODS:
            raise ValueError(f"unknown faiss method {method!r}; choose from {self.METHODS}")
        self.method = method
        self.kind = f"faiss-{method}"
        self.threads = _check_threads(threads)
        allowed = {"flat": set(), "hnsw": {"m", "ef_construction", "ef_search"}, "ivf": {"nlist", "nprobe"}}[method]
        unknown = set(params) - allowed
        if unknown:
            raise TypeError(
                f"unexpected parameter(s) for faiss-{method}: {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        if _index is not None:  # from load_index
            self._index = _index
            self.params = dict(params)
            return
        if vectors is None:
            raise ValueError("FaissIndex needs gallery vectors")
        vectors = check_vectors(vectors, "gallery vectors")
        n, d = vectors.shape
        if n == 0:
            raise UserError("cannot build an index over an empty gallery")
        _warn_if_not_normalised(vectors)
        ip = faiss.METRIC_INNER_PRODUCT
        with _faiss_threads(self.threads):
            if method == "flat":
                index = faiss.IndexFlatIP(d)
                self.params = {}
            elif method == "hnsw":
                self.params = {
                    "m": int(params.get("m", 32)),
                    "ef_construction": int(params.get("ef_construction", 64)),
                    "ef_search": int(params.get("ef_search", 128)),
                }
                index = faiss.IndexHNSWFlat(d, self.params["m"], ip)
                index.hnsw.efConstruction = self.params["ef_construction"]
            else:
                nlist = int(params.get("nlist", max(1, min(round(4 * math.sqrt(n)), n // 39))))
                if not 1 <= nlist <= n:
                    raise ValueError(f"nlist must be in [1, n={n}], got {nlist}")
                nprobe = int(params.get("nprobe", max(1, nlist // 16)))
                self.params = {"nlist": nlist, "nprobe": max(1, min(nprobe, nlist))}
                quantizer = faiss.IndexFlatIP(d)
                index = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
                index.own_fields = True  # the index keeps its quantizer alive
                quantizer.this.disown()
                index.train(vectors)
            index.add(vectors)
        self._index = index

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries, k = self._prepare(queries, k)
        if self.method == "hnsw":
            self._index.hnsw.efSearch = max(self.params["ef_search"], k)
        elif self.method == "ivf":
            self._index.nprobe = self.params["nprobe"]
        if len(queries) == 0:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        with _faiss_threads(self.threads):
            scores, indices = self._index.search(queries, k)
        scores = np.asarray(scores, dtype=np.float32)
        indices = np.asarray(indices, dtype=np.int64)
        scores[indices < 0] = -np.inf
        return scores, indices

    def save(self, path: str | os.PathLike) -> None:
        import faiss

        meta = self._header(self.params)
        _save_npz(path, meta, faiss=faiss.serialize_index(self._index))


# --------------------------------------------------------------------------- factory


def build_index(vectors: np.ndarray, kind: str = "exact", **kw: Any) -> Index:
    """One entry point so callers pick an index by a string from config or CLI.

    ``kind``: "exact" | "faiss" (= "faiss-flat") | "faiss-hnsw" | "faiss-ivf"; extra
    keywords go to the class (``threads``, ``chunk_bytes``, ``m``, ``nlist``, ...).
    """
    if kind == "exact":
        return ExactIndex(vectors, **kw)
    if kind in ("faiss", "faiss-flat", "faiss-hnsw", "faiss-ivf"):
        method = "flat" if kind == "faiss" else kind.split("-", 1)[1]
        return FaissIndex(vectors, method=method, **kw)
    raise ValueError(f"unknown index kind {kind!r}; choose from {KINDS}")


def load_index(path: str | os.PathLike, *, threads: int | None = None) -> Index:
    """Rebuild an index saved by ``Index.save``; threads are a runtime choice, not saved.

    A missing, foreign, corrupt or inconsistent file is a UserError naming it: rebuild the
    index (``whaleid identify ... --save``) rather than search a wrong one.
    """
    path = Path(path)
    again = "save the identifier again (`whaleid identify ... --save`)"
    if not path.is_file():
        raise UserError(f"no index file at {path}: {again}")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {name: data[name] for name in data.files if name != "meta"}
    except (ValueError, KeyError, OSError, EOFError, AttributeError, TypeError, zipfile.BadZipFile) as exc:
        # AttributeError/TypeError: a plain .npy array or a pickle, not an .npz archive; BadZipFile: one cut short
        raise UserError(f"{path} is not a whaleid index file ({exc}): {again}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a whaleid index file: {again}")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise UserError(
            f"{path} was written by a newer whaleid (index format v{meta['version']}, this one reads v{FORMAT_VERSION})"
        )
    kind = meta.get("kind")
    if kind != "exact" and not (isinstance(kind, str) and kind.startswith("faiss-")):
        raise UserError(f"{path}: unknown index kind {kind!r}: {again}")
    try:
        if kind == "exact":
            index: Index = ExactIndex(arrays["vectors"], threads=threads, copy=False)
        else:
            import faiss

            raw = faiss.deserialize_index(arrays["faiss"])
            index = FaissIndex(method=kind.split("-", 1)[1], threads=threads, _index=raw, **meta.get("params", {}))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # faiss raises RuntimeError on junk
        raise UserError(f"{path} is a damaged index ({exc}): {again}") from None
    if len(index) != meta.get("n") or index.dim != meta.get("dim"):
        raise UserError(
            f"{path} is inconsistent: meta says n={meta.get('n')}, dim={meta.get('dim')}, "
            f"payload has n={len(index)}, dim={index.dim}: {again}"
        )
    return index
