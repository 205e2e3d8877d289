"""Indexed gallery search: FAISS candidates, re-ranked with the project's part distance.

The project's distance between embeddings ``x, y`` of shape ``[c, p]`` is the mean over the ``p`` parts of the
per-part Euclidean distances, ``D(x, y) = (1/p) sum_k d_k`` with ``d_k = ||x[:, k] - y[:, k]||_2``
(:func:`qgait.evaluation.distance.part_distance`). No index computes it: FAISS ranks by the squared L2 distance
of the flattened ``c * p`` vectors, ``L(x, y) = sum_k d_k^2``. By Cauchy-Schwarz,
``D = mean_k d_k <= sqrt(sum_k d_k^2 / p) = sqrt(L / p)``, with equality when every part is equally far, so the
L2 ranking is a proxy for the part-distance ranking, not the ranking itself. :class:`GalleryIndex` therefore

1. retrieves the ``k_candidates`` nearest entries by ``L`` (FAISS: exact ``IndexFlatL2`` by default, or an
   approximate HNSW / IVF index),
2. re-ranks them with the exact part distance,
3. scores each label by its nearest candidate entry, as :func:`qgait.runtime.identify_many` does.

What the candidate stage loses (an entry nearest by ``D`` but outside the ``k_candidates`` nearest by ``L``) is
measured by :mod:`qgait.runtime.index_recall`. With ``k_candidates >= len(gallery)`` the candidates are the whole
gallery and the result equals :func:`~qgait.runtime.identify_many` exactly (the FAISS stage is skipped).

For ``metric="cos"`` the index holds the part-normalized embeddings; then ``L = 2p - 2 sum_k cos_k``, so the L2
ranking *is* the cosine part-distance ranking (up to float round-off) and the re-rank only recomputes distances.

Sources: FAISS, J. Johnson, M. Douze, H. Jégou, "Billion-scale similarity search with GPUs", IEEE Trans. Big
Data 2019; HNSW, Yu. A. Malkov, D. A. Yashunin, "Efficient and robust approximate nearest neighbor search using
Hierarchical Navigable Small World graphs", IEEE TPAMI 2018; IVF (inverted file over a k-means coarse quantizer),
H. Jégou, M. Douze, C. Schmid, "Product quantization for nearest neighbor search", IEEE TPAMI 2011.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..evaluation.distance import part_distance

__all__ = ["INDEX_KINDS", "GalleryIndex", "IndexParams"]

INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf")
"""``flat``: exact L2 (``IndexFlatL2``); ``hnsw``: ``IndexHNSWFlat`` graph; ``ivf``: ``IndexIVFFlat`` inverted
file."""


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class IndexParams:
    """Which FAISS index retrieves the candidates, and its parameters.

    Args:
        kind: ``"flat"`` (exact, the default), ``"hnsw"`` or ``"ivf"`` (approximate).
        hnsw_m: HNSW graph degree ``M`` (links per node and layer; memory ``~ 2 M`` ints per entry).
        ef_construction: HNSW candidate-list size while building (larger: better graph, slower build).
        ef_search: HNSW candidate-list size while searching (larger: higher recall, slower; FAISS uses at least
            the number of neighbours asked for).
        nlist: IVF cells (k-means centroids); ``None``: ``4 sqrt(m)``, at most ``m / 39``.
        nprobe: IVF cells visited per query (larger: higher recall, slower).
        train_size: IVF k-means training sample; ``None``: ``min(m, 50 nlist)`` entries (FAISS asks for 39 to
            256 per centroid).
        seed: the training sample's random seed.

    Raises:
        ValueError: unknown kind, a parameter that is not a positive integer.
    """

    kind: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int = 16
    train_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}: expected one of {list(INDEX_KINDS)}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe"):
            _positive_int(getattr(self, name), name)
        for name in ("nlist", "train_size"):
            if getattr(self, name) is not None:
                _positive_int(getattr(self, name), name)

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def describe(self) -> str:
        if self.kind == "hnsw":
            return f"hnsw(M={self.hnsw_m}, efConstruction={self.ef_construction}, efSearch={self.ef_search})"
        if self.kind == "ivf":
            return f"ivf(nlist={self.nlist or 'auto'}, nprobe={self.nprobe})"
        return "flat"


@contextmanager
def _faiss_threads(threads: int | None):
    try:
        import faiss
    except ImportError as exc:  # a dependency of qgait; missing only in a hand-made environment
        raise ImportError("GalleryIndex needs FAISS: pip install faiss-cpu") from exc

    if threads is None:
        yield faiss
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield faiss
    finally:
        faiss.omp_set_num_threads(before)


def _as_probes(probes: Any, shape: tuple[int, int]) -> np.ndarray:
    p = probes.detach().cpu().numpy() if isinstance(probes, torch.Tensor) else np.asarray(probes)
    if p.dtype.kind not in "fiu":
        raise ValueError(f"probe embeddings must be numbers, got dtype {p.dtype}")
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[0] == 0:
        raise ValueError(f"probe embeddings must be a non-empty [c, p] or [n, c, p] array, got shape {list(p.shape)}")
    if tuple(p.shape[1:]) != shape:
        raise ValueError(f"probe embedding [c, p] = {list(p.shape[1:])} does not match the gallery's {list(shape)} "
                         "(embedded by another model?)")
    if not np.isfinite(p).all():
        raise ValueError("probe embeddings contain NaN or infinite values")
    return np.ascontiguousarray(p, dtype=np.float32)


class GalleryIndex:
    """A FAISS index over a gallery's embeddings, searched with exact part-distance re-ranking (module docstring).

    Args:
        gallery: a :class:`qgait.runtime.Gallery` (embeddings ``[m, c, p]``, kept by reference for the re-rank;
            the FAISS index holds its own copy of the ``[m, c * p]`` float32 vectors, 4 c p bytes per entry).
        params: an :class:`IndexParams`, or a kind name (``"flat"``, ``"hnsw"``, ``"ivf"``) with the defaults.
        metric: ``"euc"`` (the project's part-averaged Euclidean distance) or ``"cos"``.
        k_candidates: entries retrieved by FAISS per probe and re-ranked (default 100); should be well above
            ``top_k`` times the entries per label so that ``top_k`` distinct labels are among them.
        threads: OpenMP threads of FAISS while building and searching (``faiss.omp_set_num_threads``, restored
            afterwards); ``None``: FAISS's default. The re-rank runs in PyTorch with its own thread setting.

    The index is a snapshot: entries enrolled into the gallery later need a new ``GalleryIndex``.

    Raises:
        ValueError: ``gallery`` not a ``Gallery`` (an empty one cannot be built), unknown metric, bad parameters.
    """

    def __init__(self, gallery: Any, params: IndexParams | str = "flat", *, metric: str = "euc",
                 k_candidates: int = 100, threads: int | None = None) -> None:
        from .embedder import Gallery

        if not isinstance(gallery, Gallery):
            raise ValueError(f"gallery must be a qgait.runtime.Gallery, got {type(gallery).__name__}")
        if len(gallery) == 0:
            raise ValueError("empty gallery")
        if metric not in ("euc", "cos"):
            raise ValueError(f"unknown metric {metric!r}: expected 'euc' or 'cos'")
        self.params = IndexParams(params) if isinstance(params, str) else params
        if not isinstance(self.params, IndexParams):
            raise ValueError(f"params must be an IndexParams or a kind name, got {type(params).__name__}")
        self.k_candidates = _positive_int(k_candidates, "k_candidates")
        self.threads = None if threads is None else _positive_int(threads, "threads")
        self.gallery, self.metric = gallery, metric
        self.shape = tuple(gallery.embeddings.shape[1:])
        self.dim = int(np.prod(self.shape))
        self._uniq, self._codes = np.unique(np.array(gallery.labels), return_inverse=True)
        self.index = self._build(self._vectors(gallery.embeddings))

    # ------------------------------------------------------------------ building
    def __len__(self) -> int:
        return len(self.gallery)

    def __repr__(self) -> str:
        c, p = self.shape
        return f"GalleryIndex({self.params.describe()}, {len(self)} entries [{c}, {p}], {self.metric})"

    def _vectors(self, emb: np.ndarray) -> np.ndarray:
        """``[n, c * p]`` float32 C-contiguous: the embeddings (``euc``) or their per-part unit vectors (``cos``)."""
        if self.metric == "cos":
            norm = np.linalg.norm(emb, axis=1, keepdims=True)
            emb = emb / np.maximum(norm, 1e-12)
        return np.ascontiguousarray(emb.reshape(emb.shape[0], -1), dtype=np.float32)

    def _build(self, x: np.ndarray):
        p, m = self.params, x.shape[0]
        with _faiss_threads(self.threads) as faiss:
            if p.kind == "flat":
                index = faiss.IndexFlatL2(self.dim)
            elif p.kind == "hnsw":
                index = faiss.IndexHNSWFlat(self.dim, p.hnsw_m)
                index.hnsw.efConstruction = p.ef_construction
                index.hnsw.efSearch = p.ef_search
            else:
                nlist = p.nlist or max(1, min(int(4 * math.sqrt(m)), m // 39))
                if nlist > m:
                    raise ValueError(f"ivf: nlist {nlist} exceeds the gallery size {m}")
                quantizer = faiss.IndexFlatL2(self.dim)
                index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_L2)
                n_train = min(m, p.train_size or 50 * nlist)
                sample = x if n_train >= m else x[np.sort(np.random.default_rng(p.seed).choice(m, n_train, False))]
                index.train(sample)
                index.nprobe = min(p.nprobe, nlist)
                self._quantizer = quantizer  # keep it alive as long as the index
                self.params = replace(p, nlist=nlist)
            for start in range(0, m, 1 << 16):  # add in blocks: no second full copy of the vectors
                index.add(x[start:start + (1 << 16)])
        return index

    # ------------------------------------------------------------------ search
    def candidates(self, probes: Any, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The FAISS stage: the ``k`` entries nearest to each probe by squared L2 of the flattened embedding.

        Args:
            probes: ``[c, p]`` or ``[n, c, p]`` embeddings.
            k: candidates per probe (default ``k_candidates``; at most the gallery size).

        Returns:
            ``(ids, sq_l2)``: int64 ``[n, k]`` entry indices nearest first (``-1`` where an approximate index found
            fewer) and float32 ``[n, k]`` squared L2 distances (embedding units squared; for ``cos``, of the
            part-normalized vectors).

        Raises:
            ValueError: probes not ``[c, p]`` / ``[n, c, p]`` of the gallery's shape, not finite; ``k < 1``.
        """
        k = min(_positive_int(self.k_candidates if k is None else k, "k"), len(self))
        x = self._vectors(_as_probes(probes, self.shape))
        with _faiss_threads(self.threads):
            sq, ids = self.index.search(x, k)
        return ids.astype(np.int64, copy=False), sq

    def search_entries(self, probes: Any, k_candidates: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Candidates re-ranked by the exact part distance: per probe ``(ids, distances)`` nearest first.

        With ``k_candidates >= len(gallery)`` every entry is ranked (no FAISS stage); otherwise only the
        candidates. Distances are float32 in embedding units (``euc``) or in [0, 2] (``cos``); ties keep the
        lower entry index first.

        Raises:
            ValueError: see :meth:`candidates`.
        """
        k = _positive_int(self.k_candidates if k_candidates is None else k_candidates, "k_candidates")
        p = _as_probes(probes, self.shape)
        emb = self.gallery.embeddings
        if k >= len(self):
            dist = part_distance(torch.from_numpy(p), torch.from_numpy(emb), metric=self.metric).numpy()
            out = []
            for row in dist:
                order = np.argsort(row, kind="stable")
                out.append((order.astype(np.int64), row[order]))
            return out
        ids, _ = self.candidates(p, k)
        out = []
        for i in range(p.shape[0]):  # one probe at a time: grouping probes over the union of their candidates
            cand = np.sort(ids[i][ids[i] >= 0])  # costs more (the [p, c, m] transpose of part_distance dominates)
            if cand.size == 0:  # an approximate index that found nothing
                out.append((cand, np.zeros(0, np.float32)))
                continue
            d = part_distance(torch.from_numpy(p[i:i + 1]), torch.from_numpy(emb[cand]), metric=self.metric)[0].numpy()
            order = np.argsort(d, kind="stable")
            out.append((cand[order], d[order]))
        return out

    def search(self, probes: Any, top_k: int = 5, k_candidates: int | None = None) -> list[list[tuple[str, float]]]:
        """For each probe, the ``top_k`` nearest labels ``[(label, distance), ...]`` nearest first, each label
        scored by its nearest re-ranked candidate (as :func:`qgait.runtime.identify_many`; fewer than ``top_k``
        when the candidates hold fewer labels). Equal to ``identify_many(probes, gallery, top_k, metric)`` when
        ``k_candidates >= len(gallery)``.

        Raises:
            ValueError: ``top_k < 1``, ``k_candidates < 1``, probes of the wrong shape or not finite.
        """
        top_k = _positive_int(top_k, "top_k")
        out = []
        for ids, d in self.search_entries(probes, k_candidates):
            codes = self._codes[ids]
            uc, inv = np.unique(codes, return_inverse=True)  # labels in sorted order: ties broken as identify_many
            best = np.full(len(uc), np.inf)
            np.minimum.at(best, inv, d)
            order = np.argsort(best, kind="stable")[:top_k]
            out.append([(str(self._uniq[uc[j]]), float(best[j])) for j in order])
        return out

    def set_search(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change the approximate index's search effort without rebuilding it (HNSW ``efSearch``, IVF ``nprobe``).

        Raises:
            ValueError: a value that is not a positive integer, or one that does not apply to this index kind.
        """
        if ef_search is not None:
            if self.params.kind != "hnsw":
                raise ValueError(f"ef_search applies to an hnsw index, this one is {self.params.kind}")
            self.index.hnsw.efSearch = _positive_int(ef_search, "ef_search")
            self.params = replace(self.params, ef_search=int(ef_search))
        if nprobe is not None:
            if self.params.kind != "ivf":
                raise ValueError(f"nprobe applies to an ivf index, this one is {self.params.kind}")
            self.index.nprobe = min(_positive_int(nprobe, "nprobe"), self.params.nlist)
            self.params = replace(self.params, nprobe=int(nprobe))
