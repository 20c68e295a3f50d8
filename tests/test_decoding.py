"""pecrs.decoding on tiny random GPT-2 and Llama models (left-padded inputs_embeds, no input_ids)."""
import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, LogitsProcessor,
                          LogitsProcessorList, StoppingCriteriaList)

from pecrs import decoding
from pecrs.decoding import (ALIASES, PRESETS, HammingDiversityLogitsProcessor, StepChoiceRecorder,
                            diverse_beam_groups, diverse_beam_search, generate, hamming_penalty, resolve,
                            strip_special, without_repeats)

VOCAB, D = 300, 64
PAD, EOS = 0, 2
LENGTHS = [7, 4, 2]  # three rows, left-padded to 7
NEW = 8


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: thread fan-out only costs (10x slower on a busy 2-core box); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gpt2(eos=EOS):
    torch.manual_seed(0)
    # initializer_range 0.2 (not 0.02): with the default a random GPT-2 emits one constant token,
    # which would make the comparisons below vacuous; at 0.2 outputs depend on content and positions.
    cfg = GPT2Config(n_layer=2, n_embd=D, n_head=4, vocab_size=VOCAB, initializer_range=0.2,
                     bos_token_id=1, eos_token_id=eos, pad_token_id=PAD)
    return GPT2LMHeadModel(cfg).eval()


def _llama(eos=EOS):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=eos, pad_token_id=PAD)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return {"gpt2": _gpt2, "llama": _llama}[request.param]()


@pytest.fixture(scope="module")
def gpt2():
    return _gpt2()


def _inputs(lengths=LENGTHS, seed=1):
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    emb = torch.randn(len(lengths), L, D, generator=g)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, L - n:] = 1
        emb[i, : L - n] = 0.0  # padding positions (never attended)
    return emb, mask


def _clean(out, n_rows, eos=EOS, pad=PAD):
    assert isinstance(out, list) and len(out) == n_rows
    for row in out:
        assert isinstance(row, list) and len(row) <= NEW
        assert all(type(t) is int and 0 <= t < VOCAB for t in row)
        assert eos not in row and pad not in row


# ------------------------------------------------------------------------------------------- presets

def test_preset_names():
    assert set(PRESETS) == {
        "greedy", "beam", "diverse_beam_0.5", "diverse_beam_1.0", "diverse_beam_1.5", "top_k_25", "top_k_50",
        "top_k_75", "nucleus_0.90", "nucleus_0.95", "nucleus_0.99"}
    assert resolve("top_k") == PRESETS["top_k_50"]
    assert resolve("nucleus") == PRESETS["nucleus_0.95"]
    assert resolve("diverse_beam") == PRESETS["diverse_beam_1.0"]
    for name, kw in PRESETS.items():  # Table 8 footnote: beam width 4 except greedy
        assert kw["num_beams"] == (1 if name == "greedy" else 4)
    assert resolve("top_k_50")["do_sample"] and resolve("top_k_50")["top_k"] == 50
    assert resolve("nucleus_0.99")["top_p"] == 0.99 and resolve("nucleus_0.99")["top_k"] == 0
    assert resolve("diverse_beam_1.5")["diversity_penalty"] == 1.5


@pytest.mark.parametrize("kwargs, words", [
    ({"num_beams": 0}, "num_beams must be an integer >= 1, got 0"),     # transformers: ZeroDivisionError
    ({"num_beams": True}, "num_beams must be an integer >= 1, got True"),
    ({"num_beams": 2.0}, "num_beams must be an integer"),
    ({"top_k": -1, "do_sample": True}, "top_k must be an integer >= 0"),
    ({"do_sample": True, "temperature": 0.0}, "temperature must be a number > 0"),
    ({"do_sample": True, "top_p": 1.5}, r"top_p must be a number in \[0, 1\]"),
    ({"do_sample": True, "temperature": float("nan")}, "temperature must be a number > 0"),
])
def test_a_strategy_dict_with_impossible_numbers_fails_when_given_not_at_the_first_reply(kwargs, words):
    with pytest.raises(ValueError, match=words):
        resolve(kwargs)
    # what transformers takes: temperature 0 without sampling (ignored), an integer temperature
    # (made a float: its processors refuse an int), top_p 0
    assert resolve({"do_sample": False, "temperature": 0.0}) == {"do_sample": False, "temperature": 0.0}
    sampled = resolve({"do_sample": True, "num_beams": 2, "temperature": 2, "repetition_penalty": 2, "top_p": 0})
    assert type(sampled["temperature"]) is float and type(sampled["repetition_penalty"]) is float


