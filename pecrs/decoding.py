"""Decoding strategies for response generation (paper §5.1, Table 8).

PECRS generates the recommender response from left-padded ``inputs_embeds`` (item vectors are injected
as embeddings, so there are no ``input_ids``). This module names the strategies compared in Table 8,
turns a name into ``model.generate`` keyword arguments, and runs them, returning only the new tokens.

Strategies (``PRESETS``)
------------------------
Table 8 footnote: "Except greedy decoding, all other techniques use a beam width of 4". Facts taken from
the authors' public code (Ravoxsg/efficient_unified_crs, ``engine_validation.py::make_generation_embeds``
and the argparse defaults in ``main.py``):

* three methods only: ``beam_search``, ``diverse_beam_search``, ``top_k_sampling`` (default), all with
  ``num_return_sequences=1`` and ``max_new_tokens = utt_max_length = 64``;
* ``top_k_sampling`` is ``do_sample=True`` *with* ``num_beams`` (i.e. Hugging Face beam-sample), ``top_k=50``
  and ``temperature = sampling_temperature = 1.15``;
* ``diverse_beam_search`` passes ``num_beams``, ``num_beam_groups`` and ``diversity_penalty``; the defaults
  are ``num_beams=2``, ``num_beam_groups=2``, ``diversity_penalty=1.0``;
* no greedy and no nucleus branch exists in that code.

Choices made here:

* ``greedy``: ``num_beams=1``, no sampling.
* ``beam``: ``num_beams=4``.
* ``diverse_beam_{0.5,1.0,1.5}``: ``num_beams=4`` (footnote) split into ``num_beam_groups=2`` groups of 2
  beams: the footnote only fixes the beam width, so the group count stays at the code's default (2).
  ``{"num_beams": 4, "num_beam_groups": 4, "diversity_penalty": x}`` (4 groups of 1 beam) is the other
  reading; pass such a dict to :func:`resolve`/:func:`generate` to use it.
* ``top_k_{25,50,75}``: beam-sample exactly as the authors' ``top_k_sampling`` branch (``do_sample=True``,
  ``num_beams=4``, ``temperature=1.15``); ``top_p=1.0`` is set so that a checkpoint's
  ``generation_config`` (e.g. SmolLM2/Llama ship ``top_p=0.9``) cannot add a nucleus cut.
* ``nucleus_{0.90,0.95,0.99}``: not in the public code. Beam-sample with ``num_beams=4`` (footnote),
  ``top_k=0`` (pure nucleus as in Holtzman et al.; Hugging Face would otherwise silently apply its default
  ``top_k=50``) and ``temperature=1.0``. The 1.15 temperature belongs to the authors' top-k branch only;
  Table 8 also reports nucleus p=0.99 as much *less* diverse than top-k 50 (Dist@2 0.35 vs 0.65), which
  would not happen with the same 1.15 temperature and no top-k cut.
* aliases: ``top_k`` → ``top_k_50`` (the paper's default, §4.1), ``nucleus`` → ``nucleus_0.95``,
  ``diverse_beam`` → ``diverse_beam_1.0``.

Diverse beam search
-------------------
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

Positions
---------
With a 2-D ``attention_mask``, transformers 5 derives ``position_ids`` from the mask in ``generate``
(``cumsum(mask) - 1``) for every model whose ``forward`` accepts ``position_ids`` (GPT-2 and Llama
included), so left-padded batched decoding matches row-by-row decoding; this module therefore does not
pass ``position_ids`` itself. (For RoPE models such as Llama a constant shift of positions does not change
the output anyway; GPT-2's absolute position embeddings are what make this matter.)
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

__all__ = [
    "PRESETS",
    "ALIASES",
    "SAMPLING_TEMPERATURE",
    "resolve",
    "generate",
    "diverse_beam_search",
    "diverse_beam_groups",
    "hamming_penalty",
    "HammingDiversityLogitsProcessor",
    "StepChoiceRecorder",
    "strip_special",
]

#: temperature of the authors' ``top_k_sampling`` branch (``--sampling_temperature`` default).
SAMPLING_TEMPERATURE = 1.15
#: beam width of every strategy but greedy (Table 8 footnote).
BEAM_WIDTH = 4
#: number of beam groups for diverse beam search (authors' ``--num_beam_groups`` default).
NUM_BEAM_GROUPS = 2


def _top_k(k: int) -> dict:
    return {"do_sample": True, "num_beams": BEAM_WIDTH, "top_k": k, "top_p": 1.0,
            "temperature": SAMPLING_TEMPERATURE}


def _nucleus(p: float) -> dict:
    return {"do_sample": True, "num_beams": BEAM_WIDTH, "top_p": p, "top_k": 0, "temperature": 1.0}


def _diverse(penalty: float) -> dict:
    return {"do_sample": False, "num_beams": BEAM_WIDTH, "num_beam_groups": NUM_BEAM_GROUPS,
            "diversity_penalty": penalty}


PRESETS: dict[str, dict] = {
    "greedy": {"do_sample": False, "num_beams": 1},
    "beam": {"do_sample": False, "num_beams": BEAM_WIDTH},
    "diverse_beam_0.5": _diverse(0.5),
    "diverse_beam_1.0": _diverse(1.0),
    "diverse_beam_1.5": _diverse(1.5),
    "top_k_25": _top_k(25),
    "top_k_50": _top_k(50),
    "top_k_75": _top_k(75),
    "nucleus_0.90": _nucleus(0.90),
    "nucleus_0.95": _nucleus(0.95),
    "nucleus_0.99": _nucleus(0.99),
}

ALIASES: dict[str, str] = {
    "top_k": "top_k_50",
    "nucleus": "nucleus_0.95",
    "diverse_beam": "diverse_beam_1.0",
}

# keys this module sets itself; a strategy dict must not carry them
_RESERVED = {"inputs_embeds", "attention_mask", "input_ids", "max_new_tokens", "pad_token_id",
             "eos_token_id", "logits_processor", "stopping_criteria"}


def resolve(strategy: str | dict) -> dict:
    """Generate kwargs for a preset name, an alias, or a dict of kwargs (returned as a copy)."""
    if isinstance(strategy, dict):
        kwargs = copy.deepcopy(strategy)
    elif isinstance(strategy, str):
        name = ALIASES.get(strategy, strategy)
        if name not in PRESETS:
            valid = ", ".join(sorted(PRESETS) + sorted(ALIASES))
            raise ValueError(f"unknown decoding strategy {strategy!r}; valid names: {valid}")
        kwargs = copy.deepcopy(PRESETS[name])
    else:
        raise TypeError(f"strategy must be a preset name or a dict of generate kwargs, got {type(strategy).__name__}")
    bad = _RESERVED & set(kwargs)
    if bad:
        raise ValueError(f"strategy must not set {sorted(bad)}: pass them to generate() instead")
    if kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError("num_return_sequences must be 1 (one response per row)")
    groups = kwargs.get("num_beam_groups", 1) or 1
    if groups > 1:
        beams = kwargs.get("num_beams", 1) or 1
        if beams % groups:
            raise ValueError(f"num_beams ({beams}) must be divisible by num_beam_groups ({groups})")
        if kwargs.get("do_sample"):
            raise ValueError("diverse beam search (num_beam_groups > 1) does not sample: set do_sample=False")
    return kwargs


# ------------------------------------------------------------------------------------------------ helpers

def _eos_list(eos_token_id) -> list[int]:
    if eos_token_id is None:
        return []
    if isinstance(eos_token_id, torch.Tensor):
        return [int(x) for x in eos_token_id.flatten().tolist()]
    if isinstance(eos_token_id, Iterable):
        return [int(x) for x in eos_token_id]
    return [int(eos_token_id)]


def _special_ids(model, pad_token_id, eos_token_id) -> tuple[int | None, list[int]]:
    """pad / eos ids: given ones first, else the model's generation_config, else its config."""
    sources = [getattr(model, "generation_config", None), getattr(model, "config", None)]
    if eos_token_id is None:
        for src in sources:
            if src is not None and getattr(src, "eos_token_id", None) is not None:
                eos_token_id = src.eos_token_id
                break
    eos = _eos_list(eos_token_id)
    if pad_token_id is None:
        for src in sources:
            if src is not None and getattr(src, "pad_token_id", None) is not None:
                pad_token_id = src.pad_token_id
                break
    if pad_token_id is None and eos:
        pad_token_id = eos[0]  # what transformers does too, minus its warning
    return (int(pad_token_id) if pad_token_id is not None else None), eos


