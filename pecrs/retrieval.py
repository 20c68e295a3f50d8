"""The recall step of §3.3/§3.6 as a search index: the top M items of the catalog for each query.

PECRS scores an item by its recall logit -angular_distance(f(d_t), v) / temperature. The angular
distance sqrt(2 (1 - cos)) falls as the cosine rises, so ranking by recall score is ranking by the
inner product of unit vectors. Every index here works on normalised vectors and returns

    index.search(queries [B, d], M) -> (recall scores [B, M], catalog indices [B, M]), best first

as torch tensors on the queries' device: the `index=` argument of `PECRS.recommend`.

- `ExactIndex`: one matrix product and a top-k. Exact, and the fastest choice for the catalogs of
  the paper (thousands of items).
- `FaissIndex`: for catalogs past `FAISS_THRESHOLD` items. A 4-bit product-quantisation
  "fast-scan" index (faiss `PQ{d/2}x4fs`, 2 dimensions per 4-bit code) proposes
  `k_factor * M` candidates, which are then re-scored exactly (`IndexRefineFlat`), so the
  returned scores are exact and only the candidate list is approximate.

Why that index (measured with `benchmarks/ann.py`: 10^6 random unit vectors of width 576, top-700,
on this project's 2-core CPU machine; see docs/serving.md for the full table). Random unit vectors
are the hardest case for approximate search: the top 700 of a million sit only ~3 standard
deviations above the rest and no region of space holds them, so methods that *skip* parts of the
catalog cannot reach 0.95 recall without visiting most of it:

    IVF-Flat (1024 lists)   nprobe 768 (75 % of the data)   recall 0.88 (10^5 items)
    HNSW-Flat (M=32)        efSearch 4000                   recall 0.96, 48 ms/query at 10^5
                                                            items, and 190 s to build 10^5
                                                            (2 OpenMP threads, shared machine)
    PQ fast-scan + refine   scans compact codes of *every*  recall 0.97 at k_factor 8 on 10^6
                            item, re-scores 8 x 700 exactly items; 12.6 ms (batched) / 22 ms
                                                            (one query) of CPU per query, one
                                                            thread; < 1 min build, 5 GB peak

Scanning 144-byte codes instead of 2,304-byte vectors keeps every item in play at 1/16 of the
memory traffic; the exact re-scoring of a short list repairs the quantisation noise. On
clustered vectors (`--data clustered`, closer to real item vectors) its recall is 1.000.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .heads import recall_from_cosine

FAISS_THRESHOLD = 50_000   # catalogs at least this large get a FaissIndex under kind="auto"
KINDS = ("auto", "exact", "faiss")
MIN_PQ_ITEMS = 1_000       # fewer items: FaissIndex uses a flat candidate index


class ExactIndex:
    """Exact top-M by cosine: normalised queries times normalised keys, then top-k."""

    def __init__(self, vectors: torch.Tensor, temperature: float = 1.0, query_chunk: int = 64):
        self.keys = F.normalize(vectors.detach().float(), dim=-1)
        self.temperature = temperature
        self.query_chunk = query_chunk  # bounds the [chunk, N] score matrix

    def __len__(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def search(self, queries: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        m = min(m, len(self))
        q = F.normalize(queries.detach().float(), dim=-1).to(self.keys.device)
        scores, indices = [], []
        for start in range(0, q.shape[0], self.query_chunk):
            top = (q[start:start + self.query_chunk] @ self.keys.T).topk(m, dim=1)
            scores.append(top.values)
            indices.append(top.indices)
        cos = torch.cat(scores) if scores else q.new_zeros(0, m)
        idx = torch.cat(indices) if indices else torch.zeros(0, m, dtype=torch.long)
        return recall_from_cosine(cos, self.temperature).to(queries.device), idx.to(queries.device)


def default_factory(d: int) -> str:
    """PQ with 2 dimensions per 4-bit sub-quantiser (one per dimension if d is odd), fast-scan."""
    return f"PQ{d // 2}x4fs" if d % 2 == 0 else f"PQ{d}x4fs"


class FaissIndex:
    """Approximate candidates from a faiss index over unit vectors, re-scored exactly.

    factory: a faiss `index_factory` string for the candidate index (default `default_factory`,
    or "Flat" under MIN_PQ_ITEMS items);
    k_factor: candidates re-scored per result (recall rises with it, and so does the time);
    train_size: vectors sampled to train the quantiser (deterministic with `seed`).
    """

    def __init__(self, vectors: torch.Tensor, temperature: float = 1.0, factory: str | None = None,
                 k_factor: int = 8, train_size: int = 20_000, seed: int = 0,
                 add_chunk: int = 65_536):
        import faiss

        vectors = vectors.detach()
        n, d = vectors.shape
        # Too few items to train 16-centroid quantisers: a flat candidate index (still exact).
        self.factory = factory or (default_factory(d) if n >= MIN_PQ_ITEMS else "Flat")
        self.k_factor = k_factor
        self.temperature = temperature
        base = faiss.index_factory(d, self.factory, faiss.METRIC_INNER_PRODUCT)
        if not base.is_trained:
            rows = np.sort(np.random.default_rng(seed).choice(n, min(n, train_size), replace=False))
            base.train(_unit_numpy(vectors[torch.from_numpy(rows)]))
        self.index = faiss.IndexRefineFlat(base)   # keeps the unit vectors for exact re-scoring
        for start in range(0, n, add_chunk):       # chunks: no second full copy of the catalog
            self.index.add(_unit_numpy(vectors[start:start + add_chunk]))

    def __len__(self) -> int:
        return self.index.ntotal

    @torch.no_grad()
    def search(self, queries: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        import faiss

        m = min(m, len(self))
        q = _unit_numpy(queries.detach())
        # Never ask the candidate index for more than it holds (it would pad with -1).
        k_factor = max(1.0, min(float(self.k_factor), len(self) / max(m, 1)))
        cos, idx = self.index.search(q, m, params=faiss.IndexRefineSearchParameters(k_factor=k_factor))
        cos, idx = torch.from_numpy(cos), torch.from_numpy(idx)
        return (recall_from_cosine(cos, self.temperature).to(queries.device),
                idx.to(device=queries.device, dtype=torch.long))


def search_excluding(search, queries: torch.Tensor, m: int, exclude: torch.Tensor | None = None):
    """`search(queries, m)` (an index's search, same return) over the catalog without the items of
    `exclude` [B, n] (catalog indices, -1 pads a row): each row's top m of the remaining items,
    best first. At most n of a row's top m + n are excluded, so searching m + n and masking the
    excluded ones leaves that row's top m of the rest (exact for an exact search; an approximate
    index proposes from a slightly larger pool). Every row keeps m columns: a row with fewer than m
    items left (a small catalog) ends in index -1 with score -inf, whatever its batch-mates."""
    if exclude is not None and exclude.numel():   # real entries only: excluding nothing is the plain search
        exclude = exclude.sort(dim=1, descending=True).values[:, :int((exclude >= 0).sum(1).max())]
    if exclude is None or exclude.numel() == 0:
        return search(queries, m)
    scores, top = search(queries, m + exclude.shape[1])
    excluded = (top.unsqueeze(2) == exclude.to(top.device).unsqueeze(1)).any(2)    # [B, m + n]
    kept = scores.masked_fill(excluded, float("-inf")).topk(min(m, top.shape[1]), dim=1)   # best first
    return kept.values, top.gather(1, kept.indices).masked_fill(kept.values.isneginf(), -1)


def _unit_numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(F.normalize(x.float(), dim=-1).cpu().numpy())


def build_index(vectors: torch.Tensor, kind: str = "auto", temperature: float = 1.0,
                threshold: int = FAISS_THRESHOLD, **faiss_options):
    """An index over catalog vectors [N, d]. kind="auto": exact below `threshold` items, else faiss.
    `temperature` scales the returned recall scores (the model's `recall_temperature`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {list(KINDS)}")
    if kind == "faiss" or (kind == "auto" and vectors.shape[0] >= threshold):
        return FaissIndex(vectors, temperature, **faiss_options)
    return ExactIndex(vectors, temperature)
