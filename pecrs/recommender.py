"""`Recommender`: a trained PECRS checkpoint plus a catalog, ready to talk to.

    from pecrs.recommender import Recommender
    rec = Recommender.from_pretrained("runs/inspired")            # run folder or checkpoint
    turns = [{"role": "seeker", "text": "Any good sci-fi thrillers?"}]
    rec.recommend(turns, k=5)      # [Recommendation(item, score, rank), ...] best first
    rec.respond(turns)             # Response(text, raw_text, items, recommended)

What happens on a turn (paper §3.6): the dialogue is laid out as in training (`DialogueEncoder`),
the LM reads it once up to [REC] (`PECRS.context_pass`); the recall head retrieves the top
`m_inference` items (`pecrs.retrieval`: exact for small catalogs, faiss past 50k items), the
re-ranker orders them, and the response is generated with the top item injected as
"[REC] v [REC_END] Recommender:". The [ITEM] tokens of the generated text are then filled in.

Several items per turn (`respond(..., k_items=k)`; the paper's limitations 1-2). The top k re-ranked
items are injected together, "[REC] v_1 .. v_k [REC_END]", the layout the encoder already uses
for context turns that mention several items, and the generated [ITEM] placeholders are filled
in order with v_1, v_2, ... (placeholders beyond k repeat v_k; with k = 1 every [ITEM] is the
top item, as in the paper). Training generated after a single item only, so with k > 1 a model
may name fewer items than it was given: `Response.items` lists what the text actually names.

Input. `dialogue` is a list of `Turn`s, a list of {"role", "text", "items"?} dicts, or a
`Dialogue`; roles are "seeker" and "recommender"; a text may mention catalog items as [ITEM] with
their ids in "items". Bad input raises `DataError` (a ValueError) saying which turn is wrong.
Length: the model reads the last `context_max_tokens` tokens of the dialogue (256 by default,
the training budget, §3.2) and earlier text is dropped. Each turn's text is first cut to its last
16 x context_max_tokens characters, which bounds the cost of pathological input; tokens average
far fewer than 16 characters, so the cut does not reach text the model would have read.

Catalog vectors (Eq. 1) are computed once per (checkpoint, catalog) and cached on disk under
PECRS_CACHE (default ~/.cache/pecrs)/catalogs/<key>.pt, the key hashing the checkpoint files, the
catalog contents and the item-text settings, so a second start loads them instead of re-encoding.

Precision (`dtype`, pecrs.precision): "auto" (default) runs the LM in bfloat16 where the hardware
multiplies it natively (a GPU that supports it, a CPU with AMX or AVX512-BF16) and in float32
elsewhere; "float32" / "bfloat16" force one. In bfloat16 the decoder's frozen linear weights are
stored in bfloat16 and run under autocast; LoRA, the heads, the catalog vectors and the recall
search stay float32. Vectors encoded by a bfloat16 model are cached under their own key, and a
bfloat16 recommender prefers float32-encoded vectors when they are cached.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .backbone import default_device
from .catalog import ItemStore
from .data import ITEM, REC, REC_END, RECOMMENDER, ROLES, SEP, DataError, Dialogue, Item, Turn
from .loaders import parse_item, parse_json_line, read_lines
from .setup import dialogue_encoder

log = logging.getLogger(__name__)

CATALOG_FILE = "items.jsonl"     # the catalog copy that Recommender.save_pretrained writes
VECTORS_FILE = "item_vectors.safetensors"  # that catalog's item vectors (Eq. 1), so loading skips encoding
CACHE_FORMAT = 1                 # bump when the cached payload or the encoding changes
CHARS_PER_TOKEN = 16             # per-turn character cut: 16 x context_max_tokens
RESERVED = (SEP, REC, REC_END)   # special tokens a user text must not contain


@dataclass(frozen=True)
class Recommendation:
    item: Item
    score: float    # re-ranking score (Eq. 5 logit); higher is better
    rank: int       # 1 = best


@dataclass(frozen=True)
class Response:
    text: str                   # the response with each [ITEM] replaced by "Title (Year)"
    raw_text: str               # as generated, [ITEM] placeholders kept
    items: list[Item]           # the item of each [ITEM] in raw_text, in order
    recommended: list[Item] = field(default_factory=list)  # the items injected before generating

    @property
    def turn(self) -> Turn:
        """This response as a recommender turn, to append to the dialogue."""
        return Turn(RECOMMENDER, self.raw_text, tuple(it.id for it in self.items))


# ---- catalogs ----------------------------------------------------------------------------------

@dataclass
class CatalogReport:
    """Where a catalog came from and what was skipped while reading it (lenient reading only)."""
    source: str
    n_items: int
    n_errors: int = 0
    errors: list[str] = field(default_factory=list)   # the first few messages
    vectors_from_cache: bool = False
    cache_path: str | None = None
    encode_seconds: float = 0.0

    def summary(self) -> str:
        vec = (f"vectors loaded from cache {self.cache_path}" if self.vectors_from_cache
               else f"vectors encoded in {self.encode_seconds:.1f} s"
               + (f", cached at {self.cache_path}" if self.cache_path else ""))
        bad = f"; skipped {self.n_errors} bad line(s)" if self.n_errors else ""
        return f"catalog {self.source}: {self.n_items} items{bad}; {vec}"


def read_items_lenient(path, max_errors: int = 10) -> tuple[dict[str, Item], list[str], int]:
    """An items.jsonl read like `loaders.load_items`, except that a bad line (malformed JSON, a
    missing title, a wrong type, a duplicate id) is skipped and reported instead of raised.
    Returns (items, the first `max_errors` messages, the number of bad lines)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=str(path))
    items: dict[str, Item] = {}
    errors: list[str] = []
    n_bad = 0
    for n, line in enumerate(read_lines(path), 1):  # non-UTF-8 text: a DataError naming the file
        if not line.strip():
            continue
        where = {"path": str(path), "line": n}
        try:
            item = parse_item(parse_json_line(line, where), where)
            if item.id in items:
                raise DataError(f"duplicate item id '{item.id}'", field="id", **where)
            items[item.id] = item
        except DataError as e:
            n_bad += 1
            if len(errors) < max_errors:
                errors.append(str(e))
    if not items:
        raise DataError(f"no valid items ({n_bad} bad line(s); first: {errors[:1]})", path=str(path))
    return items, errors, n_bad