def strip_special(rows, pad_token_id: int | None, eos_token_id) -> list[list[int]]:
    """Cut each row at its first EOS (dropped) and remove padding ids.

    All pad ids are removed, not only trailing ones: a trained model never emits padding (it is never a
    target), and a random test model that does must not leak it.
    """
    eos = set(_eos_list(eos_token_id))
    out = []
    for row in rows:
        row = row.tolist() if isinstance(row, torch.Tensor) else list(row)
        kept = []
        for t in row:
            t = int(t)
            if t in eos:
                break
            if pad_token_id is not None and t == pad_token_id:
                continue
            kept.append(t)
        out.append(kept)
    return out


def _new_tokens(sequences: torch.Tensor, prompt_len: int, max_new_tokens: int) -> torch.Tensor:
    """Transformers (>= 4.27 and 5.x) returns only the new tokens when generating from inputs_embeds
    alone; should a version prepend a prompt placeholder, drop it."""
    if sequences.shape[1] > max_new_tokens:
        sequences = sequences[:, prompt_len:]
    return sequences


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Seed torch's RNGs for the call and restore the previous RNG state afterwards."""
    if seed is None:
        yield
        return
    if device.type == "cpu":
        fork = torch.random.fork_rng(devices=[])
    else:  # also save and restore the accelerator's RNG (torch.manual_seed seeds every device)
        fork = torch.random.fork_rng(devices=[device], device_type=device.type)
    with fork:
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------------------------ diverse beam search

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
        self.eos = torch.tensor(_eos_list(eos_token_id), dtype=torch.long)
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


