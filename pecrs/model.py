"""The PECRS model (§3): one LoRA-adapted causal LM that encodes items, retrieves, re-ranks
and generates.

Reading order: the modules PECRS holds (the item encoder of Eq. 1, the heads f and g and the
angular distance of Eq. 3 live in pecrs.heads), the items and scores, then `training_losses`,
which lays one batch out as a single sequence per row,

    [ context ... [REC] | candidates v_1..v_C | (v_p [REC_END]) "Recommender:" response ]

and runs the LM once with a block attention mask: the context is causal, every candidate sees
the context and itself only (§3.3), and the generation segment sees the context and itself
(Eq. 6–7). The recall query is the state at [REC] (Eq. 3). Sharing the context between the
three losses is what keeps a PECRS step close to the cost of a plain LM step.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .attention import SELF_ONLY_KWARG, use_candidate_attention
from .backbone import additive_attention_mask, cache_kwarg_name, cancel_absolute_positions, crop_cache, output_cache
from .config import InferenceConfig, ModelConfig
from .data import ITEM, REC_END
from .heads import ItemEncoder, recall_logits, two_layer_mlp
from .retrieval import ExactIndex, search_excluding
from .tokens import IGNORE_INDEX, NO_ITEM, Batch, item_head, length_sorted_batches, reply_stop_ids, reply_text


class PECRS(nn.Module):
    def __init__(self, lm, tokenizer, config: ModelConfig):
        super().__init__()
        self.lm = lm              # a peft model around a Hugging Face causal LM
        self.tokenizer = tokenizer
        self.config = config
        d = self.causal_lm.config.hidden_size
        self.hidden_size = d
        self.item_encoder = ItemEncoder(d, config.item_max_tokens, config.item_pooling, config.item_head,
                                        config.item_standardize)
        self.f = two_layer_mlp(d, d)   # projection head shared by recall query and rerank (§3.3)
        self.g = two_layer_mlp(d, 1)   # rerank score
        self.rec_end_id = tokenizer.convert_tokens_to_ids(REC_END)
        self.backbone_fingerprint: str | None = None   # of the base weights (pretrained.from_backbone)
        use_candidate_attention(self.causal_lm)  # re-ranking skips the candidate x candidate block

    # ----- plumbing around the Hugging Face model -------------------------------------------
    @property
    def causal_lm(self):
        return self.lm.get_base_model()

    @property
    def decoder(self):
        causal = self.causal_lm
        return getattr(causal, causal.base_model_prefix)

    @property
    def device(self) -> torch.device:
        return self.f[0].weight.device

    def embed(self, ids: torch.Tensor, items: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """Token embeddings, with item slots (items >= 0) replaced by rows of item_vectors."""
        tokens = self.lm.get_input_embeddings()(ids)
        slots = (items >= 0).unsqueeze(-1)
        if item_vectors.shape[0] == 0:
            return tokens
        vectors = item_vectors[items.clamp_min(0)].to(tokens.dtype)
        return torch.where(slots, vectors, tokens)

    def run_decoder(self, inputs_embeds, allowed: torch.Tensor, position_ids, cache=None, use_cache=False,
                    **attention_kwargs):
        """Run the LM body with a boolean [B, Q, K] attention pattern (True = may attend).
        `attention_kwargs` reach the attention function (pecrs.attention)."""
        mask = additive_attention_mask(allowed, inputs_embeds.dtype)
        kwargs = {cache_kwarg_name(self.decoder): cache} if cache is not None else {}
        return self.decoder(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids,
                            use_cache=use_cache, **kwargs, **attention_kwargs)

    # ----- items ----------------------------------------------------------------------------
    @torch.no_grad()
    def item_token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          adapted: bool, batch_size: int = 64, dtype: torch.dtype | None = None,
                          progress: bool = False) -> torch.Tensor:
        """LM last-layer states of tokenised item texts. No gradient reaches the LM here (§3.3).

        Performance (docs/performance.md): item texts are padded to the catalog's longest (128
        tokens) but average ~65 (SmolLM2's tokens, INSPIRED), so with right padding the items run
        shortest first and each batch is cut to its own longest item (~1.7x less LM work).
        Causal attention makes the real tokens' states independent of trailing pads; positions
        past a batch's longest item come back as zeros, which pooling ignores like any padding
        (mask weight 0). `dtype` converts batch by batch (the cached mode keeps float16), so the
        float32 states of a whole catalog never exist at once.
        `progress`: a bar over the items (a real catalog on a CPU takes minutes)."""
        N, L = input_ids.shape
        lengths = attention_mask.sum(1).cpu()   # the one host read: batches and widths come from it
        if not torch.equal(attention_mask.bool().cpu(), torch.arange(L) < lengths.unsqueeze(1)):
            raise ValueError("item_token_states: item texts must be padded on the right (catalog.tokenize_items)")
        out = None
        bar = tqdm(total=N, desc="encoding items", unit="item", disable=not progress)
        for rows in map(torch.from_numpy, length_sorted_batches(lengths, batch_size)):
            width = max(int(lengths[rows].max()), 1)
            ids = input_ids[rows, :width].to(self.device)
            mask = attention_mask[rows, :width].to(self.device)
            if adapted:
                h = self.decoder(input_ids=ids, attention_mask=mask).last_hidden_state
            else:
                with self.lm.disable_adapter():
                    h = self.decoder(input_ids=ids, attention_mask=mask).last_hidden_state
            if out is None:
                out = h.new_zeros(N, L, h.shape[-1], dtype=dtype or h.dtype)
            out[rows.to(h.device), :width] = h.to(out.dtype)
            bar.update(len(rows))
        bar.close()
        return out if out is not None else torch.zeros(0, L, self.hidden_size, dtype=dtype or torch.float32)

    def item_vectors(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.item_encoder(states.to(self.device), mask.to(self.device))

    # ----- scores ---------------------------------------------------------------------------
    def recall_scores(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Eq. 3 logits at model.recall_temperature (pecrs.heads.recall_logits). queries [B, d]
        (already f-projected), keys [B, C, d] -> [B, C]."""
        return recall_logits(queries, keys, self.config.recall_temperature)

    def rerank_scores(self, candidate_states: torch.Tensor) -> torch.Tensor:
        """Eq. 5 scores r = g(f(LM states of the candidates))."""
        return self.g(self.f(candidate_states)).squeeze(-1)

    # ----- training -------------------------------------------------------------------------
    def training_losses(self, batch: Batch, vectors: torch.Tensor, vector_row: torch.Tensor,
                        recall_negatives: torch.Tensor, rerank_negatives: torch.Tensor,
                        score_items: bool = True, place: torch.Tensor | None = None, normalize: str = "batch",
                        rerank_temperature: float = 1.0, label_smoothing: float = 0.0,
                        ) -> dict[str, torch.Tensor]:
        """The three losses of Eq. 8 for one batch, in one LM forward pass.

        vectors [U, d]: item vectors of every item this batch touches; vector_row [N_catalog]
        maps a catalog index to its row in `vectors`. recall_negatives [B, Mr], rerank_negatives
        [B, M]: catalog indices (the same rows everywhere when negatives are shared, §3.6); M = 0
        (or score_items=False, perplexity evaluation) skips recall and rerank. place [B]: where
        the positive sits among the M+1 candidates (drawn on the host by `step.plan_step`;
        needed when there are candidates).

        Nothing here reads a device value on the host: whether candidates are laid out is decided
        by the shape of rerank_negatives, so a training step never waits for the GPU.
        normalize: "batch" divides recall and rerank by B, rows without a target adding 0 (Eq. 4–5
        as written); "targets" by the number of rows with a target (the authors' released code).
        rerank_temperature divides the rerank logits; label_smoothing applies to the generation
        loss only (the summed NLL returned for perplexity is never smoothed).
        """
        B, Lc = batch.context_ids.shape
        Lg = batch.gen_ids.shape[1]
        dev = batch.context_ids.device
        has_target = batch.has_target
        rows = torch.arange(B, device=dev)
        ctx_len, gen_len = batch.context_len, batch.gen_len

        # Item slots in the context and the v_p slot of the generation segment.
        ctx_items = torch.where(batch.context_items >= 0, vector_row[batch.context_items.clamp_min(0)], NO_ITEM)
        gen_items = torch.where(batch.gen_items >= 0, vector_row[batch.gen_items.clamp_min(0)], NO_ITEM)
        ctx_emb = self.embed(batch.context_ids, ctx_items, vectors)
        gen_emb = self.embed(batch.gen_ids, gen_items, vectors)

        # Candidates: the positive at a random place among the rerank negatives (§3.3).
        use_candidates = score_items and rerank_negatives.shape[1] > 0
        if use_candidates:
            M = rerank_negatives.shape[1]
            C = M + 1
            if place is None:
                raise ValueError("training_losses: rerank negatives given without `place` (step.plan_step draws it)")
            slot = torch.arange(C, device=dev).unsqueeze(0)
            is_pos = slot == place.unsqueeze(1)
            neg_slot = (slot - (slot > place.unsqueeze(1)).long()).clamp(max=M - 1)
            cand = torch.where(is_pos, batch.target.clamp_min(0).unsqueeze(1),
                               rerank_negatives.gather(1, neg_slot.clamp_min(0)))
            cand_emb = vectors[vector_row[cand]].to(ctx_emb.dtype)
        else:
            C = 0
            cand_emb = ctx_emb.new_zeros(B, 0, ctx_emb.shape[-1])

        # Position ids: context 0..; every candidate the position right after [REC]; the generation
        # segment continues after [REC] (with a target) or replaces [REC] (without one, Eq. 7).
        ar_c, ar_g = torch.arange(Lc, device=dev), torch.arange(Lg, device=dev)
        ctx_pos = ar_c.expand(B, Lc)
        cand_pos = ctx_len.unsqueeze(1).expand(B, C)
        gen_start = torch.where(has_target, ctx_len, ctx_len - 1)
        gen_pos = gen_start.unsqueeze(1) + ar_g
        if C:
            cand_emb = cancel_absolute_positions(self.causal_lm, cand_emb, cand_pos, torch.ones_like(cand_pos, dtype=torch.bool))
        embeds = torch.cat([ctx_emb, cand_emb, gen_emb], 1)
        positions = torch.cat([ctx_pos, cand_pos, gen_pos], 1)

        # Block attention pattern [B, T, T].
        T = Lc + C + Lg
        ar_t = torch.arange(Lc + C + Lg, device=dev)
        seg = (ar_t >= Lc).long() + (ar_t >= Lc + C).long()                     # 0 context, 1 candidates, 2 gen
        idx = torch.cat([ar_c, torch.arange(C, device=dev), ar_g])
        valid = torch.cat([ar_c < ctx_len.unsqueeze(1),
                           torch.ones(B, C, dtype=torch.bool, device=dev),
                           ar_g < gen_len.unsqueeze(1)], 1)                     # [B, T]
        q_seg, k_seg = seg.view(1, T, 1), seg.view(1, 1, T)
        q_idx, k_idx = idx.view(1, T, 1), idx.view(1, 1, T)
        same_pos = q_idx == k_idx
        causal = k_idx <= q_idx
        # The generation segment of a row without a target does not see that row's [REC].
        rec_hidden = (~has_target).view(B, 1, 1) & (k_seg == 0) & (k_idx == (ctx_len - 1).view(B, 1, 1))
        allowed = (((q_seg == 0) & (k_seg == 0) & causal)
                   | ((q_seg == 1) & ((k_seg == 0) | ((k_seg == 1) & same_pos)))
                   | ((q_seg == 2) & (((k_seg == 0) & ~rec_hidden) | ((k_seg == 2) & causal))))
        allowed = allowed & valid.unsqueeze(1)
        allowed = allowed | torch.eye(T, dtype=torch.bool, device=dev)  # padded queries see themselves
        h = self.run_decoder(embeds, allowed, positions).last_hidden_state

        losses = {}
        if normalize == "batch":
            n = B  # Eq. 4–5 average over all data points; rows without a target add 0 (§3.3)
        elif normalize == "targets":
            n = has_target.sum().clamp_min(1)
        else:
            raise ValueError(f"normalize must be 'batch' or 'targets', not {normalize!r}")
        if use_candidates:
            query = self.f(h[rows, ctx_len - 1])
            keys_idx = torch.cat([batch.target.clamp_min(0).unsqueeze(1), recall_negatives], 1)
            recall_logits = self.recall_scores(query, vectors[vector_row[keys_idx]].to(query.dtype))
            recall_ce = F.cross_entropy(recall_logits.float(), torch.zeros(B, dtype=torch.long, device=dev),
                                        reduction="none")
            losses["recall"] = (recall_ce * has_target).sum() / n
            rerank_logits = self.rerank_scores(h[:, Lc:Lc + C]) / rerank_temperature
            rerank_ce = F.cross_entropy(rerank_logits.float(), place, reduction="none")
            losses["rerank"] = (rerank_ce * has_target).sum() / n
        else:
            zero = h.sum() * 0
            losses["recall"] = losses["rerank"] = zero

        # Generation: the LM head on the generation segment only (Eq. 7, mean per response).
        logits = self.causal_lm.get_output_embeddings()(h[:, Lc + C:]).float()
        token_nll = F.cross_entropy(logits.transpose(1, 2), batch.gen_labels, reduction="none",
                                    ignore_index=IGNORE_INDEX)
        counted = (batch.gen_labels != IGNORE_INDEX)
        token_loss = token_nll
        if label_smoothing:
            # torch's label smoothing, (1 - e)·NLL + e·mean over the vocabulary of -log p, from the
            # NLL above and one mean: the [B, Lg, V] log-probabilities are not computed twice.
            uniform_nll = logits.logsumexp(-1) - logits.mean(-1)
            token_loss = (1 - label_smoothing) * token_nll + label_smoothing * uniform_nll * counted
        losses["gen"] = (token_loss.sum(1) / counted.sum(1).clamp_min(1)).mean()
        losses["gen_nll_sum"] = token_nll.sum().detach()
        losses["gen_tokens"] = counted.sum().detach()
        return losses

    def forward(self, batch: Batch, item_states: torch.Tensor, item_mask: torch.Tensor, vector_row: torch.Tensor,
                recall_negatives: torch.Tensor, rerank_negatives: torch.Tensor, place: torch.Tensor,
                **loss_options) -> dict[str, torch.Tensor]:
        """One training step's losses from the token states of the items it touches
        (item_states [U, L, d], item_mask [U, L]): Eq. 1 for those items, then `training_losses`.
        Item encoding happens inside forward so that DDP and torch.compile see all of the step."""
        vectors = self.item_encoder(item_states, item_mask)
        return self.training_losses(batch, vectors, vector_row, recall_negatives, rerank_negatives,
                                    place=place, **loss_options)

    # ----- inference (§3.6) -----------------------------------------------------------------
    @contextmanager
    def merged_lora(self):
        """Inference with the LoRA updates folded into the frozen weights (W + BA), so each adapted
        layer runs one matmul instead of three: evaluation (ranking, perplexity, generation) and
        `Recommender.respond` run so (replies 1.45x faster per token in bfloat16 on a CPU,
        docs/performance.md). On exit the weights are given back exactly, from copies taken before
        (unfolding would not give bfloat16 weights back). Folding and restoring cost ~0.2 s on a
        CPU (mostly peft computing BA), more than one ranking pass saves: `Recommender.recommend`
        keeps LoRA apart. Only in eval mode: training must not see folded weights."""
        if self.training:
            yield self
            return
        # LoRA's matrices only: the trainable token rows peft puts back itself, from their originals
        # (copying the embedding too would move ~230 MB a call for nothing).
        weights = [p for n, p in self.lm.named_parameters()
                   if n.endswith("base_layer.weight") and "token_adapter" not in n]
        kept = [p.detach().clone() for p in weights]
        self.lm.merge_adapter()
        try:
            yield self
        finally:
            self.lm.unmerge_adapter()          # peft's state: unmerged
            with torch.no_grad():
                for p, original in zip(weights, kept):
                    p.copy_(original)

    def context_pass(self, context_ids, context_items, context_len, item_vectors, keep_cache: bool = True):
        """Run the contexts once: returns (f-projected recall queries [B, d], KV cache or None when
        `keep_cache` is False, i.e. nothing will be re-ranked against it)."""
        B, Lc = context_ids.shape
        dev = context_ids.device
        emb = self.embed(context_ids, context_items, item_vectors)
        ar = torch.arange(Lc, device=dev)
        valid = ar.unsqueeze(0) < context_len.unsqueeze(1)
        allowed = (ar.view(1, 1, Lc) <= ar.view(1, Lc, 1)) & valid.unsqueeze(1)
        allowed = allowed | torch.eye(Lc, dtype=torch.bool, device=dev)
        out = self.run_decoder(emb, allowed, ar.expand(B, Lc), use_cache=keep_cache)
        h_rec = out.last_hidden_state[torch.arange(B, device=dev), context_len - 1]
        return self.f(h_rec), output_cache(out) if keep_cache else None

    def rerank_with_cache(self, cache, context_len: torch.Tensor, Lc: int, candidate_vectors: torch.Tensor,
                          chunk_size: int = InferenceConfig.rerank_chunk_size) -> torch.Tensor:
        """Eq. 5 scores of candidate_vectors [B, M, d] against cached contexts, `chunk_size`
        candidates at a time. Each candidate sees its row's context and itself only, all at one
        position, so M is not bounded by the LM's context window (the paper's limitation)."""
        B, M, _ = candidate_vectors.shape
        dev = candidate_vectors.device
        key_valid = torch.arange(Lc, device=dev).unsqueeze(0) < context_len.unsqueeze(1)  # [B, Lc]
        scores = []
        for start in range(0, M, chunk_size):
            chunk = candidate_vectors[:, start:start + chunk_size]
            K = chunk.shape[1]
            pos = context_len.unsqueeze(1).expand(B, K)
            emb = cancel_absolute_positions(self.causal_lm, chunk.to(self.f[0].weight.dtype), pos,
                                            torch.ones_like(pos, dtype=torch.bool))
            allowed = torch.cat([key_valid.unsqueeze(1).expand(B, K, Lc),
                                 torch.eye(K, dtype=torch.bool, device=dev).expand(B, K, K)], 2)
            h = self.run_decoder(emb, allowed, pos, cache=cache, use_cache=True,
                                 **{SELF_ONLY_KWARG: K}).last_hidden_state
            crop_cache(cache, Lc)
            scores.append(self.rerank_scores(h))
        return torch.cat(scores, 1)

    @torch.no_grad()
    def recommend(self, context_ids, context_items, context_len, catalog_vectors: torch.Tensor,
                  m_inference: int = InferenceConfig.m_inference, rerank: bool = True,
                  chunk_size: int = InferenceConfig.rerank_chunk_size,
                  index=None, sort: bool = True, exclude=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank the catalog for each context: retrieve the top m_inference by recall, then re-rank.
        Returns (catalog indices [B, M] best first, their scores [B, M]); `index` (pecrs.retrieval)
        replaces the exact search; sort=False keeps the recall order. exclude [B, n]: catalog indices
        never returned (-1 pads); a row with fewer than M items left ends in -1, scored -inf."""
        queries, cache = self.context_pass(context_ids, context_items, context_len, catalog_vectors, keep_cache=rerank)
        if index is None:   # the exact search that pecrs.Recommender serves with (build_index)
            index = ExactIndex(catalog_vectors, self.config.recall_temperature)
        recall_scores, top = search_excluding(index.search, queries, min(m_inference, len(catalog_vectors)), exclude)
        if not rerank:
            return top, recall_scores
        scores = self.rerank_with_cache(cache, context_len, context_ids.shape[1], catalog_vectors[top], chunk_size)
        scores = scores.masked_fill(top < 0, float("-inf"))     # a row short of M ends in -1 (search_excluding)
        if not sort:
            return top, scores
        order = scores.argsort(dim=1, descending=True)
        return top.gather(1, order), scores.gather(1, order)

    def generation_inputs(self, context_ids, context_items, context_len, item_vectors, recommended,
                          prompt_ids: list[int]):
        """Left-padded inputs_embeds [B, L, d] and attention mask [B, L] for generation (Eq. 6):
        context, [REC] v_1..v_k [REC_END], "Recommender:". recommended: catalog indices [B] (the
        paper: one item) or [B, k] (several items per reply, `Recommender.respond(k_items=...)`).
        A row whose first item is NO_ITEM: its context without [REC], then the prompt (a turn without
        a target's D̃_t, §3.4). Every row ends where generation starts: one scatter, no loop."""
        dev = context_ids.device
        rec = recommended.view(len(context_ids), -1).to(dev)
        B, slot_ids = rec.shape[0], item_head(range(rec.shape[1]), self.rec_end_id)[0]   # items differ, not ids
        S, P, Lc = len(slot_ids), len(prompt_ids), context_ids.shape[1]
        head_ids = torch.tensor(slot_ids + list(prompt_ids), device=dev).expand(B, -1)
        head_items = torch.cat([rec, torch.full((B, 1 + P), NO_ITEM, device=dev)], 1)
        ids = torch.cat([context_ids, head_ids], 1)            # [B, Lc + S + P]: context, pads, slots, prompt
        items = torch.cat([context_items, head_items], 1)
        injected, n = (rec[:, 0] != NO_ITEM).unsqueeze(1), context_len.unsqueeze(1)   # [B, 1] each
        j = torch.arange(ids.shape[1], device=dev).unsqueeze(0)
        keep = ((j < n - 1) | ((j == n - 1) & injected)        # the context; its [REC] only with an item
                | ((j >= Lc) & (j < Lc + S) & injected)         # the item slots and [REC_END]
                | (j >= Lc + S))                                # the prompt
        kept = keep.sum(1, keepdim=True)
        L = int(kept.max())
        # A kept token goes to its rank among the row's kept ones, right-aligned; the rest to a spare column L.
        dest = torch.where(keep, L - kept + keep.cumsum(1) - 1, L)
        out_ids = ids.new_full((B, L + 1), self.tokenizer.pad_token_id).scatter(1, dest, ids)[:, :L]
        out_items = items.new_full((B, L + 1), NO_ITEM).scatter(1, dest, items)[:, :L]
        valid = torch.arange(L, device=dev).unsqueeze(0) >= L - kept
        return self.embed(out_ids, out_items, item_vectors), valid.long()

    @torch.no_grad()
    def generate(self, context_ids, context_items, context_len, item_vectors, recommended,
                 prompt_ids: list[int], strategy="top_k", max_new_tokens: int = 64,
                 seed: int | None = None) -> list[list[int]]:
        """Generate responses with the recommended item injected (§3.6). Returns new token ids.
        At most one [ITEM] slot per injected item: a further one could only repeat a title (README)."""
        from .decoding import generate

        embeds, attn = self.generation_inputs(context_ids, context_items, context_len, item_vectors,
                                              recommended, prompt_ids)
        slots = recommended.view(len(context_ids), -1).shape[1]
        return generate(self.causal_lm, embeds, attn, strategy, max_new_tokens=max_new_tokens,
                        pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.end_of_turn_ids, seed=seed,
                        token_budget={self.tokenizer.convert_tokens_to_ids(ITEM): slots})

    def decode_reply(self, ids: list[int]) -> str:
        """The one decoder of replies (pecrs.tokens.reply_text), so that what is evaluated is what is served."""
        return reply_text(self.tokenizer, ids)

    @property
    def end_of_turn_ids(self) -> list[int]:
        """Where a reply ends: EOS, a newline, any other special token but [ITEM] (pecrs.tokens.reply_stop_ids)."""
        return reply_stop_ids(self.tokenizer)
