"""Hard negatives (beyond the paper): re-rank negatives drawn from what recall retrieves.

At inference the re-ranker orders recall's top M_inference (§3.6): items that already look like
an answer to the context. The paper trains it against M_train negatives drawn uniformly from
the catalog (§3.6), most of them easy, so training and inference re-rank different lists.
With `train.hard_negatives: h`, each training row with a target takes h of its M_train
negatives from its recall neighbours: the `train.hard_negative_depth` items the current model's
recall ranks first for that context. The other M_train - h stay uniform. With negatives shared
across the tasks (the default, §3.6) the hard ones are recall negatives of that row too.

    each epoch   recall_neighbours(model, store, samples, encoded, depth) -> [N, depth]
    each step    step.plan_step(..., neighbours=table[rows]) draws h of each row's depth

A neighbour is never a right answer: the items its turn recommends (a turn naming k items gives
k samples, `pecrs.samples`) and their twins (`pecrs.twins.same_film`) are left out. (The uniform
part avoids the batch's targets only, as in the paper.) An item the dialogue mentioned before
that is not an answer may be one (rare among the shipped model's neighbours: a one-off count found
under 1% of them on INSPIRED training samples).

The first epoch (`train.hard_negatives_from_epoch`, 2 by default) trains on uniform negatives: an
untrained model's neighbours are arbitrary items. A run that starts from a trained model
(`train.init_from`) can start at 1.
"""
from __future__ import annotations

import torch

from .data import Sample
from .tokens import NO_ITEM, EncodedSample
from .twins import excluded_rows, same_film


def answers_of_turn(samples: list[Sample], items) -> list[list[int]]:
    """Per sample with a target, the catalog rows it must never take as a hard negative: every item
    its recommender turn names (the targets of its sibling samples, even those a filter such as
    `train.fresh_targets_only` dropped) and their twins, sorted; [] for a sample without a target."""
    row_of, twins = {it.id: k for k, it in enumerate(items)}, same_film(items)
    return [excluded_rows((*s.response.items, s.target), twins, row_of) if s.target is not None else []
            for s in samples]


@torch.no_grad()
def recall_neighbours(model, store, samples: list[Sample], encoded: list[EncodedSample], depth: int,
                      batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Catalog indices [N, K] int32, recall's first K for each sample's context (Eq. 3, the
    exact search of evaluation and serving, no re-ranking), best first, its turn's answers left
    out (`answers_of_turn`); rows of samples without a target are NO_ITEM (-1). K is `depth`,
    or fewer where the catalog minus a row's answers is smaller, so that no row runs short.
    `encoded[i]` is `samples[i]` encoded. Runs the model in eval mode and puts its mode back;
    a model with bfloat16 frozen weights must run it under autocast, as training does."""
    from .evaluate import rank_samples   # here: pecrs.step imports this module for draw_hard only

    answers = answers_of_turn(samples, store.items)
    with_target = [i for i, s in enumerate(samples) if s.target is not None]
    depth = max(0, min(depth, len(store) - max((len(answers[i]) for i in with_target), default=0)))
    table = torch.full((len(samples), depth), NO_ITEM, dtype=torch.int32)
    if not with_target or not depth:
        return table
    was_training = model.training
    model.eval()
    try:
        ranked = rank_samples(model, [encoded[i] for i in with_target], store.all_vectors(model), depth, batch_size,
                              rerank=False, keep=depth, progress=progress, exclude=[answers[i] for i in with_target])
    finally:
        model.train(was_training)
    table[torch.tensor(with_target)] = torch.from_numpy(ranked).to(torch.int32)
    return table


def draw_hard(neighbours: torch.Tensor, h: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """h of each row's neighbours [B, K], uniformly without replacement -> [B, min(h, K)] int64
    (NO_ITEM rows, samples without a target, stay NO_ITEM). Uniform over the top K rather than
    the top h: the very first neighbours are the likeliest to be right answers the data does not
    label, and a fresh draw each step shows the re-ranker more of the confusable items."""
    B, K = neighbours.shape
    h = min(h, K)
    if not h:
        return torch.zeros(B, 0, dtype=torch.long)
    picks = torch.multinomial(torch.ones(B, K), h, replacement=False, generator=generator)
    return neighbours.long().gather(1, picks)
