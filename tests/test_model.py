"""Correctness of the PECRS model on tiny random GPT-2 and Llama backbones."""
import math

import pytest
import torch

from pecrs.catalog import ItemStore
from pecrs.step import sample_negatives, vector_slots
from pecrs.config import RunConfig
from pecrs.data import Dialogue, Item, Turn
from pecrs.heads import angular_distance
from pecrs.pretrained import build_model, load_pretrained, save_pretrained
from pecrs.samples import make_samples
from pecrs.testing import sharpen_attention
from pecrs.tokens import DialogueEncoder, collate

BACKBONES = ["tiny-gpt2", "tiny-llama"]


def tiny_config(backbone: str) -> RunConfig:
    cfg = RunConfig()
    cfg.model.backbone = backbone
    cfg.model.item_max_tokens = 16
    cfg.model.lora_dropout = 0.0
    return cfg


def toy_catalog(n=12):
    genres = ["Action", "Comedy", "Drama", "Horror"]
    return [Item(id=str(i), title=f"Movie {i}", year=2000 + i, genres=(genres[i % 4],),
                 plot=f"plot number {i}") for i in range(n)]


def toy_dialogues(n_items=12, n=24):
    out = []
    for d in range(n):
        k = d % n_items
        out.append(Dialogue(id=f"d{d}", turns=(
            Turn("recommender", "Hi, what do you like?"),
            Turn("seeker", "I want something like [ITEM] please", (str((k + 1) % n_items),)),
            Turn("recommender", "Try [ITEM] then", (str(k),)),
            Turn("seeker", "thanks"),
            Turn("recommender", "Enjoy!"),
        )))
    return out


@pytest.fixture(scope="module", params=BACKBONES)
def setup(request):
    return _setup(request.param)


def _setup(backbone: str):
    cfg = tiny_config(backbone)
    model = build_model(cfg, seed=0)
    # Random heads and a random LoRA so no score is trivially constant.
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.eval()
    store = ItemStore(toy_catalog(), model.tokenizer, cfg.model.item_fields, cfg.model.item_max_tokens)
    store.cache_base_states(model)
    encoder = DialogueEncoder(model.tokenizer, store.index, 64, 16)
    samples = make_samples(toy_dialogues())
    return cfg, model, store, encoder, samples


def batch_item_vectors(model, store, *index_tensors):
    """The vectors of every item the index tensors name, and the catalog-index -> row map."""
    items, row = vector_slots(len(store), *index_tensors)
    return store.vectors(model, items), row


def _batch(model, encoder, samples):
    return collate(encoder.encode_all(samples), model.tokenizer.pad_token_id, model.rec_end_id)


def test_angular_distance_hand_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]])
    expected = torch.tensor([0.0, math.sqrt(2), 2.0, math.sqrt(2 - math.sqrt(2))])
    assert torch.allclose(angular_distance(a, b), expected, atol=1e-5)


def test_angular_distance_of_a_vector_to_itself_is_finite_with_its_gradient():
    """cos(a, 3a) rounds to slightly above 1 in float32: the distance is clamped, so neither it
    nor its gradient is NaN (a positive that is its own query must not poison a step)."""
    a = torch.randn(64, 16, requires_grad=True)
    d = angular_distance(a, 3 * a.detach())
    assert torch.isfinite(d).all() and d.max() < 1e-3
    d.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_negatives_never_a_batch_positive():
    g = torch.Generator().manual_seed(0)
    positives = torch.tensor([3, 7, 7, 11])
    for _ in range(50):
        shared = sample_negatives(20, positives, 15, generator=g)
        per_row = sample_negatives(20, positives, 10, rows=4, generator=g)
        assert not set(shared.tolist()) & {3, 7, 11}
        assert len(set(shared.tolist())) == 15
        assert not set(per_row.flatten().tolist()) & {3, 7, 11}


def _rerank(model, store, batch, candidates):
    vectors = store.all_vectors(model)
    _, cache = model.context_pass(batch.context_ids, batch.context_items, batch.context_len, vectors)
    return model.rerank_with_cache(cache, batch.context_len, batch.context_ids.shape[1], vectors[candidates],
                                   chunk_size=3)