def test_resolve_returns_a_copy():
    kw = resolve("beam")
    kw["num_beams"] = 99
    assert PRESETS["beam"]["num_beams"] == 4
    d = {"num_beams": 2}
    assert resolve(d) == d and resolve(d) is not d


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError) as err:
        resolve("top_p")
    msg = str(err.value)
    assert "top_p" in msg
    for name in list(PRESETS) + list(ALIASES):
        assert name in msg


def test_resolve_rejects_bad_dicts():
    with pytest.raises(ValueError):
        resolve({"num_beams": 4, "num_beam_groups": 3, "diversity_penalty": 1.0})
    with pytest.raises(ValueError):
        resolve({"num_return_sequences": 2})
    with pytest.raises(ValueError):
        resolve({"max_new_tokens": 5})
    with pytest.raises(TypeError):
        resolve(3)


@pytest.mark.parametrize("strategy", sorted(PRESETS) + sorted(ALIASES))
def test_every_preset_runs(model, strategy):
    emb, mask = _inputs([5, 2])
    out = generate(model, emb, mask, strategy, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=EOS, seed=0)
    _clean(out, 2)


# ------------------------------------------------------------------------------------ greedy, batching

def test_greedy_batched_equals_row_by_row(model):
    emb, mask = _inputs()
    batched = generate(model, emb, mask, "greedy", max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=EOS)
    for i, n in enumerate(LENGTHS):
        single = generate(model, emb[i:i + 1, -n:], mask[i:i + 1, -n:], "greedy", max_new_tokens=NEW,
                          pad_token_id=PAD, eos_token_id=EOS)
        assert batched[i] == single[0]


def test_gpt2_positions_matter(gpt2):
    """The batched == row-by-row check above is not vacuous for GPT-2: positions counted from the padded
    start (instead of from the attention mask) change the tokens."""
    emb, mask = _inputs()
    good = gpt2.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                         pad_token_id=PAD, eos_token_id=None)
    naive = gpt2.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                          pad_token_id=PAD, eos_token_id=None,
                          position_ids=torch.arange(emb.shape[1]).expand(emb.shape[0], -1))
    assert good[0].tolist() == naive[0].tolist()  # unpadded row: same positions
    assert good[1:].tolist() != naive[1:].tolist()


def test_returns_only_new_tokens(model):
    emb, mask = _inputs()
    out = generate(model, emb, mask, "greedy", max_new_tokens=1, pad_token_id=PAD, eos_token_id=None)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    first = model(inputs_embeds=emb, attention_mask=mask, position_ids=pos).logits[:, -1].argmax(-1)
    assert [r for r in out] == [[t] for t in first.tolist()]


def test_stops_at_eos(model):
    emb, mask = _inputs()
    free = generate(model, emb, mask, "greedy", max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=VOCAB - 1)
    eos = free[0][3]
    cut = generate(model, emb, mask, "greedy", max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=eos)
    assert cut[0] == free[0][: free[0].index(eos)]
    for row_free, row_cut in zip(free, cut):
        assert row_cut == (row_free[: row_free.index(eos)] if eos in row_free else row_free)


def test_strip_special():
    rows = torch.tensor([[5, 6, 2, 7, 0], [0, 5, 0, 6, 8], [2, 3, 3, 3, 3]])
    assert strip_special(rows, 0, 2) == [[5, 6], [5, 6, 8], []]
    assert strip_special([[5, 9, 4]], 0, [9, 4]) == [[5]]
    assert strip_special([[5, 9, 4]], None, None) == [[5, 9, 4]]


def test_rejects_right_padding(gpt2):
    emb, mask = _inputs()
    with pytest.raises(ValueError, match="LEFT"):
        generate(gpt2, emb, mask.flip(-1), "greedy", max_new_tokens=2, pad_token_id=PAD, eos_token_id=EOS)


def test_default_special_ids_from_model(gpt2):
    emb, mask = _inputs()
    a = generate(gpt2, emb, mask, "greedy", max_new_tokens=NEW)
    b = generate(gpt2, emb, mask, "greedy", max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=EOS)
    assert a == b


# ------------------------------------------------------------------------- beams: one prompt pass a row