def write_items(items, path) -> None:
    """An items.jsonl that `loaders.load_items` reads back to the same Items."""
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(asdict(it), ensure_ascii=False) + "\n")


def _dataset_catalog(checkpoint: Path, dataset: str) -> tuple[dict[str, Item], str]:
    """The catalog of the dataset a run trained on. Its path was written relative to the
    directory training ran from, so it is looked up there, then above the checkpoint."""
    from .loaders import load_dataset, load_items

    ds = Path(dataset)
    candidates = [ds] if ds.is_absolute() else [Path.cwd() / ds, *(p / ds for p in checkpoint.resolve().parents)]
    for folder in candidates:
        if (folder / CATALOG_FILE).is_file():
            return load_items(folder / CATALOG_FILE), str(folder / CATALOG_FILE)
        if folder.is_dir():
            return load_dataset(folder).items, str(folder)
    raise FileNotFoundError(f"the run's dataset '{dataset}' was not found (looked in the working directory "
                            f"and above {checkpoint}); pass catalog=path/to/items.jsonl")


def resolve_catalog(catalog, checkpoint: Path | None, dataset: str | None, strict: bool = True):
    """(items, report) for a catalog given as a path, a dict or list of Items, or None."""
    from .loaders import load_items

    if catalog is None:
        if checkpoint is not None and (checkpoint / CATALOG_FILE).is_file():
            catalog = checkpoint / CATALOG_FILE
        elif checkpoint is not None and dataset:
            items, source = _dataset_catalog(checkpoint, dataset)
            return items, CatalogReport(source, len(items))
        else:
            raise ValueError("no catalog: pass catalog=path/to/items.jsonl or a list of Items")
    if isinstance(catalog, dict):
        items = dict(catalog)
        return items, CatalogReport("<dict>", len(items))
    if isinstance(catalog, (list, tuple)):
        items = {}
        for it in catalog:
            if not isinstance(it, Item):
                raise TypeError(f"a catalog list holds Items, got {type(it).__name__}")
            if it.id in items:
                raise DataError(f"duplicate item id '{it.id}' in the catalog")
            items[it.id] = it
        if not items:
            raise DataError("catalog is empty")
        return items, CatalogReport("<list>", len(items))
    path = Path(catalog)
    if path.is_dir():
        path = path / CATALOG_FILE
    if strict:
        items = load_items(path)
        return items, CatalogReport(str(path), len(items))
    items, errors, n_bad = read_items_lenient(path)
    return items, CatalogReport(str(path), len(items), n_bad, errors)