@torch.no_grad()
def test_rerank_candidates_independent_and_permutation_equivariant(setup):
    cfg, model, store, encoder, samples = setup
    batch = _batch(model, encoder, samples[:2])
    cands = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0]])
    base = _rerank(model, store, batch, cands)
    changed = cands.clone()
    changed[:, 2] = 9
    other = _rerank(model, store, batch, changed)
    keep = [0, 1, 3, 4, 5, 6]
    assert torch.allclose(base[:, keep], other[:, keep], atol=1e-5)
    assert not torch.allclose(base[:, 2], other[:, 2], atol=1e-5)
    perm = torch.tensor([4, 0, 6, 2, 1, 5, 3])
    permuted = _rerank(model, store, batch, cands[:, perm])
    assert torch.allclose(permuted, base[:, perm], atol=1e-5)
    # Chunking does not change scores.
    vectors = store.all_vectors(model)
    _, cache = model.context_pass(batch.context_ids, batch.context_items, batch.context_len, vectors)
    whole = model.rerank_with_cache(cache, batch.context_len, batch.context_ids.shape[1], vectors[cands], 100)
    assert torch.allclose(whole, base, atol=1e-5)


@torch.no_grad()
def test_training_pass_matches_inference_and_isolates_segments(setup):
    """The one-pass training layout scores candidates as inference does, and the generation
    segment never sees the candidates."""
    cfg, model, store, encoder, samples = setup
    rows = [s for s in samples if s.target is not None][:2] + [s for s in samples if s.target is None][:1]
    batch = _batch(model, encoder, rows)
    negs = torch.tensor([[1, 2, 5, 8]] * 3)
    vectors, row = batch_item_vectors(model, store, batch.target, negs, batch.context_items, batch.gen_items)
    g = torch.Generator().manual_seed(0)
    losses = model.training_losses(batch, vectors, row, negs, negs, place=torch.randint(0, 5, (3,), generator=g))
    # Same loss without candidates for generation: candidates are invisible to it.
    no_cands = model.training_losses(batch, vectors, row, negs[:, :0], negs[:, :0], score_items=False)
    with pytest.raises(ValueError, match="without `place`"):   # drawn on the host (plan_step), never here
        model.training_losses(batch, vectors, row, negs, negs)
    assert torch.allclose(losses["gen"], no_cands["gen"], atol=1e-5)
    # Rerank loss from the training pass equals the one recomputed from inference scores.
    g = torch.Generator().manual_seed(0)
    place = torch.randint(0, 5, (3,), generator=g)
    cands = []
    for i in range(3):
        c = negs[i].tolist()
        c.insert(int(place[i]), int(batch.target[i].clamp_min(0)))
        cands.append(c)
    scores = _rerank(model, store, batch, torch.tensor(cands))
    ce = torch.nn.functional.cross_entropy(scores, place, reduction="none")
    expected = (ce * batch.has_target).sum() / 3
    assert torch.allclose(losses["rerank"], expected, atol=1e-4)


@pytest.fixture(scope="module", params=BACKBONES)
def sharp(request):
    """The `setup` model with queries and keys sharpened (x8) so that attention is far from
    uniform: a token that attends where it must not moves the scores visibly, where the untrained
    heads' scores (spread ~1e-2) would hide it below a loss-level tolerance."""
    cfg, model, store, encoder, samples = _setup(request.param)
    store.cache_base_states(sharpen_attention(model))
    return cfg, model, store, encoder, samples


def _captured_training_logits(model, batch, vectors, row, negs, place, **options):
    """The recall and re-rank logits training_losses computes, and its losses."""
    seen = {}
    recall, rerank = model.recall_scores, model.rerank_scores
    model.recall_scores = lambda *a: seen.setdefault("recall", recall(*a))
    model.rerank_scores = lambda *a: seen.setdefault("rerank", rerank(*a))
    try:
        losses = model.training_losses(batch, vectors, row, negs, negs, place=place, **options)
    finally:
        del model.recall_scores, model.rerank_scores
    return seen, losses