def _stock(model, emb, mask, strategy, seed=None):
    """transformers' own beam search, every beam prefilling its own copy of the prompt."""
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=NEW, pad_token_id=PAD,
                         eos_token_id=EOS, num_return_sequences=1, **resolve(strategy))
    return strip_special(decoding.outputs.new_tokens(out, emb.shape[1], NEW), PAD, EOS)


@pytest.mark.parametrize("strategy", ["beam", "top_k", "nucleus_0.99"])
def test_beams_match_stock_beam_search(model, strategy):
    """`prompt_cache_kwargs` changes where the prompt is computed, not what is decoded: the same
    tokens as transformers' beam search (and beam-sample under the same seed), GPT-2 positions included."""
    emb, mask = _inputs()
    seed = 3 if resolve(strategy).get("do_sample") else None
    ours = generate(model, emb, mask, strategy, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=EOS, seed=seed)
    assert ours == _stock(model, emb, mask, strategy, seed)
    assert any(len(row) > 1 for row in ours)  # something was decoded beyond the prefilled position


@pytest.mark.parametrize("strategy", ["beam", "diverse_beam"])
def test_beams_run_the_prompt_once_per_row(model, strategy):
    """The prompt but its last position runs once per row: beam search in one [3, 6] pass, diverse
    beam search per row without its padding ([1, n - 1]) for all its groups. Every other pass runs
    one position per beam, where stock beam search runs the whole prompt once per beam ([12, 7])."""
    lengths = [7, 4, 3]
    emb, mask = _inputs(lengths)
    shapes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["inputs_embeds"].shape[:2])
                                                                          if kw.get("inputs_embeds") is not None
                                                                          else tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        generate(model, emb, mask, strategy, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=None)
    finally:
        hook.remove()
    prompt_passes = [shape for shape in shapes if shape[1] > 1]
    rows, L = emb.shape[:2]
    assert prompt_passes == ([(rows, L - 1)] if strategy == "beam" else [(1, n - 1) for n in lengths])
    beams = resolve(strategy)["num_beams"] // resolve(strategy).get("num_beam_groups", 1)
    assert {shape[0] for shape in shapes if shape[1] == 1} == ({rows * beams} if strategy == "beam" else {beams})
    assert len(shapes) > len(prompt_passes)


# -------------------------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("strategy", ["top_k", "nucleus_0.99"])
def test_sampling_seed_is_reproducible(model, strategy):
    emb, mask = _inputs()
    kw = dict(max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=EOS)
    state = torch.get_rng_state()
    a = generate(model, emb, mask, strategy, seed=7, **kw)
    b = generate(model, emb, mask, strategy, seed=7, **kw)
    assert a == b
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG stream is left alone
    runs = {str(generate(model, emb, mask, {"do_sample": True, "num_beams": 1, "top_k": 0, "temperature": 5.0},
                         seed=s, **kw)) for s in range(3)}
    assert len(runs) > 1  # seeds matter (hot pure sampling on a random model)


def test_beam_sample_with_many_stop_ids_still_samples(gpt2):
    """transformers' beam-sample draws (1 + number of EOS ids) x beams candidates a step. A PECRS
    reply ends at ~20 ids (tokens.reply_stop_ids): passed as they are, 84 draws from the 4 x 50
    top-k pool always held the best continuations, and "top_k" decoded as beam search whatever the
    seed (every reply of the shipped model on 191 dev turns). The stop ids now count as one EOS."""
    emb, mask = _inputs()
    stops = [EOS] + list(range(200, 239))     # 40 ids that end a reply
    kw = dict(max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=stops)
    beam = generate(gpt2, emb, mask, "beam", **kw)
    sampled = [generate(gpt2, emb, mask, "top_k", seed=s, **kw) for s in range(6)]
    assert len({str(out) for out in sampled}) > 1 and beam not in sampled
    assert not any(set(row) & set(stops) for out in sampled for row in out)   # still cut at the first
    full = generate(gpt2, emb, mask, {**PRESETS["top_k_50"], "min_new_tokens": NEW}, seed=0, **kw)
    assert all(len(row) == NEW for row in full)          # min_new_tokens still holds off every stop id


