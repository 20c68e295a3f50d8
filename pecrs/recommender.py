"""`Recommender`: a trained PECRS checkpoint plus a catalog, ready to talk to.

    from pecrs.recommender import Recommender
    rec = Recommender.from_pretrained("runs/inspired")            # run folder or checkpoint
    turns = [{"role": "seeker", "text": "Any good sci-fi thrillers?"}]
    rec.recommend(turns, k=5)      # [Recommendation(item, score, rank), ...] best first
    rec.respond(turns)             # Response(text, raw_text, items, recommended)

What happens on a turn (paper §3.6): the dialogue is laid out as in training (`DialogueEncoder`),
the LM reads it up to [REC] (`PECRS.context_pass`); the recall head retrieves the top
`m_inference` items (`pecrs.retrieval`: exact for small catalogs, faiss past 50k items), the
re-ranker orders them, and the response is generated with the top item injected as
"[REC] v [REC_END] Recommender:" (the context read again, as the prompt of `PECRS.generate`).
The [ITEM] tokens of the generated text are then filled in.

Several items per turn (`respond(..., k_items=k)`; the paper's limitations 1-2). The top k re-ranked
items are injected together, "[REC] v_1 .. v_k [REC_END]", the layout the encoder already uses
for context turns that mention several items, and the generated [ITEM] placeholders are filled
in order with v_1, v_2, ... (generation writes at most k [ITEM] tokens, `PECRS.generate`'s token
budget; with k = 1 the one [ITEM] is the top item, as in the paper; an "[ITEM]" spelled out of
ordinary tokens beyond k repeats v_k). Training generated after a single item only, so with k > 1 a model
may name fewer items than it was given: `Response.items` lists what the text actually names.

Input (a list of turns or a `Dialogue`) is checked and cut by `pecrs.dialogue_input`; the catalog
comes from `pecrs.catalog_source` and its vectors, when they were computed before, from
`pecrs.vector_cache` (beside the checkpoint, or a disk cache keyed by checkpoint and catalog).

Precision (`dtype`, pecrs.precision): "auto" (inference.dtype's default) runs the LM in bfloat16 where the hardware
multiplies it natively (a GPU that supports it, a CPU with AMX or AVX512-BF16) and in float32
elsewhere; "float32" / "bfloat16" force one. In bfloat16 the decoder's frozen linear weights are
stored in bfloat16 and run under autocast; LoRA, the heads, the catalog vectors and the recall
search stay float32. Vectors encoded by a bfloat16 model are cached under their own key, and a
bfloat16 recommender prefers float32-encoded vectors when they are cached.
"""
from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backbone import default_device
from .catalog import ItemStore
from .catalog_source import CATALOG_FILE, CatalogReport, resolve_catalog, write_items
from .config import ConfigError, check_value
from .data import ITEM, RECOMMENDER, SEEKER, DataError, Item, Turn, unescape_quotes
from .dialogue_input import CHARS_PER_TOKEN, to_turns
from .prepare import dialogue_encoder, saved_catalog_vectors, say
from .samples import mentioned_items
from .twins import excluded_rows, same_film
from .vector_cache import VECTORS_FILE, default_cache_dir, find_cached, save_cached, save_vectors

log = logging.getLogger(__name__)
QUIET_ENCODING_WARNING = 5_000   # items: from here a catalog's encoding takes a CPU many minutes


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