@torch.no_grad()
def test_training_scores_are_the_inference_scores(sharp):
    """The one-pass training layout (§3.6) computes, for each row with a target, the recall logits
    of Eq. 3 from the state at [REC] and the re-rank logits of Eq. 5 of each candidate seeing only
    the context, at the position after [REC]: the very scores inference computes with a cached
    context (compared raw, not through a loss). The positive sits at `place`, the negatives in
    order around it; the losses are the cross-entropies of those scores (recall's positive in
    column 0), rerank_temperature dividing the re-rank logits."""
    cfg, model, store, encoder, samples = sharp
    rows = [s for s in samples if s.target is not None][:2] + [s for s in samples if s.target is None][:1]
    batch = _batch(model, encoder, rows)
    negs = torch.tensor([[1, 2, 5, 8], [0, 4, 6, 9], [3, 7, 10, 11]])
    negs = torch.where(negs == batch.target.unsqueeze(1), 11 - negs, negs)   # no negative is its row's positive
    place = torch.tensor([0, 2, 1])                          # first, middle; row 2 has no target
    vectors, row = batch_item_vectors(model, store, batch.target, negs, batch.context_items, batch.gen_items)
    seen, losses = _captured_training_logits(model, batch, vectors, row, negs, place)
    target = batch.target.clamp_min(0)
    cands = [negs[i].tolist()[:int(place[i])] + [int(target[i])] + negs[i].tolist()[int(place[i]):] for i in range(3)]
    has = batch.has_target
    all_vectors = store.all_vectors(model)
    expected_rerank = _rerank(model, store, batch, torch.tensor(cands))
    assert torch.allclose(seen["rerank"][has], expected_rerank[has], atol=1e-6, rtol=0)
    query, _ = model.context_pass(batch.context_ids, batch.context_items, batch.context_len, all_vectors,
                                  keep_cache=False)
    keys = all_vectors[torch.cat([target.unsqueeze(1), negs], 1)]
    expected_recall = model.recall_scores(query, keys)
    assert torch.allclose(seen["recall"][has], expected_recall[has], atol=1e-5, rtol=0)
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(losses["recall"], (ce(expected_recall, torch.zeros(3, dtype=torch.long), reduction="none")
                                             * has).sum() / 3, atol=1e-5)
    assert torch.allclose(losses["rerank"], (ce(expected_rerank, place, reduction="none") * has).sum() / 3, atol=1e-5)
    _, cooler = _captured_training_logits(model, batch, vectors, row, negs, place, rerank_temperature=0.5)
    assert torch.allclose(cooler["rerank"], (ce(expected_rerank / 0.5, place, reduction="none") * has).sum() / 3,
                          atol=1e-5)
    assert not torch.allclose(cooler["rerank"], losses["rerank"], atol=1e-4)


@torch.no_grad()
def test_recall_query_is_the_state_at_rec(sharp):
    """Eq. 3's query is f of the LM's output at [REC], the last token of each context: for a
    padded batch, context_pass gives what a plain causal forward of each context alone gives."""
    cfg, model, store, encoder, samples = sharp
    rows = [samples[0], max(samples, key=lambda s: len(s.context))]
    batch = _batch(model, encoder, rows)
    assert batch.context_len[0] < batch.context_len[1]       # row 0 is padded
    vectors = store.all_vectors(model)
    query, _ = model.context_pass(batch.context_ids, batch.context_items, batch.context_len, vectors, keep_cache=False)
    for i in range(2):
        n = int(batch.context_len[i])
        assert int(batch.context_ids[i, n - 1]) == encoder.rec
        emb = model.embed(batch.context_ids[i:i + 1, :n], batch.context_items[i:i + 1, :n], vectors)
        state = model.decoder(inputs_embeds=emb).last_hidden_state[0, -1]
        assert torch.allclose(query[i], model.f(state), atol=1e-5, rtol=0)
        before = model.decoder(inputs_embeds=emb[:, :-1]).last_hidden_state[0, -1]
        assert not torch.allclose(query[i], model.f(before), atol=1e-3)