def test_stop_ids_as_one_eos_keep_the_probability_of_ending():
    from pecrs.decoding.generation import StopsAsOneEos

    scores = torch.randn(3, 10)
    out = StopsAsOneEos([2, 5, 9])(torch.zeros(3, 1, dtype=torch.long), scores.clone())
    before, after = scores.softmax(-1), out.softmax(-1)
    assert torch.allclose(after[:, 2], before[:, [2, 5, 9]].sum(-1))
    assert bool((after[:, [5, 9]] == 0).all())
    keep = [0, 1, 3, 4, 6, 7, 8]
    assert torch.allclose(after[:, keep], before[:, keep])
    scores[0, 2] = float("-inf")             # EOS banned before it (min_new_tokens): no ending at all
    out = StopsAsOneEos([2, 5, 9])(torch.zeros(3, 1, dtype=torch.long), scores.clone())
    assert bool((out[0, [2, 5, 9]] == float("-inf")).all()) and bool(torch.isfinite(out[1:, 2]).all())


def test_only_beam_sampling_merges_the_stop_ids(gpt2, monkeypatch):
    """Greedy and beam search keep every stop id as its own end (their replies, and the shipped
    model's measured test figures, are unchanged)."""
    seen = {}
    original = gpt2.generate

    def spy(**kwargs):
        seen["eos"] = kwargs["eos_token_id"]
        seen["processors"] = [type(p).__name__ for p in kwargs.get("logits_processor") or []]
        return original(**kwargs)

    monkeypatch.setattr(gpt2, "generate", spy)
    emb, mask = _inputs()
    stops = [EOS, 200, 201]
    for strategy, merged in (("greedy", False), ("beam", False), ("top_k", True), ("nucleus", True),
                             ({"do_sample": True, "num_beams": 1, "top_k": 50}, False)):
        generate(gpt2, emb, mask, strategy, max_new_tokens=2, pad_token_id=PAD, eos_token_id=stops, seed=0)
        assert (seen["eos"], "StopsAsOneEos" in seen["processors"]) == (([EOS], True) if merged else (stops, False))


# ---------------------------------------------------------------------------------- diverse beam search

def test_hamming_penalty_by_hand():
    scores = torch.zeros(4, 5)  # 2 rows x 2 beams of the current group, vocab 5
    prev = torch.tensor([[1, 1, 3], [4, -1, 0]])  # earlier groups' choices at this step (-1: empty slot)
    out = hamming_penalty(scores, prev, 0.5)
    row0 = [0.0, -1.0, 0.0, -0.5, 0.0]
    row1 = [-0.5, 0.0, 0.0, 0.0, -0.5]
    assert out.tolist() == [row0, row0, row1, row1]
    assert scores.abs().sum() == 0  # not in place


def test_hamming_processor_uses_the_current_step():
    rec = StepChoiceRecorder(batch_size=1, group_size=2, eos_token_id=EOS)
    rec.steps = [torch.tensor([[3, 4]]), torch.tensor([[4, 4]])]
    proc = HammingDiversityLogitsProcessor(1.0, [rec])
    scores = torch.zeros(2, 6)
    step0 = proc(torch.zeros(2, 0, dtype=torch.long), scores)   # prompt given as embeddings: empty ids
    step1 = proc(torch.zeros(2, 1, dtype=torch.long), scores)
    step2 = proc(torch.zeros(2, 2, dtype=torch.long), scores)   # past the earlier group's end: no penalty
    assert step0[0].tolist() == [0, 0, 0, -1, -1, 0]
    assert step1[1].tolist() == [0, 0, 0, 0, -2, 0]
    assert torch.equal(step2, scores)


def test_recorder_keeps_best_non_eos_candidates():
    rec = StepChoiceRecorder(batch_size=2, group_size=2, eos_token_id=[EOS])
    cand = torch.tensor([[9, 2], [9, 5], [9, 6], [9, 7], [9, 8], [9, 8], [9, 2], [9, 2]])  # 2 rows x K=4
    rec(cand, None)
    assert rec.steps[0].tolist() == [[-1, 5, 6, -1], [8, 8, -1, -1]]
    live = torch.tensor([[1, 4], [1, 5], [1, 6], [1, 7]])  # greedy / 4.x: exactly the live beams
    rec(live, None)
    assert rec.steps[1].tolist() == [[4, 5], [6, 7]]


class _Spy(LogitsProcessor):
    def __init__(self):
        self.calls = []

    def __call__(self, input_ids, scores):
        self.calls.append(input_ids.clone())
        return scores