def encode_catalog(model, items: list[Item], fields, max_tokens: int, item_encoding: str = "cached",
                   batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Item vectors v (Eq. 1) [N, d], float32 on the model's device, computed as in training
    (`ItemStore.encode`: "cached" reads the frozen base LM's states, "adapted" the LoRA-adapted LM's)."""
    if item_encoding not in ("cached", "adapted"):
        raise ValueError(f"model.item_encoding must be 'cached' or 'adapted', not '{item_encoding}'")
    store = ItemStore(items, model.tokenizer, fields, max_tokens)
    if progress:
        print(f"pecrs: encoding {len(store):,} catalog items (once per catalog and checkpoint)", file=sys.stderr)
    return store.encode(model, adapted=item_encoding == "adapted", batch_size=batch_size, progress=progress)


def _hash_files(folder: Path) -> str:
    """Content hash of a checkpoint: every file but trainer state, READMEs and the catalog copy."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == CATALOG_FILE or path.suffix == ".pt" or path.name == "README.md":
            continue
        h.update(rel.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _hash_items(items) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(asdict(it), sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def catalog_cache_key(checkpoint: Path, items, model_config, dtype: torch.dtype = torch.float32) -> str:
    """The cache file name of a catalog's vectors; `dtype`, the precision of the LM that encodes
    them, is part of the key except for float32 (so caches written before it existed stay valid)."""
    key = {"format": CACHE_FORMAT, "checkpoint": _hash_files(checkpoint), "catalog": _hash_items(items),
           "fields": list(model_config.item_fields), "max_tokens": model_config.item_max_tokens,
           "encoding": model_config.item_encoding}
    if dtype != torch.float32:
        key["dtype"] = str(dtype).removeprefix("torch.")
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    from .backbone import cache_dir

    return cache_dir() / "catalogs"


# ---- dialogues ---------------------------------------------------------------------------------

def _clip(text: str, items: list[str], limit: int) -> tuple[str, list[str]]:
    """The last `limit` characters of text, never splitting an [ITEM]; items dropped with it."""
    if len(text) <= limit:
        return text, items
    cut = len(text) - limit
    start = text.rfind(ITEM, 0, cut + len(ITEM) - 1)
    if start != -1 and start < cut < start + len(ITEM):
        cut = start  # keep a placeholder the cut would split
    dropped = text[:cut].count(ITEM)
    return text[cut:], items[dropped:]


def to_turns(dialogue, item_index: dict[str, int], max_chars: int | None = None) -> tuple[Turn, ...]:
    """Validate a dialogue (list of Turns or {"role","text","items"?} dicts, or a Dialogue)."""
    if isinstance(dialogue, Dialogue):
        raw = list(dialogue.turns)
    elif isinstance(dialogue, (list, tuple)):
        raw = list(dialogue)
    else:
        raise DataError("a dialogue is a list of turns ({'role', 'text'} dicts or Turn objects) or a "
                        f"Dialogue, got {type(dialogue).__name__}")
    if not raw:
        raise DataError("empty dialogue: give at least one turn")
    turns = []
    for i, t in enumerate(raw):
        where = f"turns[{i}]"
        if isinstance(t, Turn):
            role, text, items = t.role, t.text, list(t.items)
        elif isinstance(t, dict):
            unknown = set(t) - {"role", "text", "items"}
            if unknown:
                raise DataError(f"unknown key(s) {sorted(unknown)} (expected 'role', 'text', 'items')", field=where)
            for key in ("role", "text"):
                if key not in t:
                    raise DataError("missing required key", field=f"{where}.{key}")
            role, text, items = t["role"], t["text"], t.get("items") or []
        else:
            raise DataError(f"expected a Turn or a dict, got {type(t).__name__}", field=where)
        if role not in ROLES:
            raise DataError(f"unknown role {role!r} (expected one of {list(ROLES)})", field=f"{where}.role")
        if not isinstance(text, str):
            raise DataError(f"expected a string, got {type(text).__name__}", field=f"{where}.text")
        if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
            raise DataError(f"expected a list of item ids, got {items!r}", field=f"{where}.items")
        for token in RESERVED:
            if token in text:
                raise DataError(f"text contains the reserved token {token}", field=f"{where}.text")
        if text.count(ITEM) != len(items):
            raise DataError(f"text has {text.count(ITEM)} {ITEM} placeholder(s) but {len(items)} item id(s)",
                            field=where)
        for item_id in items:
            if item_id not in item_index:
                raise DataError(f"item id '{item_id}' is not in the catalog", field=f"{where}.items")
        if max_chars is not None:
            text, items = _clip(text, list(items), max_chars)
        turns.append(Turn(role, text, tuple(items)))
    return tuple(turns)


# ---- the recommender ---------------------------------------------------------------------------

class Recommender:
    """A PECRS model, its catalog and the catalog's vectors. Thread-safe: calls are serialised."""

    def __init__(self, model, config, catalog, vectors: torch.Tensor | None = None, *,
                 m_inference: int | None = None, decoding=None, index: str = "auto",
                 report: CatalogReport | None = None, checkpoint: Path | None = None, dtype=None,
                 progress: bool = False):
        """m_inference, decoding: None takes the config's inference section (config.inference).
        dtype: "auto", "float32", "bfloat16" (pecrs.precision) to put the model in that precision
        before anything runs, or None to use it as given. progress: a status line and a bar on
        stderr while the catalog is encoded (minutes on a CPU)."""
        decoding = decoding or config.inference.decoding
        from .decoding import resolve
        from .precision import Precision, inference_dtype, resolve_dtype, to_inference_dtype
        from .retrieval import build_index

        resolve(decoding)  # fail early on an unknown strategy
        self.model = model.eval()
        if dtype is not None:
            self.precision = dtype if isinstance(dtype, Precision) else resolve_dtype(dtype, model.device)
            to_inference_dtype(model, self.precision.dtype)
        else:
            self.precision = Precision(inference_dtype(model), "as given")
        self.config = config
        items, _ = resolve_catalog(catalog, None, None)
        self.items: dict[str, Item] = items
        self.item_list = list(items.values())
        self.item_index = {item_id: i for i, item_id in enumerate(items)}
        m = config.model
        self.report = report or CatalogReport("<memory>", len(items))
        if vectors is None:
            started = time.perf_counter()
            vectors = encode_catalog(model, self.item_list, m.item_fields, m.item_max_tokens, m.item_encoding,
                                     progress=progress)
            self.report.encode_seconds = time.perf_counter() - started
        self.vectors = vectors.to(model.device, torch.float32)
        self.index = build_index(self.vectors, index, temperature=m.recall_temperature)
        self.m_inference = m_inference or config.inference.m_inference
        self.decoding = decoding
        self.checkpoint = checkpoint
        self.encoder = dialogue_encoder(model, config, self.item_index)
        self.max_text_chars = CHARS_PER_TOKEN * m.context_max_tokens
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, run_dir_or_checkpoint, catalog=None, device=None, m_inference: int | None = None,
                        decoding=None, *, index: str = "auto", backbone: str | None = None,
                        cache_dir=None, strict_catalog: bool = True, dtype=None,
                        progress: bool = False) -> "Recommender":
        """Load a run folder (its best/ checkpoint) or a checkpoint folder.

        catalog: an items.jsonl path (or a folder holding one), a dict or list of Items, or None:
        the catalog saved with the checkpoint, else the catalog of the dataset the run trained on.
        device: None picks "cuda" when available. m_inference, decoding, dtype: None takes the
        checkpoint's inference section (config.inference; `save_pretrained` records this
        recommender's values there). index: "auto", "exact" or "faiss" (pecrs.retrieval). cache_dir: where catalog vectors are cached (None: PECRS_CACHE/
        catalogs; False: no cache). strict_catalog=False skips and reports bad catalog lines.
        dtype: "auto" (bfloat16 where the device multiplies it natively, else float32), "float32"
        or "bfloat16" (pecrs.precision; the choice and its reason are logged once).
        """
        from .precision import resolve_dtype
        from .config import RunConfig
        from .pretrained import checkpoint_dir, load_pretrained, read_meta

        ckpt = checkpoint_dir(str(run_dir_or_checkpoint))
        meta = read_meta(ckpt)
        # The checkpoint's inference section, this call's arguments over it; checkpoints saved
        # before that section existed kept a recommender's choices under "recommender".
        inference = RunConfig.from_dict(meta["config"]).inference
        legacy = meta.get("recommender", {})
        inference.m_inference = m_inference or legacy.get("m_inference") or inference.m_inference
        inference.decoding = decoding or legacy.get("decoding") or inference.decoding
        inference.dtype = dtype or inference.dtype
        RunConfig(inference=inference).validate()  # before loading: a bad value fails in no time
        device = default_device(device)
        precision = resolve_dtype(inference.dtype, device)
        model, config = load_pretrained(ckpt, backbone=backbone)
        config.inference = inference
        model.to(device).eval()
        items, report = resolve_catalog(catalog, ckpt, config.train.dataset, strict=strict_catalog)
        vectors = _load_saved_vectors(ckpt, list(items)) if catalog is None else None
        if vectors is not None:
            report.vectors_from_cache = True
            report.cache_path = str(ckpt / VECTORS_FILE)
        elif cache_dir is not False:
            folder = Path(cache_dir) if cache_dir else default_cache_dir()
            # float32-encoded vectors serve every precision; bfloat16-encoded ones only bfloat16
            keys = dict.fromkeys([torch.float32, precision.dtype])
            for key_dtype in keys:
                path = folder / f"{catalog_cache_key(ckpt, items.values(), config.model, key_dtype)}.pt"
                vectors = _load_cached(path, list(items))
                if vectors is not None:
                    break
            report.cache_path = str(path)  # where they were found, else where this model's encoding goes
            report.vectors_from_cache = vectors is not None
        rec = cls(model, config, items, vectors, index=index, report=report, checkpoint=ckpt, dtype=precision,
                  progress=progress)
        if report.cache_path and not report.vectors_from_cache:
            _save_cached(Path(report.cache_path), list(items), rec.vectors)
        log.info(report.summary())
        return rec

    def save_pretrained(self, directory, half: bool = False, extra: dict | None = None) -> Path:
        """The checkpoint (pretrained.save_pretrained) plus items.jsonl, the catalog, its item
        vectors (so loading it encodes nothing), and this recommender's m_inference and decoding
        (in the saved config's inference section); `from_pretrained(directory)` gives it back. half=True stores adapter, heads and vectors in
        float16 (the shipped model, `pecrs export`)."""
        from safetensors.torch import save_file

        from .pretrained import halve_weights, save_pretrained

        config = copy.deepcopy(self.config)
        config.inference.m_inference, config.inference.decoding = self.m_inference, self.decoding
        directory = Path(save_pretrained(self.model, config, directory, extra=extra))
        write_items(self.item_list, directory / CATALOG_FILE)
        vectors = self.vectors.detach().cpu().to(torch.float16 if half else torch.float32).contiguous()
        save_file({"vectors": vectors}, directory / VECTORS_FILE,
                  metadata={"ids_sha256": _hash_ids(list(self.items)), "count": str(len(self.items))})
        if half:
            halve_weights(directory)
        return directory

    # ---- inference ---------------------------------------------------------------------------
    def turns(self, dialogue) -> tuple[Turn, ...]:
        return to_turns(dialogue, self.item_index, self.max_text_chars)

    def _context(self, turns):
        ids, slots = self.encoder.encode_context(turns)
        self.encoder._text_cache.clear()  # it memoises texts for training; a server must not keep them
        dev = self.model.device
        return (torch.tensor([ids], device=dev), torch.tensor([slots], device=dev),
                torch.tensor([len(ids)], device=dev))

    def _rank(self, context, k: int) -> tuple[list[int], list[float]]:
        ids, slots, length = context
        top, scores = self.model.recommend(ids, slots, length, self.vectors, m_inference=max(self.m_inference, k),
                                           rerank=True, chunk_size=self.config.inference.rerank_chunk_size,
                                           index=self.index)
        return top[0, :k].tolist(), scores[0, :k].tolist()

    @torch.no_grad()
    def recommend(self, dialogue, k: int = 10) -> list[Recommendation]:
        """The top k items for the next recommender turn, best first (retrieve, then re-rank)."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        turns = self.turns(dialogue)
        with self._lock:
            top, scores = self._rank(self._context(turns), k)
        return [Recommendation(self.item_list[i], float(s), r) for r, (i, s) in enumerate(zip(top, scores), 1)]

    @torch.no_grad()
    def respond(self, dialogue, decoding=None, k_items: int = 1, seed: int | None = None,
                max_new_tokens: int | None = None) -> Response:
        """The recommender's next turn: the top k_items re-ranked items are injected and the
        response generated (`decoding`: a pecrs.decoding preset name or kwargs dict; `seed`
        makes sampling reproducible; max_new_tokens defaults to the training response length)."""
        from .decoding import resolve

        if not isinstance(k_items, int) or k_items < 1:
            raise ValueError(f"k_items must be a positive integer, got {k_items!r}")
        strategy = decoding or self.decoding
        resolve(strategy)
        turns = self.turns(dialogue)
        with self._lock:
            ids, slots, length = self._context(turns)
            top, _ = self._rank((ids, slots, length), k_items)
            # The evaluation's own generation (PECRS.generate: layout of Eq. 6, the end-of-turn
            # rule) and decoder, so that what is served is what is measured.
            reply = self.model.generate(ids, slots, length, self.vectors, torch.tensor([top], device=ids.device),
                                        self.encoder.role_ids[RECOMMENDER], strategy,
                                        max_new_tokens or self.config.model.response_max_tokens, seed=seed)[0]
        return self._fill(self.model.decode_reply(reply), [self.item_list[i] for i in top])

    @staticmethod
    def _fill(raw: str, recommended: list[Item]) -> Response:
        parts = raw.split(ITEM)
        named = [recommended[min(i, len(recommended) - 1)] for i in range(len(parts) - 1)]
        text = parts[0] + "".join(it.display() + rest for it, rest in zip(named, parts[1:]))
        return Response(text=text, raw_text=raw, items=named, recommended=recommended)

    # ---- lookups -----------------------------------------------------------------------------
    def item(self, item_id: str) -> Item:
        try:
            return self.items[item_id]
        except KeyError:
            raise KeyError(f"unknown item id '{item_id}'") from None

    def __len__(self) -> int:
        return len(self.item_list)

    def __repr__(self) -> str:
        return (f"Recommender({self.checkpoint or 'in-memory model'}, {len(self)} items, "
                f"m_inference={self.m_inference}, decoding={self.decoding!r}, index={type(self.index).__name__}, "
                f"dtype={self.precision.name})")


def _hash_ids(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _load_saved_vectors(checkpoint: Path, ids: list[str]) -> torch.Tensor | None:
    """The item vectors saved beside a checkpoint's catalog, if they are that catalog's."""
    from safetensors import safe_open

    path = checkpoint / VECTORS_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("ids_sha256") != _hash_ids(ids):
            log.warning("%s does not match the catalog %s: re-encoding", path, checkpoint / CATALOG_FILE)
            return None
        return f.get_tensor("vectors").float()


def _load_cached(path: Path, ids: list[str]) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: re-encode and overwrite it
        log.warning("ignoring unreadable catalog cache %s: %s", path, e)
        return None
    if payload.get("ids") != ids:
        return None
    return payload["vectors"]


def _save_cached(path: Path, ids: list[str], vectors: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"format": CACHE_FORMAT, "ids": ids, "vectors": vectors.detach().float().cpu()}, tmp)
    os.replace(tmp, tmp.with_name(path.name))