def test_rerank_scores_are_g_of_f(setup):
    """Eq. 5: candidates' LM states go through the recall head f shared with Eq. 3, then g."""
    cfg, model, store, encoder, samples = setup
    h = torch.randn(2, 3, model.f[0].in_features)
    with torch.no_grad():
        assert torch.allclose(model.rerank_scores(h), model.g(model.f(h)).squeeze(-1))


@torch.no_grad()
def test_label_smoothing_is_torchs_and_perplexity_stays_unsmoothed(setup):
    """The generation loss with label smoothing e equals F.cross_entropy(label_smoothing=e) on the
    same logits, and the summed NLL reported for perplexity does not change with e."""
    cfg, model, store, encoder, samples = setup
    batch = _batch(model, encoder, samples[:3])
    negs = torch.tensor([[1, 2, 5, 8]] * 3)
    vectors, row = batch_item_vectors(model, store, batch.target, negs, batch.context_items, batch.gen_items)
    plain = model.training_losses(batch, vectors, row, negs[:, :0], negs[:, :0], score_items=False)
    smoothed = model.training_losses(batch, vectors, row, negs[:, :0], negs[:, :0], score_items=False,
                                     label_smoothing=0.1)
    # The same logits through torch's label smoothing: run the decoder as training_losses does.
    captured = {}
    head = model.causal_lm.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, i, out: captured.setdefault("logits", out.float()))
    model.training_losses(batch, vectors, row, negs[:, :0], negs[:, :0], score_items=False)
    hook.remove()
    labels = batch.gen_labels
    ce = torch.nn.functional.cross_entropy(captured["logits"].transpose(1, 2), labels, reduction="none",
                                           ignore_index=-100, label_smoothing=0.1)
    expected = (ce.sum(1) / (labels != -100).sum(1).clamp_min(1)).mean()
    assert torch.allclose(smoothed["gen"], expected, atol=1e-5)
    assert not torch.allclose(smoothed["gen"], plain["gen"])
    assert torch.allclose(smoothed["gen_nll_sum"], plain["gen_nll_sum"])


@torch.no_grad()
def test_generation_without_target_ignores_rec_token(setup):
    cfg, model, store, encoder, samples = setup
    no_target = [s for s in samples if s.target is None][:1]
    batch = _batch(model, encoder, no_target)
    vectors, row = batch_item_vectors(model, store, batch.context_items)
    empty = torch.zeros(1, 0, dtype=torch.long)
    loss = model.training_losses(batch, vectors, row, empty, empty, score_items=False)["gen"]
    # Plain causal LM on context-without-[REC] + generation segment.
    n = int(batch.context_len[0])
    ids = torch.cat([batch.context_ids[0, : n - 1], batch.gen_ids[0, : int(batch.gen_len[0])]]).unsqueeze(0)
    items = torch.cat([batch.context_items[0, : n - 1], batch.gen_items[0, : int(batch.gen_len[0])]]).unsqueeze(0)
    items = torch.where(items >= 0, row[items.clamp_min(0)], items)
    emb = model.embed(ids, items, vectors)
    logits = model.causal_lm(inputs_embeds=emb).logits[0, n - 1:]
    labels = batch.gen_labels[0, : int(batch.gen_len[0])]
    expected = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)
    assert torch.allclose(loss, expected, atol=1e-4)


def test_save_load_reproduces_scores(setup, tmp_path):
    cfg, model, store, encoder, samples = setup
    batch = _batch(model, encoder, samples[:3])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    vectors = store.all_vectors(model)
    top, scores = model.recommend(batch.context_ids, batch.context_items, batch.context_len, vectors, m_inference=8)
    save_pretrained(model, cfg, tmp_path / "ckpt")
    loaded, _ = load_pretrained(tmp_path / "ckpt")
    loaded.eval()
    store2 = ItemStore(toy_catalog(), loaded.tokenizer, cfg.model.item_fields, cfg.model.item_max_tokens)
    store2.cache_base_states(loaded)
    vectors2 = store2.all_vectors(loaded)
    top2, scores2 = loaded.recommend(batch.context_ids, batch.context_items, batch.context_len, vectors2, m_inference=8)
    assert torch.equal(top, top2)
    assert torch.allclose(scores, scores2, atol=1e-6)


