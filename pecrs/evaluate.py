"""Evaluation (§4.1): recommendation and conversation metrics of a model on one split.

    recommend  every sample (only those with a target when no reply is generated): retrieve the
               top M_inference by recall score, re-rank, keep the top 50
    recall     R@1/10/50 and Unique over samples with a target; the same on the de-duplicated
               samples (target not mentioned earlier) and for the naive "earlier items" baseline
    generate   one response per recommender turn, with the top-1 item injected (§3.6); ROUGE (as
               the texts stand and as the paper's code scored them), F1 of [ITEM] presence,
               Dist@2/3/4; given the training replies, the same for one constant reply
    perplexity teacher-forced NLL of the reference responses, ground-truth item injected (Eq. 6)
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from . import metrics
from .catalog import ItemStore
from .config import InferenceConfig
from .data import ITEM, DataError, Item, Sample
from .decoding import without_repeats
from .retrieval import ExactIndex
from .samples import make_samples, mentioned_items
from .tokens import NO_ITEM, DialogueEncoder, collate, length_sorted_batches, pad_rows
from .twins import excluded_rows, same_film

TOP_K_KEPT = 50


def rank_samples(model, encoded, catalog_vectors, m_inference: int, batch_size: int,
                 rerank: bool = True, keep: int = TOP_K_KEPT, progress: bool = False, index=None,
                 chunk_size: int = InferenceConfig.rerank_chunk_size, exclude=None) -> np.ndarray:
    """Catalog indices [n, min(keep, M)] best first for every encoded sample (M: m_inference, at
    most the catalog's size)."""
    return rank_samples_at(model, encoded, catalog_vectors, [m_inference], batch_size, rerank, keep,
                           progress, index, chunk_size, exclude)[m_inference]


def mentioned_indices(samples, items: list[Item]) -> list[list[int]]:
    """Per sample, the catalog indices (into `items`) of the items its context mentions
    (`mentioned_items`) and their twins (`pecrs.twins.same_film`): the `exclude` of
    rank_samples under inference.exclude_mentioned, as `Recommender` excludes them. A DataError
    names the dialogue and turn whose context mentions the whole catalog (nothing left to rank)."""
    row_of, twins = {it.id: k for k, it in enumerate(items)}, same_film(items)
    excluded = [excluded_rows(mentioned_items(s.context), twins, row_of) for s in samples]
    for s, row in zip(samples, excluded):
        if len(row) >= len(items):
            raise DataError(f"dialogue '{s.dialogue_id}' turn {s.turn_index}: its context mentions every item "
                            f"of the catalog, so inference.exclude_mentioned leaves nothing to recommend")
    return excluded


@torch.no_grad()
def rank_samples_at(model, encoded, catalog_vectors, m_values, batch_size: int,
                    rerank: bool = True, keep: int = TOP_K_KEPT, progress: bool = False,
                    index=None, chunk_size: int = InferenceConfig.rerank_chunk_size,
                    exclude=None) -> dict[int, np.ndarray]:
    """{M_inference: catalog indices [n, min(keep, M)] best first} for several M_inference from one
    pass. exclude: per encoded sample, catalog indices it must not be recommended
    (`mentioned_indices`); a row left with fewer items than the candidates it asks for ends in -1.
    The samples of a turn that names k items share their context and exclusions (ReDial test:
    1,242 of 4,751 targets are such repeats): each distinct (context, exclusions) is ranked once.

    A candidate's re-rank score depends only on the context and that candidate (§3.3: candidates
    attend to the context, not to each other), so re-ranking the largest M once and keeping, for
    each M, its first M recall candidates sorted by their scores is what separate passes give
    (up to floating-point rounding between chunk shapes, and the order of exactly tied scores).
    Exact search only: an approximate `index` re-scores a candidate pool that grows with M, so its
    first M of a search at the largest M are not what a search at M returns.
    """
    m_values = sorted({int(m) for m in m_values})
    if not m_values:
        raise ValueError("m_values is empty")
    if index is not None and len(m_values) > 1:
        raise ValueError("rank_samples_at with an approximate index takes one M_inference at a time")
    if index is None:   # built once for every batch: the exact search that serving uses
        index = ExactIndex(catalog_vectors, model.config.recall_temperature)
    distinct: dict[tuple, int] = {}   # (context ids, its item slots, exclusions) -> its row among the distinct
    copy_of = np.array([distinct.setdefault((tuple(e.context_ids), tuple(e.context_items),
                                             tuple(exclude[i]) if exclude is not None else ()), len(distinct))
                        for i, e in enumerate(encoded)], dtype=np.int64)
    first = np.unique(copy_of, return_index=True)[1]   # the first sample of each distinct row, in order
    ranked = _rank_distinct(model, [encoded[i] for i in first], catalog_vectors, m_values, batch_size, rerank,
                            keep, progress, index, chunk_size, None if exclude is None else [exclude[i] for i in first])
    return {m: r[copy_of] for m, r in ranked.items()}


def _rank_distinct(model, encoded, catalog_vectors, m_values, batch_size, rerank, keep, progress, index,
                   chunk_size, exclude) -> dict[int, np.ndarray]:
    """`rank_samples_at` for samples with distinct contexts: length-sorted batches, one pass each."""
    tok = model.tokenizer
    out = {m: [] for m in m_values}
    batches = length_sorted_batches([len(e.context_ids) for e in encoded], batch_size)
    for rows in tqdm(batches, desc="rank", disable=not progress):
        batch = collate([encoded[i] for i in rows], tok.pad_token_id, model.rec_end_id).to(model.device)
        top, scores = model.recommend(batch.context_ids, batch.context_items, batch.context_len, catalog_vectors,
                                      m_inference=m_values[-1], rerank=rerank, chunk_size=chunk_size, index=index,
                                      sort=False, exclude=None if exclude is None else pad_rows(
                                          [exclude[i] for i in rows]).to(model.device))
        for m in m_values:
            candidates = top[:, :m]
            if rerank:  # recall order -> re-rank order among the first m candidates
                candidates = candidates.gather(1, scores[:, :m].argsort(dim=1, descending=True))
            out[m].append(candidates[:, :keep].cpu())
    if not batches:
        return {m: np.zeros((0, keep), dtype=np.int64) for m in m_values}
    sorted_rows = np.concatenate(batches)
    ranked = {}
    for m, chunks in out.items():  # back to the order of `encoded`
        in_sorted_order = torch.cat(chunks).numpy()
        ranked[m] = np.empty_like(in_sorted_order)
        ranked[m][sorted_rows] = in_sorted_order
    return ranked


@torch.no_grad()
def response_nll(model, encoded, catalog_vectors, batch_size: int, progress: bool = False) -> tuple[float, int]:
    """Summed NLL and token count of the reference responses (perplexity), the ground-truth items
    read from `catalog_vectors` [N, d], the vectors ranking and generation read."""
    tok = model.tokenizer
    total, count = 0.0, 0  # device tensors after the first batch: read once at the end, not per batch
    catalog_rows = torch.arange(len(catalog_vectors), device=model.device)   # catalog index -> its row
    lengths = [len(e.context_ids) + len(e.response_ids) for e in encoded]
    for rows in tqdm(length_sorted_batches(lengths, batch_size), desc="perplexity", disable=not progress):
        batch = collate([encoded[i] for i in rows], tok.pad_token_id, model.rec_end_id).to(model.device)
        empty = torch.zeros(len(batch.target), 0, dtype=torch.long, device=model.device)
        losses = model.training_losses(batch, catalog_vectors, catalog_rows, empty, empty, score_items=False)
        total = total + losses["gen_nll_sum"].double()
        count = count + losses["gen_tokens"]
    return float(total), int(count)


@torch.no_grad()
def generate_responses(model, encoded, recommended: np.ndarray, catalog_vectors,
                       batch_size: int, strategy: str = "top_k", max_new_tokens: int = 64, seed: int = 0,
                       progress: bool = False) -> list[str]:
    """Generated texts for each encoded sample, the [ITEM] token kept as is. Samples run in
    batches of similar context length (shortest first), so little of a batch is padding."""
    tok = model.tokenizer
    texts: list[str] = [""] * len(encoded)
    batches = length_sorted_batches([len(e.context_ids) for e in encoded], batch_size)
    for b, rows in enumerate(tqdm(batches, desc="generate", disable=not progress)):
        chunk = [encoded[i] for i in rows]
        batch = collate(chunk, tok.pad_token_id, model.rec_end_id).to(model.device)
        rec = torch.as_tensor(recommended[rows], device=model.device)
        ids = model.generate(batch.context_ids, batch.context_items, batch.context_len, catalog_vectors, rec,
                             chunk[0].prompt_ids, strategy, max_new_tokens, seed=seed + b * batch_size)
        for i, row in zip(rows, ids):
            texts[i] = model.decode_reply(row)
    return texts


def naive_ranking(samples: list[Sample], item_index) -> np.ndarray:
    """The naive baseline's ranking [n, <=50] for `samples`: the items already mentioned in the
    dialogue, most recently mentioned first (it needs no model)."""
    return metrics.naive_baseline_ranking([metrics.items_by_last_mention(t.items for t in s.context) for s in samples],
                                          item_index=item_index)


_CONVERSATION_KEYS = ("rouge", "f1_item", "dist", "n_gen_samples")
INJECT_PROTOCOLS = ("every_turn", "target_turns")   # `evaluate(inject=...)`, `pecrs evaluate --inject`
MEDOID_REPLIES = 2000   # training replies the constant reply is chosen among (a draw of them)
CONSTANT_REPLY_KEYS = ("rouge1", "rouge2", "rouge1_paper_protocol", "rouge2_paper_protocol", "f1_item")


def training_replies(bundle, split: str) -> list[str]:
    """The reference reply of every recommender turn of `bundle`'s `split` (one per turn), where
    the constant reply is chosen."""
    return [s.response.text for s in make_samples(bundle.splits[split]) if not s.repeated]


def constant_reply_baseline(train_replies: list[str], test_references: list[str], seed: int = 0) -> dict:
    """ROUGE (both ways), F-1 of [ITEM] and Dist@n of answering every test turn with the same
    reply, `metrics.medoid_reply` of the training replies (its text under "constant_reply"): the
    floor a generation metric gives for nothing, as the naive baseline is for recall. One entry
    per response turn (repeated=False), as `evaluate`."""
    reply = metrics.medoid_reply(train_replies, max_replies=MEDOID_REPLIES, seed=seed)
    out = metrics.summarize(predictions=[reply] * len(test_references), references=test_references,
                            pred_has_item=np.full(len(test_references), ITEM in reply),
                            ref_has_item=np.array([ITEM in r for r in test_references], dtype=bool))
    return {"constant_reply": reply, **{k: v for k, v in out.items() if k.startswith(_CONVERSATION_KEYS)}}


def sample_predictions(samples: list[Sample], rows, ranked: np.ndarray, targets: np.ndarray, items: list[Item],
                       replies: dict[int, str]) -> list[dict]:
    """One JSON-ready record per ranked sample or reply, what `pecrs evaluate --predictions` writes:
    its top 10 item ids (none for a reply not ranked), the target and its 1-based rank among the
    `ranked` kept (None: not there, or no target), and for the sample that answers a turn the
    reference and the generated reply.
    rows: indices into `samples` of `ranked` [len(rows), keep] and `targets` [len(rows)] (catalog
    index, NO_ITEM without a target); replies: sample index -> reply ([ITEM] kept as is)."""
    rank = metrics.target_ranks(ranked, targets) + 1      # 1-based; 0: not in the kept list
    records = []
    for j, i in enumerate(rows):
        s = samples[i]
        record = {"dialogue_id": s.dialogue_id, "turn_index": s.turn_index, "target": s.target,
                  "target_seen_before": s.target_seen_before,
                  "target_rank": int(rank[j]) if s.target is not None and rank[j] else None,
                  "top10": [items[k].id for k in ranked[j, :10] if k >= 0]}
        if i in replies:
            record.update(reference=s.response.text, generated=replies[i])
        records.append(record)
    return records


def evaluate(model, store: ItemStore, encoder: DialogueEncoder, samples: list[Sample],
             inference: InferenceConfig | None = None, *, generate: bool = True, perplexity: bool = True,
             max_new_tokens: int = 64, seed: int = 0, progress: bool = False, index=None,
             predictions: bool = False, train_replies: list[str] | None = None,
             inject: str = "every_turn") -> dict:
    """All metrics of §4.1 on `samples`, as the JSON-ready dict of `metrics.summarize`.
    `inference`: M_inference, decoding and no_repeat_ngram, batch size, re-rank chunk,
    exclude_mentioned (None: defaults).
    generate=False: no responses (ROUGE, F-1, Dist are None); perplexity=False: no PPL (a forward
    pass over every sample: on a CPU, most of a recall-only evaluation's time). predictions=True:
    also "predictions", one record per ranked sample or reply (`sample_predictions`). train_replies (with
    generate): also the constant-reply baseline on the same turns, "constant_reply" and its
    ROUGE and F-1 as "constant_reply_rouge1", ... (`constant_reply_baseline`, beyond the paper).
    inject (INJECT_PROTOCOLS): "every_turn" gives each reply its top-1 item and lets the model
    decide whether to name it (§3.6 as written, and as served); "target_turns" injects only where
    the reference recommends, as the authors' released code did for the paper's F-1 and ROUGE: the
    gold "recommend here" bit reaches the model, so F-1 of [ITEM] there is no honest measure."""
    if inject not in INJECT_PROTOCOLS:
        raise ValueError(f"inject: {inject!r} is not one of {', '.join(INJECT_PROTOCOLS)}")
    inference = inference or InferenceConfig()
    m_inference, batch_size = inference.m_inference, inference.batch_size
    strategy = without_repeats(inference.decoding, inference.no_repeat_ngram)
    model.eval()
    started = time.perf_counter()
    encoded = encoder.encode_all(samples)
    catalog_vectors = store.all_vectors(model)
    # LoRA folded into the weights for the whole evaluation (model.merged_lora); unfolded after.
    # Three index spaces: every sample (`samples`, `encoded`, `ranked`, `has_target`); the ranked
    # ones (`ranked_idx` into samples, `ranked_subset` row for row); the ones with a target
    # (`ranked[has_target]`, `targets`, `seen`, `naive`), which the recall metrics read.
    with model.merged_lora():
        has_target = np.array([s.target is not None for s in samples], dtype=bool)
        # Generation injects a recommendation into every turn (or only where the reference has one,
        # inject="target_turns"); the recall metrics need the rows with a target (28% of INSPIRED's).
        ranked_idx = np.arange(len(samples)) if generate and inject == "every_turn" else np.flatnonzero(has_target)
        ranked_subset = rank_samples(model, [encoded[i] for i in ranked_idx], catalog_vectors, m_inference,
                                     batch_size, progress=progress, index=index, chunk_size=inference.rerank_chunk_size,
                                     exclude=mentioned_indices([samples[i] for i in ranked_idx], store.items)
                                     if inference.exclude_mentioned else None)
        ranked = np.full((len(samples), ranked_subset.shape[1]), NO_ITEM, dtype=ranked_subset.dtype)
        ranked[ranked_idx] = ranked_subset
        targets = np.array([e.target for e in encoded])[has_target]
        seen = np.array([s.target_seen_before for s in samples])[has_target]
        naive = naive_ranking([s for s, r in zip(samples, has_target) if r], store.index)
        result = {}
        nll, count = response_nll(model, encoded, catalog_vectors, batch_size, progress) if perplexity else (None, None)
        gen_args, replies = {}, {}
        if generate:
            # One response per recommender turn: the first sample of each turn (repeated=False).
            reply_idx = [i for i, s in enumerate(samples) if not s.repeated]
            turn_encoded = [encoded[i] for i in reply_idx]
            top1 = ranked[reply_idx, 0]       # NO_ITEM on the turns not ranked: generated without an item
            # ROUGE and Dist compare text; [ITEM] stands in both for "some item", as in the references.
            generated = generate_responses(model, turn_encoded, top1, catalog_vectors, batch_size, strategy,
                                           max_new_tokens, seed, progress)
            refs = [samples[i].response.text for i in reply_idx]
            replies = dict(zip(reply_idx, generated))
            gen_args = dict(predictions=generated, references=refs,
                            pred_has_item=np.array([ITEM in t for t in generated]),
                            ref_has_item=np.array([ITEM in r for r in refs]))
            if train_replies:
                constant = constant_reply_baseline(train_replies, refs, seed=seed)
                result["constant_reply"] = constant["constant_reply"]
                result.update({f"constant_reply_{k}": constant[k] for k in CONSTANT_REPLY_KEYS})
            result["examples"] = [
                {"dialogue_id": samples[i].dialogue_id, "turn_index": samples[i].turn_index,
                 "reference": samples[i].response.text, "generated": t,
                 "recommended": store.items[int(top1[j])].display() if top1[j] != NO_ITEM else None}
                for j, (i, t) in enumerate(zip(reply_idx[:20], generated[:20]))]
        summary = metrics.summarize(ranked=ranked[has_target], targets=targets, seen_before=seen, naive_ranked=naive,
                                    total_nll=nll, total_tokens=count, n_samples=len(samples), **gen_args)
        # Tables 9-10 (Appendix B): is the top-1 at least of the target's genre?
        summary["genres"] = metrics.top1_genre_accuracy(ranked[has_target, 0], targets,
                                                        [it.genres for it in store.items])
        summary["seconds"] = round(time.perf_counter() - started, 2)
        if predictions:
            all_targets = np.array([e.target for e in encoded])      # NO_ITEM (-1) where none
            rows = np.union1d(ranked_idx, list(replies)).astype(int)   # a reply not ranked: inject="target_turns"
            result["predictions"] = sample_predictions(samples, rows, ranked[rows], all_targets[rows], store.items,
                                                       replies)
        return {**summary, **result}


def recall_only(model, store, encoder, samples, inference: InferenceConfig | None = None,
                progress: bool = False) -> dict:
    """R@1/10/50 and their mean (the dev-selection score of §4.1), no generation. The ranking is
    `evaluate`'s, but with LoRA kept apart: dev selection runs between training steps, every
    epoch, where folding would copy the adapted weights each time for a single pass. The two rank
    alike up to rounding (tests/test_model.py, test_merged_lora_ranks_as_unmerged...)."""
    inference = inference or InferenceConfig()
    model.eval()
    with_target = [s for s in samples if s.target is not None]
    encoded = encoder.encode_all(with_target)
    vectors = store.all_vectors(model)
    ranked = rank_samples(model, encoded, vectors, inference.m_inference, inference.batch_size,
                          progress=progress, chunk_size=inference.rerank_chunk_size,
                          exclude=mentioned_indices(with_target, store.items) if inference.exclude_mentioned else None)
    out = metrics.recall_at_k(ranked, np.array([e.target for e in encoded]))
    out["recall_mean"] = float(np.mean([out["recall@1"], out["recall@10"], out["recall@50"]]))
    return out
