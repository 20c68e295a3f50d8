"""A PECRS model under the standardized protocol: each instance's context laid out as in training
on ReDial, ranked by the same encoder and re-ranker as `pecrs evaluate`, then scored.
The model code (torch) is imported only when a ranking is asked for.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import numpy as np

from ..config import InferenceConfig
from ..data import ITEM, RECOMMENDER, SEEKER, Sample, Turn
from ..loaders import split_title_year
from .collection import AT_MENTION, Collection, Conversation
from .scoring import KS, item_codes, score_all


def context_turns(conv: Conversation, upto: int, item_index: Mapping[str, int]):
    """The dialogue before message `upto` as the model's `Turn`s, laid out as `pecrs.loaders`
    lays out ReDial with mentions="all": consecutive messages of one side merged with a space;
    each mention `@m` of a catalog movie becomes [ITEM] with m in `items`, of a movie missing from
    the catalog its name from movieMentions (year dropped); other text is kept as it is. The
    protocol counts every mention, so every one is linked; training's default "pecrs" rule writes
    some as titles instead (991 on ReDial-subset's splits, loaders/redial.py rule 3).
    It follows the protocol's collection, not the loaders, where the two could part: only `@m` in
    movieMentions is linked (the loaders link any catalog id; on the official test file all 8,521
    are in it), a literal "[ITEM]" is written "[item]" (the loaders refuse it), and no
    QUOTATION_MARK is read back (INSPIRED's escape, absent from ReDial)."""
    merged: list[list] = []   # [role, text, items]
    for by_recommender, text in conv.messages[:upto]:
        items: list[str] = []

        def link(match: re.Match) -> str:
            movie = match.group(1)
            if movie not in conv.movie_names:
                return match.group(0)
            if movie in item_index:
                items.append(movie)
                return ITEM
            return split_title_year(conv.movie_names[movie])[0] or match.group(0)

        text = AT_MENTION.sub(link, text.replace(ITEM, "[item]"))
        role = RECOMMENDER if by_recommender else SEEKER
        if merged and merged[-1][0] == role:
            merged[-1][1] += " " + text
            merged[-1][2] += items
        else:
            merged.append([role, text, items])
    return tuple(Turn(role, text, tuple(items)) for role, text, items in merged)


def instance_samples(collection: Collection, item_index: Mapping[str, int]) -> list:
    """One `pecrs.data.Sample` per instance (target None: only its context is read), so that the
    instances go through the same encoder and ranking code as `pecrs evaluate`."""
    out = []
    for inst in collection.instances:
        conv = collection.conversations[inst.conversation]
        context = context_turns(conv, inst.message_index, item_index)
        out.append(Sample(dialogue_id=conv.id, turn_index=inst.message_index, context=context,
                          response=Turn(RECOMMENDER, ""), target=None))
    return out


def rank_instances(model, store, encoder, collection: Collection, *, m_inference: int, batch_size: int = 8,
                   progress: bool = False, index=None, chunk_size: int = InferenceConfig.rerank_chunk_size,
                   exclude_mentioned: bool = False) -> np.ndarray:
    """Catalog indices [n_instances, 50] best first: each instance's context ranked once by
    `pecrs.evaluate.rank_samples` (retrieve M_inference by recall, re-rank), as `pecrs evaluate` does."""
    from ..evaluate import mentioned_indices, rank_samples

    model.eval()
    samples = instance_samples(collection, store.index)
    encoded = encoder.encode_all(samples)
    if not encoded:
        return np.zeros((0, max(KS)), dtype=np.int64)
    vectors = store.all_vectors(model)
    return rank_samples(model, encoded, vectors, m_inference, batch_size, keep=max(KS),
                        progress=progress, index=index, chunk_size=chunk_size,
                        exclude=mentioned_indices(samples, store.items) if exclude_mentioned else None)


def evaluate_model(model, store, encoder, collection: Collection, *, m_inference: int, batch_size: int = 8,
                   progress: bool = False, log: Callable[[str], None] | None = None,
                   chunk_size: int = InferenceConfig.rerank_chunk_size, exclude_mentioned: bool = False) -> dict:
    """The protocol's metrics of a PECRS model on both variants ({"full": ..., "dedup": ...});
    `store` is the catalog it ranks (ground-truth movies not in it are misses, and counted)."""
    ranked = rank_instances(model, store, encoder, collection, m_inference=m_inference, batch_size=batch_size,
                            progress=progress, chunk_size=chunk_size, exclude_mentioned=exclude_mentioned)
    codes = item_codes(collection, store.ids)
    result = score_all(collection, ranked, codes, store.ids)
    if log and result["full"]["n_missing_from_catalog"]:
        log(f"{result['full']['n_missing_from_catalog']} ground-truth mention(s) are of movies missing from the "
            "catalog; they count as misses")
    return result