class Recommender:
    """A PECRS model, its catalog and the catalog's vectors. Thread-safe: calls are serialised."""

    def __init__(self, model, config, catalog, vectors: torch.Tensor | None = None, *,
                 m_inference: int | None = None, decoding=None, index: str = "auto",
                 report: CatalogReport | None = None, checkpoint: Path | None = None, dtype=None,
                 progress: bool = False, no_repeat_ngram: int | None = None, exclude_mentioned: bool | None = None):
        """m_inference, decoding, no_repeat_ngram, exclude_mentioned: None takes the config's inference
        section (config.inference; no_repeat_ngram n > 0: no n-gram twice in a reply, pecrs.decoding;
        exclude_mentioned: never recommend an item that the conversation mentions).
        dtype: "auto", "float32", "bfloat16" (pecrs.precision) to put the model in that precision
        before anything runs, or None to use it as given. progress: a status line and a bar on
        stderr while the catalog is encoded (minutes on a CPU)."""
        decoding = decoding or config.inference.decoding
        from .decoding import resolve
        from .precision import Precision, inference_dtype, resolve_dtype, to_inference_dtype
        from .retrieval import build_index

        resolve(decoding)  # fail early on an unknown strategy
        m_inference = check_value("inference.m_inference",   # the config's own check
                                  config.inference.m_inference if m_inference is None else m_inference, int)
        if no_repeat_ngram is None:
            no_repeat_ngram = config.inference.no_repeat_ngram
        check_value("inference.no_repeat_ngram", no_repeat_ngram, int)  # the config's own check
        if exclude_mentioned is None:
            exclude_mentioned = config.inference.exclude_mentioned
        exclude_mentioned = check_value("inference.exclude_mentioned", exclude_mentioned, bool)
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
            say(f"encoding {len(items):,} catalog items (once per catalog and checkpoint)", progress)
            if not progress and len(items) >= QUIET_ENCODING_WARNING:   # a library call, silent for hours
                log.warning("encoding %d catalog items: a few items a second on a CPU (docs/serving.md); "
                            "progress=True shows a bar, and the vectors are cached for the next start", len(items))
            store = ItemStore(self.item_list, model.tokenizer, m.item_fields, m.item_max_tokens, m.item_encoding)
            vectors = store.all_vectors(model, progress=progress)
            self.report.encode_seconds = time.perf_counter() - started
        self.vectors = vectors.to(model.device, torch.float32)
        self.index = build_index(self.vectors, index, temperature=m.recall_temperature)
        self.m_inference = m_inference
        self.decoding = decoding
        self.no_repeat_ngram = no_repeat_ngram
        self.exclude_mentioned = exclude_mentioned
        self.checkpoint = checkpoint
        self.encoder = dialogue_encoder(model, config, self.item_index, memoize=False)
        self.max_text_chars = CHARS_PER_TOKEN * m.context_max_tokens
        self._lock = threading.Lock()
        self._linker = None

    @classmethod
    def from_pretrained(cls, run_dir_or_checkpoint, catalog=None, device=None, m_inference: int | None = None,
                        decoding=None, *, index: str = "auto", backbone: str | None = None,
                        cache_dir=None, strict_catalog: bool = True, dtype=None,
                        progress: bool = False, no_repeat_ngram: int | None = None,
                        exclude_mentioned: bool | None = None) -> "Recommender":
        """Load a run folder (its best/ checkpoint) or a checkpoint folder.

        catalog: an items.jsonl path (or a folder holding one), a dict or list of Items, or None:
        the catalog saved with the checkpoint, else the catalog of the dataset the run trained on.
        device: None picks "cuda" when available. m_inference, decoding, no_repeat_ngram,
        exclude_mentioned, dtype: None takes the checkpoint's inference section (config.inference).
        index: "auto", "exact" or "faiss" (pecrs.retrieval). cache_dir: where catalog vectors are
        cached (None: PECRS_CACHE/catalogs; False: no cache). strict_catalog=False skips and reports
        bad catalog lines.
        dtype: "auto" (bfloat16 where the device multiplies it natively, else float32), "float32"
        or "bfloat16" (pecrs.precision; the choice and its reason are logged once). It is this
        call's choice: `save_pretrained` keeps the checkpoint's own inference.dtype.
        """
        from .config import RunConfig
        from .decoding import resolve
        from .precision import resolve_dtype
        from .pretrained import CONFIG_FILE, checkpoint_dir, load_pretrained, read_meta

        ckpt = checkpoint_dir(str(run_dir_or_checkpoint))
        meta = read_meta(ckpt)
        # The checkpoint's inference section, this call's arguments over it. A recommender's
        # choices that the section cannot hold (a dict of generate kwargs as decoding), and all of
        # them in checkpoints saved before the section existed, are under "recommender".
        inference = RunConfig.from_dict(meta["config"]).inference
        saved = meta.get("recommender", {})
        if m_inference is not None:   # checked before loading: a bad value fails in no time
            check_value("inference.m_inference", m_inference, int)
        elif saved.get("m_inference") is not None:
            try:
                m_inference = check_value("inference.m_inference", saved["m_inference"], int)
            except ConfigError as e:
                raise ConfigError(f"{ckpt / CONFIG_FILE} field 'recommender.m_inference': {e}") from None
        decoding = decoding or saved.get("decoding") or inference.decoding
        resolve(decoding)  # before loading: a bad value fails in no time
        device = default_device(device)
        precision = resolve_dtype(dtype or inference.dtype, device)
        model, config = load_pretrained(ckpt, backbone=backbone)
        model.to(device).eval()
        items, report = resolve_catalog(catalog, ckpt, config.train.dataset, strict=strict_catalog)
        # Saved vectors serve their own catalog (also given as catalog=), from the base weights that encoded them.
        vectors = saved_catalog_vectors(ckpt, list(items.values()), model, meta,
                                        read_from_checkpoint=catalog is None and (ckpt / CATALOG_FILE).is_file())
        if vectors is not None:
            report.vectors_from_cache = report.vectors_with_model = True
            report.cache_path = str(ckpt / VECTORS_FILE)
        elif cache_dir is not False:
            folder = Path(cache_dir) if cache_dir else default_cache_dir()
            vectors, path = find_cached(folder, ckpt, items, config.model, precision.dtype,
                                        model.backbone_fingerprint)
            report.cache_path = str(path)  # where they were found, else where this model's encoding goes
            report.vectors_from_cache = vectors is not None
        rec = cls(model, config, items, vectors, m_inference=m_inference, decoding=decoding, index=index,
                  report=report, checkpoint=ckpt, dtype=precision, progress=progress,
                  no_repeat_ngram=no_repeat_ngram, exclude_mentioned=exclude_mentioned)
        if report.cache_path and not report.vectors_from_cache and not save_cached(
                Path(report.cache_path), list(items), rec.vectors):
            report.cache_path = None   # not written (warned): the summary must not say "cached at"
        log.info(report.summary())
        return rec

    def save_pretrained(self, directory, half: bool = False, extra: dict | None = None) -> Path:
        """The checkpoint (pretrained.save_pretrained) plus items.jsonl, the catalog, its item
        vectors (so loading it encodes nothing), and this recommender's m_inference, decoding,
        no_repeat_ngram and exclude_mentioned (in the saved config's inference section; a decoding
        given as a dict of generate kwargs under "recommender"); `from_pretrained(directory)` gives
        it back. half=True stores adapter, heads and vectors in float16 (the shipped model, `pecrs
        export`). `directory` may be new or an earlier save, never a training checkpoint nor the
        checkpoint this recommender was loaded from (`check_save_destination`: a ValueError)."""
        from .pretrained import check_save_destination, halve_weights, results_dir, save_pretrained

        ckpt = self.checkpoint
        check_save_destination(Path(directory), CATALOG_FILE, (ckpt, results_dir(ckpt)) if ckpt else ())
        config = copy.deepcopy(self.config)
        config.inference.m_inference = self.m_inference
        config.inference.no_repeat_ngram = self.no_repeat_ngram
        config.inference.exclude_mentioned = self.exclude_mentioned
        if isinstance(self.decoding, str):
            config.inference.decoding = self.decoding
        else:
            extra = {"recommender": {"decoding": self.decoding}, **(extra or {})}

        def write_catalog(folder: Path) -> None:   # inside the atomic save: never a folder without them
            write_items(self.item_list, folder / CATALOG_FILE)
            save_vectors(self.vectors, self.item_list, config.model, folder / VECTORS_FILE, half=half)
            if half:
                halve_weights(folder)
        return Path(save_pretrained(self.model, config, directory, extra=extra, write_more=write_catalog))

    # ---- inference ---------------------------------------------------------------------------
    def turns(self, dialogue, link_titles: bool = False) -> tuple[Turn, ...]:
        """The dialogue checked and cut (pecrs.dialogue_input); link_titles: with the catalog titles
        typed in its seeker turns turned into [ITEM] mentions (`link_titles`), as `pecrs chat` does
        (the recommender's turns are the model's own, its items already marked)."""
        turns = to_turns(dialogue, self.item_index, self.max_text_chars)
        if not link_titles:
            return turns
        linked = []
        for t in turns:
            text, items = self.link_titles(t.text, t.items) if t.role == SEEKER else (t.text, t.items)
            linked.append(Turn(t.role, text, tuple(items)))
        return tuple(linked)

    def link_titles(self, text: str, items=()) -> tuple[str, list[str]]:
        """`text` with each catalog title it types ("I loved The Conjuring") replaced by an [ITEM]
        mention, as training dialogues mark them, and the ids of all its [ITEM]s in order (`items`:
        those of the placeholders already there). The rules against false matches ("I love it" is
        not the movie "It") are in pecrs.title_linking. INSPIRED's QUOTATION_MARK is read back first,
        as `turns` reads it (a pasted dataset turn's quoted title links)."""
        if not isinstance(text, str):
            raise DataError(f"expected a string, got {type(text).__name__}", field="text")
        text = unescape_quotes(text)
        if self._linker is None:
            from .title_linking import TitleLinker

            with self._lock:   # built once, on first use or at `pecrs serve` start-up (~25 us per item)
                if self._linker is None:
                    self._linker = TitleLinker(self.item_list)
        return self._linker.link(text, items)

    def _context(self, turns):
        ids, slots = self.encoder.encode_context(turns)
        dev = self.model.device
        return (torch.tensor([ids], device=dev), torch.tensor([slots], device=dev),
                torch.tensor([len(ids)], device=dev))

    @functools.cached_property
    def twins(self) -> dict[str, tuple[str, ...]]:
        """The same film under several ids (pecrs.twins.same_film), found on first use."""
        return same_film(self.item_list)

    def _excluded(self, turns, exclude, exclude_mentioned: bool | None) -> list[int]:
        """Catalog indices never to recommend: the ids in `exclude` (a `recommend` / `respond`
        argument) and, with exclude_mentioned (None: this recommender's setting), every item the
        turns mention (`mentioned_items`), each with its twins: `excluded_rows`, as the evaluation
        excludes them."""
        if isinstance(exclude, str) or not isinstance(exclude, (list, tuple, set, frozenset)):
            raise DataError(f"expected a list of item ids, got {type(exclude).__name__}", field="exclude")
        for i, x in enumerate(exclude if isinstance(exclude, (list, tuple)) else sorted(exclude, key=str)):
            if not isinstance(x, str):
                raise DataError(f"item ids are strings, got {type(x).__name__} {x!r}", field=f"exclude[{i}]")
            if x not in self.item_index:
                raise DataError(f"unknown item id {x!r}", field=f"exclude[{i}]")
        ids = list(exclude)
        if self.exclude_mentioned if exclude_mentioned is None else exclude_mentioned:
            ids += mentioned_items(turns)
        rows = excluded_rows(ids, self.twins, self.item_index)
        if len(rows) >= len(self):
            raise DataError("every item of the catalog is excluded", field="exclude")
        return rows

    def _rank(self, context, k: int, exclude: list[int] = ()) -> tuple[list[int], list[float]]:
        """The top k catalog indices and scores, none of them in `exclude` (catalog indices)."""
        ids, slots, length = context
        banned = torch.tensor([list(exclude)], dtype=torch.long, device=ids.device)   # [1, n]
        top, scores = self.model.recommend(ids, slots, length, self.vectors, m_inference=max(self.m_inference, k),
                                           rerank=True, chunk_size=self.config.inference.rerank_chunk_size,
                                           index=self.index, exclude=banned)
        kept = top[0, :k] >= 0   # fewer than k left: -1 pads (PECRS.recommend)
        return top[0, :k][kept].tolist(), scores[0, :k][kept].tolist()

    @torch.no_grad()
    def recommend(self, dialogue, k: int = 10, exclude=(), link_titles: bool = False,
                  exclude_mentioned: bool | None = None) -> list[Recommendation]:
        """The top k items for the next recommender turn, best first (retrieve, then re-rank);
        never the item ids in `exclude` (e.g. what the user has seen), nor with exclude_mentioned
        (None: this recommender's, inference.exclude_mentioned) an item the context mentions. Fewer
        than k when the catalog runs out. link_titles: read typed titles as [ITEM] mentions first."""
        _check_call(k=k, link_titles=link_titles, exclude_mentioned=exclude_mentioned)
        turns = self.turns(dialogue, link_titles)
        excluded = self._excluded(turns, exclude, exclude_mentioned)
        with self._lock:   # one pass: LoRA kept (folding it costs more than it saves here)
            top, scores = self._rank(self._context(turns), k, excluded)
        return [Recommendation(self.item_list[i], float(s), r) for r, (i, s) in enumerate(zip(top, scores), 1)]

    @torch.no_grad()
    def respond(self, dialogue, decoding=None, k_items: int = 1, seed: int | None = None,
                max_new_tokens: int | None = None, exclude=(), link_titles: bool = False,
                exclude_mentioned: bool | None = None) -> Response:
        """The recommender's next turn: the top k_items re-ranked items (as `recommend` ranks them,
        `exclude`, `link_titles` and `exclude_mentioned` included) are injected and the
        response generated (`decoding`: a pecrs.decoding preset name or kwargs dict, with this
        recommender's no_repeat_ngram; `seed` makes sampling reproducible; max_new_tokens defaults
        to the training response length)."""
        from .decoding import resolve, without_repeats

        _check_call(k_items=k_items, seed=seed, max_new_tokens=max_new_tokens, link_titles=link_titles,
                    exclude_mentioned=exclude_mentioned)
        strategy = without_repeats(decoding or self.decoding, self.no_repeat_ngram)
        resolve(strategy)
        turns = self.turns(dialogue, link_titles)
        excluded = self._excluded(turns, exclude, exclude_mentioned)
        # LoRA folded for the call, as evaluation generates: a reply's many decoding steps run one
        # matmul per adapted layer instead of three (1.45x faster per token in bfloat16 on a CPU).
        with self._lock, self.model.merged_lora():
            ids, slots, length = self._context(turns)
            top, _ = self._rank((ids, slots, length), k_items, excluded)
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
            kind = "" if isinstance(item_id, str) else f" (item ids are strings; this is {type(item_id).__name__} {item_id!r})"
            raise KeyError(f"unknown item id {item_id!r}{kind}") from None

    def __len__(self) -> int:
        return len(self.item_list)

    def __repr__(self) -> str:
        return (f"Recommender({self.checkpoint or 'in-memory model'}, {len(self)} items, "
                f"m_inference={self.m_inference}, decoding={self.decoding!r}, index={type(self.index).__name__}, "
                f"dtype={self.precision.name})")


MAX_NEW_TOKENS = 1024   # a reply is trained at 64 tokens; past this a typo, not a request, is likelier


_BOUNDS = {"k": (1, None), "k_items": (1, None), "max_new_tokens": (1, MAX_NEW_TOKENS), "seed": (0, 2 ** 32 - 1)}
_OPTIONAL = ("max_new_tokens", "seed", "exclude_mentioned")   # None: the recommender's own


def _check_call(**arguments) -> None:
    """A ValueError naming the first bad per-call argument of `recommend` / `respond` (a bool is
    not a count, a string not a flag): torch and transformers would fail later without its name."""
    for name, value in arguments.items():
        if value is None and name in _OPTIONAL:
            continue
        if name in _BOUNDS:
            low, high = _BOUNDS[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                bounds = f"from {low} to {high:,}" if high else f"of at least {low}"
                raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")
        elif not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
