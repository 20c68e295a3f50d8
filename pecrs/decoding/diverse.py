"""Diverse (group) beam search with Hamming diversity, for the ``diverse_beam_*`` presets of Table 8.

Transformers 5 moved group ("diverse") beam search to a Hub ``custom_generate`` repository, which cannot
be fetched offline, so it is implemented here on top of transformers' own beam search. In Vijayakumar et
al.'s algorithm (Hamming diversity, as in transformers 4.x ``HammingDiversityLogitsProcessor``), group
``g`` at step ``t`` sees the log-probabilities minus ``diversity_penalty × (number of times each token was
chosen at step t by the beams of groups < g)``. It depends on earlier groups only, so the groups run one
after another, each as an ordinary Hugging Face beam search of ``num_beams // num_beam_groups`` beams
with :class:`HammingDiversityLogitsProcessor`; a :class:`StepChoiceRecorder` (a ``StoppingCriteria`` that
never stops anything) records, at every step, the tokens a group keeps for its live beams, including the
last step (a logits processor would only see step t's choices at step t+1, so it misses the final one).

* The penalty is applied to log-probabilities and enters the cumulative beam scores, as in 4.x.
* The returned sequence is the best finished beam over *all* groups by ``sequences_scores`` (penalised,
  length-normalised log-probability), as 4.x group beam search returned its top beam overall; ties go
  to the earlier group, so ``diversity_penalty=0`` gives exactly ordinary beam search of one group's width.
* Rows are decoded one at a time (``per_row=True``, the default): in a batch, transformers 5 keeps
  running the beams of a row that is already finished while other rows continue, and those phantom
  tokens would penalise later groups (4.x used padding there, i.e. no penalty). ``per_row=False`` decodes
  the whole batch per group (faster, and identical except for that effect).
* Groups of one beam run as greedy search with the same processor (transformers routes ``num_beams=1`` to
  greedy); their score is recomputed from ``output_logits``/``output_scores``. 4.x ran them as 1-beam beam
  searches, which may continue past an EOS; greedy stops there.
* 4.x also penalised the pad token for groups that had finished; that is not reproduced (no effect
  unless a model would emit padding).
"""
from __future__ import annotations

import copy

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from .outputs import eos_list, new_tokens, special_ids, strip_special
from .prefill import prompt_cache_kwargs
from .presets import BEAM_WIDTH, NUM_BEAM_GROUPS, resolve


def hamming_penalty(scores: torch.Tensor, previous_tokens: torch.Tensor, diversity_penalty: float) -> torch.Tensor:
    """Hamming diversity (Vijayakumar et al., 2018): ``scores - diversity_penalty * count``.

    scores: [B * G, V] scores of the G beams of the current group for each of B rows (row-major:
        beam j of row b is ``b * G + j``, the layout of transformers' beam search).
    previous_tokens: [B, N] tokens chosen at this step by the beams of earlier groups (negative
        entries are ignored, e.g. slots of a group with fewer live beams).
    count[b, v] = number of times token v occurs in previous_tokens[b]. Returns a new tensor.
    """
    B = previous_tokens.shape[0]
    if B == 0 or scores.shape[0] % B:
        raise ValueError(f"scores rows ({scores.shape[0]}) must be a multiple of the batch size ({B})")
    group_size = scores.shape[0] // B
    V = scores.shape[-1]
    prev = previous_tokens.to(scores.device).long()
    valid = (prev >= 0) & (prev < V)
    counts = torch.zeros(B, V, dtype=scores.dtype, device=scores.device)
    counts.scatter_add_(1, prev.clamp(0, V - 1), valid.to(scores.dtype))
    return scores - diversity_penalty * counts.repeat_interleave(group_size, dim=0)