def test_recorder_matches_beam_search_live_beams(model):
    """Choices recorded at step t == last column of the live beams that beam search feeds at step t+1
    (off-by-one and beam reordering), with an EOS that competes from the first step."""
    emb, mask = _inputs()
    eos = generate(model, emb, mask, "greedy", max_new_tokens=1, pad_token_id=PAD, eos_token_id=None)[0][0]
    B, G = emb.shape[0], 3
    spy, rec = _Spy(), StepChoiceRecorder(B, G, eos)
    model.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=NEW, num_beams=G, do_sample=False,
                   pad_token_id=PAD, eos_token_id=eos, logits_processor=LogitsProcessorList([spy]),
                   stopping_criteria=StoppingCriteriaList([rec]))
    assert len(spy.calls) == len(rec.steps) and len(spy.calls) >= 2
    for t in range(len(spy.calls) - 1):
        live = spy.calls[t + 1][:, -1].view(B, G)
        for b in range(B):
            assert sorted(live[b].tolist()) == sorted(x for x in rec.steps[t][b].tolist() if x >= 0)


def test_diverse_penalty_zero_is_beam_search(model):
    emb, mask = _inputs()
    kw = dict(max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=EOS)
    beam2 = generate(model, emb, mask, {"num_beams": 2}, **kw)
    per_row = generate(model, emb, mask, {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.0}, **kw)
    batched = diverse_beam_search(model, emb, mask, num_beams=4, num_beam_groups=2, diversity_penalty=0.0,
                                  per_row=False, **kw)
    assert per_row == beam2 and batched == beam2
    greedy = generate(model, emb, mask, "greedy", **kw)
    assert diverse_beam_search(model, emb, mask, num_beams=4, num_beam_groups=4, diversity_penalty=0.0, **kw) == greedy


@pytest.mark.parametrize("groups", [2, 4])
def test_large_penalty_makes_groups_start_differently(model, groups):
    emb, mask = _inputs()
    res = diverse_beam_groups(model, emb, mask, num_beams=4, num_beam_groups=groups, diversity_penalty=1e4,
                              max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=VOCAB - 1)
    for row in res:
        firsts = [ids[0] for ids, _ in row]
        assert len(set(firsts)) == groups


def test_diverse_returns_best_scoring_group(model):
    emb, mask = _inputs()
    kw = dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5, max_new_tokens=NEW, pad_token_id=PAD,
              eos_token_id=EOS)
    res = diverse_beam_groups(model, emb, mask, **kw)
    best = diverse_beam_search(model, emb, mask, **kw)
    for row, ids in zip(res, best):
        top = max(range(len(row)), key=lambda g: (row[g][1], -g))
        assert ids == row[top][0]
    _clean(best, len(LENGTHS))


def _reference_diverse_beam_search(model, emb, groups, group_size, penalty, steps):
    """Joint Vijayakumar et al. / transformers 4.x group beam search, written out plainly (one prompt,
    no EOS, no KV cache): at each step the groups choose in order, each penalised by the tokens the
    earlier groups chose at that step. Returns each group's best (tokens, score / length)."""
    wte = model.get_input_embeddings()
    seqs = [torch.zeros(group_size, 0, dtype=torch.long) for _ in range(groups)]
    scores = [torch.tensor([0.0] + [-1e9] * (group_size - 1)) for _ in range(groups)]
    for _ in range(steps):
        chosen = []
        for g in range(groups):
            x = torch.cat([emb.expand(group_size, -1, -1), wte(seqs[g])], dim=1)
            logp = torch.log_softmax(model(inputs_embeds=x).logits[:, -1].float(), dim=-1)
            if chosen:
                logp = logp - penalty * torch.bincount(torch.cat(chosen), minlength=VOCAB).float()
            top, idx = (scores[g][:, None] + logp).view(-1).topk(group_size)
            beam, tok = idx // VOCAB, idx % VOCAB
            seqs[g] = torch.cat([seqs[g][beam], tok[:, None]], dim=1)
            scores[g] = top
            chosen.append(tok)
    return [(seqs[g][0].tolist(), scores[g][0].item() / steps) for g in range(groups)]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("groups,group_size", [(2, 2), (3, 2), (4, 1)])