def test_item_vectors_do_not_depend_on_the_tokenizers_padding_side(setup):
    """Eq. 1's w_l weighs the l-th token of an item and "w/o item pooling" reads the last one: the
    catalog is padded on the right even for a tokenizer that pads on the left (many chat LMs)."""
    cfg, model, _, _, _ = setup
    tokenizer = model.tokenizer
    short = [Item(id="1", title="Up"), Item(id="2", title="Alien", genres=["horror"]), Item(id="3", title="Heat 2")]
    store = ItemStore(short, tokenizer, cfg.model.item_fields, cfg.model.item_max_tokens)
    assert not bool(store.attention_mask.all())       # some padding, so its side matters
    side = tokenizer.padding_side
    try:
        tokenizer.padding_side = "left"
        left = ItemStore(short, tokenizer, cfg.model.item_fields, cfg.model.item_max_tokens)
    finally:
        tokenizer.padding_side = side
    assert torch.equal(left.input_ids, store.input_ids) and bool(left.attention_mask[:, 0].all())
    with torch.no_grad():
        vectors = left.all_vectors(model)
        model.item_encoder.pooling = False        # Table 5 "w/o item pooling": the last item token
        try:
            last = (left.all_vectors(model), store.all_vectors(model))
        finally:
            model.item_encoder.pooling = True
    assert torch.allclose(vectors, store.all_vectors(model)) and torch.allclose(*last)


@pytest.mark.parametrize("adapted", [False, True])
def test_item_states_in_length_sorted_batches_equal_one_item_at_a_time(setup, adapted):
    """`item_token_states` runs items shortest first and cuts each batch to its longest item:
    every item's real tokens must have the states of the item run alone, in its own row."""
    cfg, model, _, _, _ = setup
    items = [Item(id=str(i), title="Movie " + "long " * (7 * i % 11), genres=("Drama",) * (i % 2))
             for i in range(9)]
    store = ItemStore(items, model.tokenizer, cfg.model.item_fields, max_tokens=96)
    ids, mask = store.input_ids, store.attention_mask
    assert len(set(mask.sum(1).tolist())) > 4            # items of several lengths, so batches differ
    batched = model.item_token_states(ids, mask, adapted=adapted, batch_size=5)
    for i in range(len(store)):
        n = int(mask[i].sum())
        alone = model.item_token_states(ids[i:i + 1, :n], mask[i:i + 1, :n], adapted=adapted, batch_size=1)
        assert torch.allclose(batched[i, :n], alone[0], atol=1e-5)
    with pytest.raises(ValueError, match="padded on the right"):
        model.item_token_states(ids.flip(1), mask.flip(1), adapted=adapted)


def test_load_rejects_other_backbone(setup, tmp_path):
    cfg, model, *_ = setup
    save_pretrained(model, cfg, tmp_path / "ckpt")
    other = "tiny-llama" if cfg.model.backbone == "tiny-gpt2" else "tiny-gpt2"
    with pytest.raises(ValueError, match="backbone"):
        load_pretrained(tmp_path / "ckpt", backbone=other)


def test_only_adapters_heads_and_special_tokens_train(setup):
    cfg, model, *_ = setup
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(("lora_" in n) or ("trainable_tokens" in n) or not n.startswith("lm.") for n in names)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen > 0


@torch.no_grad()
def test_candidate_attention_equals_stock_masked_attention(sharp):
    """pecrs.attention's two-part softmax (context keys + own key) gives the stock attention's
    result under the block mask, for GPT-2 and for grouped-query Llama (attention sharpened: an
    untrained model's near-uniform attention hid a candidate reading another's key under 1e-5)."""
    from pecrs.attention import use_candidate_attention, use_stock_attention

    cfg, model, store, encoder, samples = sharp
    config = model.causal_lm.config
    assert config._attn_implementation == "pecrs_candidates_sdpa"
    batch = _batch(model, encoder, samples[:3])   # rows of different context lengths
    cands = torch.randint(0, len(store), (3, 9), generator=torch.Generator().manual_seed(0))
    fast = _rerank(model, store, batch, cands)
    use_stock_attention(model.causal_lm)
    try:
        assert config._attn_implementation == "sdpa"
        stock = _rerank(model, store, batch, cands)
    finally:
        use_candidate_attention(model.causal_lm)
    assert config._attn_implementation == "pecrs_candidates_sdpa"
    assert torch.allclose(fast, stock, atol=1e-5)
    assert not torch.allclose(fast[:, 0], fast[:, 1])