class StepChoiceRecorder(StoppingCriteria):
    """Records the tokens a group keeps for its live beams at every decoding step; never stops anything.

    ``steps[t]`` is a [B, K] LongTensor with the step-t choices (-1 in unused slots). It is fed by the
    stopping-criteria call that transformers makes once per step, right after choosing the step's tokens:
    * transformers 5 beam search passes its top-K candidates (K = 2 × beams, sorted by score, best first)
      and then keeps the best ``group_size`` of those that did not end in EOS: the same rule is applied here
      (it is also transformers 4.x's ``BeamSearchScorer`` rule, which picks from the same candidates);
    * greedy search (and 4.x beam search) passes exactly the live rows: their last token is recorded.
    Recording at the step itself (not at the next call's ``input_ids``) also captures the final step.
    """

    def __init__(self, batch_size: int, group_size: int, eos_token_id):
        self.batch_size = batch_size
        self.group_size = group_size
        self.eos = torch.tensor(eos_list(eos_token_id), dtype=torch.long)
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        rows = input_ids.shape[0]
        last = input_ids[:, -1].view(self.batch_size, rows // self.batch_size)
        if last.shape[1] == self.group_size:
            choices = last.clone()
        else:
            keep = ~torch.isin(last, self.eos.to(last.device)) if self.eos.numel() else torch.ones_like(last, dtype=torch.bool)
            rank = keep.long().cumsum(dim=1)
            keep &= rank <= self.group_size
            choices = torch.where(keep, last, torch.full_like(last, -1))
        self.steps.append(choices)
        return torch.zeros(rows, dtype=torch.bool, device=input_ids.device)


class HammingDiversityLogitsProcessor(LogitsProcessor):
    """Subtracts ``diversity_penalty × count`` of each token chosen at the current step by earlier groups.

    ``previous`` are the :class:`StepChoiceRecorder` of the earlier groups (already complete). The step
    index is the growth of ``input_ids`` since the first call: transformers calls processors once per step,
    with the sequences generated so far (step 0: the prompt, empty when generating from embeddings).
    """

    def __init__(self, diversity_penalty: float, previous: list[StepChoiceRecorder]):
        self.diversity_penalty = float(diversity_penalty)
        self.previous = list(previous)
        self._start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._start is None:
            self._start = input_ids.shape[1]
        step = input_ids.shape[1] - self._start
        chosen = [rec.steps[step] for rec in self.previous if step < len(rec.steps)]
        if not chosen or self.diversity_penalty == 0.0:
            return scores
        return hamming_penalty(scores, torch.cat(chosen, dim=1), self.diversity_penalty)


def _greedy_scores(out, eos: list[int], length_penalty: float) -> torch.Tensor:
    """Length-normalised, processor-adjusted log-probability of greedy outputs (one beam per group), the
    quantity beam search reports as ``sequences_scores``: sum_t [log_softmax(raw_t)[x_t] + (processed_t -
    raw_t)[x_t]] over the tokens up to and including the first EOS, divided by length ** length_penalty."""
    seqs = out.sequences[:, -len(out.scores):]
    total = torch.zeros(seqs.shape[0], dtype=torch.float32, device=seqs.device)
    length = torch.zeros_like(total)
    alive = torch.ones(seqs.shape[0], dtype=torch.bool, device=seqs.device)
    for t, (raw, processed) in enumerate(zip(out.logits, out.scores)):
        tok = seqs[:, t:t + 1]
        raw = raw.float()
        step = (torch.log_softmax(raw, dim=-1).gather(1, tok) + processed.float().gather(1, tok) - raw.gather(1, tok)).squeeze(1)
        total += torch.where(alive, step, torch.zeros_like(step))
        length += alive.float()
        if eos:
            alive &= ~torch.isin(tok.squeeze(1), torch.tensor(eos, device=tok.device))
    return total / length.clamp(min=1) ** length_penalty


def _run_groups(model, inputs_embeds, attention_mask, kwargs, max_new_tokens, pad, eos, processors=()):
    """Run the groups one after another; returns [(sequences [B, T_g] list, scores [B], recorder)]."""
    kwargs = dict(kwargs)
    groups = int(kwargs.pop("num_beam_groups"))
    penalty = float(kwargs.pop("diversity_penalty", 0.0) or 0.0)
    beams = int(kwargs.pop("num_beams"))
    group_size = beams // groups
    kwargs.pop("do_sample", None)
    B = inputs_embeds.shape[0]
    length_penalty = kwargs.get("length_penalty")
    if length_penalty is None:
        length_penalty = getattr(getattr(model, "generation_config", None), "length_penalty", None) or 1.0

    # The prompt runs once for all groups and beams; each group decodes from its own copy of the cache.
    prompt = prompt_cache_kwargs(model, inputs_embeds, attention_mask, group_size)
    recorders: list[StepChoiceRecorder] = []
    results = []
    for g in range(groups):
        kwargs.update(prompt if g == groups - 1 else copy.deepcopy(prompt))
        processor = HammingDiversityLogitsProcessor(penalty, recorders)
        recorder = StepChoiceRecorder(B, group_size, eos)
        out = model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
            pad_token_id=pad, eos_token_id=eos or None, num_beams=group_size, do_sample=False,
            num_return_sequences=1, logits_processor=LogitsProcessorList([processor, *processors]),
            stopping_criteria=StoppingCriteriaList([recorder]), return_dict_in_generate=True,
            output_scores=True, output_logits=group_size == 1, **kwargs,
        )
        scores = _greedy_scores(out, eos, length_penalty) if group_size == 1 else out.sequences_scores
        seqs = new_tokens(out.sequences, inputs_embeds.shape[1], max_new_tokens).tolist()
        results.append((seqs, scores.detach().float().cpu(), recorder))
        recorders.append(recorder)
    return results