def _run_groups(model, inputs_embeds, attention_mask, kwargs, max_new_tokens, pad, eos):
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

    recorders: list[StepChoiceRecorder] = []
    results = []
    for _ in range(groups):
        processor = HammingDiversityLogitsProcessor(penalty, recorders)
        recorder = StepChoiceRecorder(B, group_size, eos)
        out = model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
            pad_token_id=pad, eos_token_id=eos or None, num_beams=group_size, do_sample=False,
            num_return_sequences=1, logits_processor=LogitsProcessorList([processor]),
            stopping_criteria=StoppingCriteriaList([recorder]), return_dict_in_generate=True,
            output_scores=True, output_logits=group_size == 1, **kwargs,
        )
        scores = _greedy_scores(out, eos, length_penalty) if group_size == 1 else out.sequences_scores
        seqs = _new_tokens(out.sequences, inputs_embeds.shape[1], max_new_tokens).tolist()
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
                        **generate_kwargs) -> list[list[tuple[list[int], float]]]:
    """Every group's best beam: ``result[row][group] = (token ids, score)`` (ids cut at EOS, EOS and
    padding removed; score = the group's ``sequences_scores``, diversity penalties included)."""
    kwargs = _diverse_kwargs(num_beams, num_beam_groups, diversity_penalty, generate_kwargs)
    pad, eos = _special_ids(model, pad_token_id, eos_token_id)
    result = []
    for emb, mask in _rows(inputs_embeds, attention_mask, per_row):
        groups = _run_groups(model, emb, mask, kwargs, max_new_tokens, pad, eos)
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


# ----------------------------------------------------------------------------------------------- generate

@torch.no_grad()
def generate(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, strategy: str | dict = "top_k",
             max_new_tokens: int = 64, pad_token_id: int | None = None, eos_token_id=None,
             seed: int | None = None) -> list[list[int]]:
    """Decode responses from LEFT-padded ``inputs_embeds`` [B, L, d] with a 2-D ``attention_mask`` [B, L].

    ``model`` is a Hugging Face causal LM (or a peft model wrapping one). ``strategy`` is a preset name, an
    alias, or a dict of ``generate`` kwargs (see :data:`PRESETS`). ``pad_token_id``/``eos_token_id`` default
    to the model's generation config. ``seed`` seeds torch's RNGs for this call only (the global RNG state
    is restored afterwards), which makes the sampling strategies reproducible.

    Returns the new token ids of each row, cut at the first EOS, with EOS and padding removed.
    """
    if inputs_embeds.dim() != 3 or attention_mask.dim() != 2 or attention_mask.shape != inputs_embeds.shape[:2]:
        raise ValueError("expected inputs_embeds [B, L, d] and a 2-D attention_mask [B, L]")
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("inputs must be LEFT-padded (attention_mask[:, -1] must be 1 for every row)")
    kwargs = resolve(strategy)
    pad, eos = _special_ids(model, pad_token_id, eos_token_id)
    with _seeded(seed, inputs_embeds.device):
        if (kwargs.get("num_beam_groups") or 1) > 1:
            kwargs.setdefault("diversity_penalty", 0.0)
            return diverse_beam_search(model, inputs_embeds, attention_mask, max_new_tokens=max_new_tokens,
                                       pad_token_id=pad, eos_token_id=eos, **kwargs)
        kwargs.pop("num_beam_groups", None)
        kwargs.pop("diversity_penalty", None)
        out = model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos or None,
                             num_return_sequences=1, **kwargs)
    if not isinstance(out, torch.Tensor):
        out = out.sequences
    return strip_special(_new_tokens(out, inputs_embeds.shape[1], max_new_tokens), pad, eos)