@pytest.mark.parametrize("backbone", BACKBONES)
@torch.no_grad()
def test_candidate_attention_falls_back_to_eager_models_own_kernel(backbone):
    from pecrs.attention import use_stock_attention
    from pecrs.backbone import add_special_tokens, apply_lora, load_backbone
    from pecrs.model import PECRS

    lm, tokenizer = load_backbone(backbone, attn_implementation="eager")
    lm = apply_lora(lm, list(add_special_tokens(lm, tokenizer).values()))
    model = PECRS(lm, tokenizer, tiny_config(backbone).model).eval()
    assert model.causal_lm.config._attn_implementation == "pecrs_candidates_eager"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 200, (2, 20), generator=g)
    items, lengths = torch.full((2, 20), -1), torch.tensor([20, 12])
    vectors = torch.randn(50, model.hidden_size, generator=g)
    candidates = vectors[torch.randint(50, (2, 30), generator=g)]
    scores = []
    for _ in range(2):
        _, cache = model.context_pass(ids, items, lengths, vectors)
        scores.append(model.rerank_with_cache(cache, lengths, 20, candidates))
        use_stock_attention(model.causal_lm)
    assert model.causal_lm.config._attn_implementation == "eager"
    assert torch.allclose(scores[0], scores[1], atol=1e-5)


@torch.no_grad()
def test_merged_lora_ranks_as_unmerged_and_restores_the_weights(setup):
    from pecrs.evaluate import rank_samples

    cfg, model, store, encoder, samples = setup
    encoded = encoder.encode_all(samples[:6])
    vectors = store.all_vectors(model)
    before = {n: p.clone() for n, p in model.lm.named_parameters() if "base_layer" in n}
    plain = rank_samples(model, encoded, vectors, 8, 3, keep=5)
    b = _batch(model, encoder, samples[:6])
    queries, _ = model.context_pass(b.context_ids, b.context_items, b.context_len, vectors, keep_cache=False)
    with model.merged_lora():
        merged_weights = {n: p.clone() for n, p in model.lm.named_parameters() if "base_layer" in n}
        assert any(not torch.equal(before[n], merged_weights[n]) for n in before)  # LoRA really folded in
        merged = rank_samples(model, encoded, vectors, 8, 3, keep=5)
        merged_queries, _ = model.context_pass(b.context_ids, b.context_items, b.context_len, vectors, keep_cache=False)
    assert (plain == merged).all()
    assert torch.allclose(queries, merged_queries, atol=1e-5)
    for n, p in model.lm.named_parameters():
        if n in before:
            assert torch.equal(p, before[n])          # given back bit for bit, from the copies


def test_merged_lora_folds_and_restores_bfloat16_weights_exactly(setup):
    """Serving and evaluating in bfloat16 fold LoRA too: unfolding bfloat16 weights would not give
    them back, so the copies do."""
    from pecrs.precision import to_inference_dtype

    cfg, _, store, encoder, samples = setup
    model = build_model(cfg, seed=0).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    to_inference_dtype(model, torch.bfloat16)
    before = {n: p.clone() for n, p in model.lm.named_parameters() if n.endswith("base_layer.weight")}
    assert any(p.dtype == torch.bfloat16 for p in before.values())   # the attention projections
    b = _batch(model, encoder, samples[:4])
    vectors = store.all_vectors(model)
    plain, _ = model.context_pass(b.context_ids, b.context_items, b.context_len, vectors, keep_cache=False)
    with model.merged_lora():
        assert any(not torch.equal(before[n], p) for n, p in model.lm.named_parameters() if n in before)
        merged, _ = model.context_pass(b.context_ids, b.context_items, b.context_len, vectors, keep_cache=False)
    assert torch.nn.functional.cosine_similarity(plain, merged).min() > 0.99
    assert all(torch.equal(p, before[n]) for n, p in model.lm.named_parameters() if n in before)