def _diverse_kwargs(num_beams, num_beam_groups, diversity_penalty, generate_kwargs) -> dict:
    kwargs = resolve({**generate_kwargs, "num_beams": num_beams, "num_beam_groups": num_beam_groups,
                      "diversity_penalty": diversity_penalty, "do_sample": False})
    if num_beam_groups < 1 or num_beams < num_beam_groups:
        raise ValueError(f"need 1 <= num_beam_groups <= num_beams, got {num_beam_groups} and {num_beams}")
    return kwargs


def _rows(inputs_embeds, attention_mask, per_row):
    """(embeds, mask) chunks: each row without its left padding, or the whole batch."""
    if not per_row:
        yield inputs_embeds, attention_mask
        return
    for i in range(inputs_embeds.shape[0]):
        keep = attention_mask[i].bool()
        yield inputs_embeds[i:i + 1, keep], attention_mask[i:i + 1, keep]


@torch.no_grad()
def diverse_beam_groups(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, *,
                        num_beams: int = BEAM_WIDTH, num_beam_groups: int = NUM_BEAM_GROUPS,
                        diversity_penalty: float = 1.0, max_new_tokens: int = 64,
                        pad_token_id: int | None = None, eos_token_id=None, per_row: bool = True,
                        processors=(), **generate_kwargs) -> list[list[tuple[list[int], float]]]:
    """Every group's best beam: ``result[row][group] = (token ids, score)`` (ids cut at EOS, EOS and
    padding removed; score = the group's ``sequences_scores``, diversity penalties included).
    ``processors``: more logits processors, applied after the diversity penalty in every group."""
    kwargs = _diverse_kwargs(num_beams, num_beam_groups, diversity_penalty, generate_kwargs)
    pad, eos = special_ids(model, pad_token_id, eos_token_id)
    result = []
    for emb, mask in _rows(inputs_embeds, attention_mask, per_row):
        groups = _run_groups(model, emb, mask, kwargs, max_new_tokens, pad, eos, processors)
        for i in range(emb.shape[0]):
            result.append([(strip_special([seqs[i]], pad, eos)[0], float(scores[i])) for seqs, scores, _ in groups])
    return result


@torch.no_grad()
def diverse_beam_search(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, *,
                        num_beams: int = BEAM_WIDTH, num_beam_groups: int = NUM_BEAM_GROUPS,
                        diversity_penalty: float = 1.0, max_new_tokens: int = 64,
                        pad_token_id: int | None = None, eos_token_id=None, per_row: bool = True,
                        **generate_kwargs) -> list[list[int]]:
    """Diverse (group) beam search with Hamming diversity; see the module docstring.

    Returns, per row, the highest-scoring final beam over all groups (ties: the earlier group), cut at
    EOS, EOS and padding removed. ``generate_kwargs`` go to each group's beam search (e.g.
    ``length_penalty``, ``early_stopping``).
    """
    per_group = diverse_beam_groups(
        model, inputs_embeds, attention_mask, num_beams=num_beams, num_beam_groups=num_beam_groups,
        diversity_penalty=diversity_penalty, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
        eos_token_id=eos_token_id, per_row=per_row, **generate_kwargs)
    best = []
    for groups in per_group:
        ids, score = groups[0]
        for other_ids, other_score in groups[1:]:
            if other_score > score:  # strict: ties keep the earlier group
                ids, score = other_ids, other_score
        best.append(ids)
    return best