def test_diverse_matches_joint_reference(arch, groups, group_size):
    """Running the groups one after another == the joint algorithm (tokens and penalised scores)."""
    model = {"gpt2": _gpt2, "llama": _llama}[arch](eos=None)
    emb, mask = _inputs([5, 3])
    ours = diverse_beam_groups(model, emb, mask, num_beams=groups * group_size, num_beam_groups=groups,
                               diversity_penalty=1.0, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=None)
    for i, (row, n) in enumerate(zip(ours, [5, 3])):
        ref = _reference_diverse_beam_search(model, emb[i:i + 1, -n:], groups, group_size, 1.0, NEW)
        assert [ids for ids, _ in row] == strip_special([ids for ids, _ in ref], PAD, None)
        assert [score for _, score in row] == pytest.approx([score for _, score in ref], abs=1e-4)


# peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` in get_peft_model
# (pecrs.backbone.lora silences it the same way for users).
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_wrapped_model(gpt2):
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM",
                          fan_in_fan_out=True)
    wrapped = peft.get_peft_model(_gpt2(), cfg).eval()  # LoRA B = 0: same function as the base
    emb, mask = _inputs()
    kw = dict(max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=EOS)
    for strategy in ("greedy", "beam", "diverse_beam"):
        assert generate(wrapped, emb, mask, strategy, **kw) == generate(gpt2, emb, mask, strategy, **kw)


def test_module_exports():
    for name in decoding.__all__:
        assert hasattr(decoding, name)


def test_token_budget_by_hand():
    from pecrs.decoding.generation import TokenBudget

    generated = torch.tensor([[5, 7, 7], [5, 6, 8], [7, 9, 9]])
    scores = torch.zeros(3, 10)
    out = TokenBudget(7, 2)(generated, scores.clone())
    assert out[0, 7] == float("-inf") and out[1, 7] == 0 and out[2, 7] == 0   # only row 0 spent its two
    assert torch.equal(out[:, :7], scores[:, :7]) and torch.equal(out[:, 8:], scores[:, 8:])


def _favouring(model, token):
    """The model, its LM head biased so that every step's best token is `token` (a barely trained
    PECRS repeating "[ITEM] [ITEM] ...")."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        if head.bias is None:
            head.bias = torch.nn.Parameter(torch.zeros(VOCAB))
        head.bias.zero_()
        head.bias[token] = 1e4
    return model


@pytest.mark.parametrize("strategy", ["greedy", "top_k", "diverse_beam"])
def test_token_budget_caps_a_repeated_token(strategy):
    model = _favouring(_llama(), 7)
    emb, mask = _inputs()
    plain = generate(model, emb, mask, strategy, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=EOS, seed=0)
    assert all(row.count(7) == NEW for row in plain)
    capped = generate(model, emb, mask, strategy, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=EOS, seed=0,
                      token_budget={7: 1})
    assert all(row.count(7) == 1 and row[0] == 7 for row in capped)


# ------------------------------------------------------------------------------- no repeated n-grams

def test_without_repeats_adds_the_ngram_rule_to_any_strategy():
    assert without_repeats("top_k", 0) == "top_k"                   # off: the paper's preset untouched
    assert without_repeats("top_k", 3) == {**PRESETS["top_k_50"], "no_repeat_ngram_size": 3}
    assert without_repeats({"num_beams": 2, "no_repeat_ngram_size": 5}, 3)["no_repeat_ngram_size"] == 5
    with pytest.raises(ValueError, match="unknown decoding strategy"):
        without_repeats("no-such-preset", 3)


def _repeated_ngram(row: list[int], n: int) -> bool:
    grams = [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("strategy", ["greedy", "top_k", "diverse_beam"])
def test_no_repeat_ngram_stops_a_loop(strategy):
    """A model that favours two tokens loops "7 9 7 9 ..." (a briefly trained PECRS repeating a
    phrase); with no_repeat_ngram 2 no bigram occurs twice in any row, whatever the strategy."""
    model = _favouring(_llama(), 7)
    with torch.no_grad():
        model.get_output_embeddings().bias[9] = 1e4 - 1
    emb, mask = _inputs()
    kw = dict(max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=EOS, seed=0, token_budget={7: NEW // 2})
    plain = generate(model, emb, mask, strategy, **kw)
    assert all(_repeated_ngram(row, 2) for row in plain)
    guarded = generate(model, emb, mask, without_repeats(strategy, 2), **kw)
    assert not any(_repeated_ngram(row, 2) for row in guarded)
    assert all(len(row) == NEW for row in guarded)      # still a full reply: other tokens take the slots
