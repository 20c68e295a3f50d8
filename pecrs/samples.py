"""From dialogues to training/evaluation samples (§3.1), with the authors' rules.

As in the reference implementation (Ravoxsg/efficient_unified_crs, dataset.py):
  * the first turn of a dialogue is context only, whoever speaks it;
  * every later recommender turn is a response to predict from all turns before it: one sample
    per mentioned item (k items -> k samples, the j-th with `repeated = j > 0`), or a single
    sample with `target=None` when it mentions none (an item named twice in one turn is two
    samples: 3 of INSPIRED's 279 test targets, 35 of ReDial's 4,751, as in the authors' counts);
  * seeker turns only ever extend the context.
All k samples of a multi-item turn share the same context: the turns before the response.
(The reference code, building token tensors in a loop, also appended "[REC] ids [REC_END]" to
the context of samples j > 0 of the same turn; we do not reproduce that.)

`earlier_items` lists the items mentioned in earlier turns, by either role, in first-mention
order; `target_seen_before` says the target is among them (dedup recall drops those samples).
Token-level truncation (last 256 context tokens, first 64 response tokens) belongs to the
tokenizer stage (pecrs.tokens), not here.
"""
from __future__ import annotations

from collections.abc import Iterable

from .data import RECOMMENDER, Dialogue, Sample, Turn


def mentioned_items(turns: Iterable[Turn]) -> list[str]:
    """The item ids `turns` mention, each once, in first-mention order: a sample's earlier_items,
    and what inference.exclude_mentioned keeps from being recommended (served and evaluated)."""
    return list(dict.fromkeys(item for turn in turns for item in turn.items))


def dialogue_samples(dialogue: Dialogue) -> list[Sample]:
    samples: list[Sample] = []
    earlier: list[str] = []   # first-mention order
    seen: set[str] = set()    # the same ids, for O(1) membership
    for t, turn in enumerate(dialogue.turns):
        if t > 0 and turn.role == RECOMMENDER:
            # One tuple per turn, shared by its k samples (no per-sample copies).
            context, earlier_items = dialogue.turns[:t], tuple(earlier)
            targets = turn.items or (None,)
            for j, target in enumerate(targets):
                samples.append(Sample(
                    dialogue_id=dialogue.id, turn_index=t, context=context, response=turn,
                    target=target, earlier_items=earlier_items,
                    target_seen_before=target is not None and target in seen,
                    repeated=j > 0))
        for item in turn.items:
            if item not in seen:
                seen.add(item)
                earlier.append(item)
    return samples


def make_samples(dialogues: Iterable[Dialogue]) -> list[Sample]:
    """All samples of `dialogues`, in dialogue order then turn order."""
    return [s for d in dialogues for s in dialogue_samples(d)]