@torch.no_grad()
def test_length_sorted_generation_equals_one_by_one(setup):
    import numpy as np

    from pecrs.evaluate import generate_responses

    cfg, model, store, encoder, samples = setup
    encoded = encoder.encode_all(samples[:5])
    assert len({len(e.context_ids) for e in encoded}) > 1
    vectors = store.all_vectors(model)
    recommended = np.arange(5)
    batched = generate_responses(model, encoded, recommended, vectors, 3, "greedy", max_new_tokens=6)
    single = [generate_responses(model, [e], recommended[i:i + 1], vectors, 1, "greedy", max_new_tokens=6)[0]
              for i, e in enumerate(encoded)]
    assert batched == single


@pytest.mark.parametrize("backbone", BACKBONES)
@torch.no_grad()
def test_rerank_candidates_never_see_context_padding(backbone):
    """A short context re-ranked in a batch with a longer one (so it is padded) scores its
    candidates exactly as alone. Queries and keys are sharpened so that attention is far from
    uniform: a candidate that attended to pad positions would change its score visibly."""
    cfg = tiny_config(backbone)
    model = sharpen_attention(build_model(cfg, seed=0).eval())
    store = ItemStore(toy_catalog(), model.tokenizer, cfg.model.item_fields, cfg.model.item_max_tokens)
    store.cache_base_states(model)
    encoder = DialogueEncoder(model.tokenizer, store.index, 64, 16)
    samples = make_samples(toy_dialogues())
    short, long_ = samples[0], max(samples, key=lambda s: len(s.context))
    batch = _batch(model, encoder, [short, long_])
    assert batch.context_len[0] < batch.context_len[1]          # row 0 is padded
    alone = _batch(model, encoder, [short])
    cands = torch.tensor([[0, 3, 5, 7, 9, 11]])
    padded = _rerank(model, store, batch, cands.expand(2, -1))[0]
    single = _rerank(model, store, alone, cands)[0]
    # Scores of the untrained heads are ~1e-2: compare at float32 rounding, against how much a
    # change of context moves them (~1e-3).
    other = _rerank(model, store, _batch(model, encoder, [long_]), cands)[0]
    assert (other - single).abs().max() > 1e-4
    assert torch.allclose(padded, single, atol=1e-6, rtol=0)


@torch.no_grad()
def test_perplexity_reads_the_catalog_vectors_ranking_reads(setup):
    """response_nll injects each sample's item from the evaluation's catalog vectors: the summed
    NLL and token count equal the per-sample generation losses computed from the batch's own
    vectors (the training path), in batches of any size; other vectors change the NLL."""
    from pecrs.evaluate import response_nll

    cfg, model, store, encoder, samples = setup
    encoded = encoder.encode_all(samples)
    assert any(e.target >= 0 for e in encoded)
    expected_nll, expected_tokens = 0.0, 0
    for e in encoded:
        b = collate([e], model.tokenizer.pad_token_id, model.rec_end_id)
        vectors, row = batch_item_vectors(model, store, b.target, b.context_items, b.gen_items)
        empty = torch.zeros(1, 0, dtype=torch.long)
        losses = model.training_losses(b, vectors, row, empty, empty, score_items=False)
        expected_nll += float(losses["gen_nll_sum"])
        expected_tokens += int(losses["gen_tokens"])
    catalog_vectors = store.all_vectors(model)
    for batch_size in (1, 4):
        nll, tokens = response_nll(model, encoded, catalog_vectors, batch_size)
        assert tokens == expected_tokens and nll == pytest.approx(expected_nll, rel=1e-5)
    other, _ = response_nll(model, encoded, 10 * torch.randn_like(catalog_vectors), 4)
    assert other != pytest.approx(expected_nll, rel=1e-5)
