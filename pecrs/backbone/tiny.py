"""Seeded random tiny GPT-2 / Llama backbones with an offline tokenizer, for tests."""
from __future__ import annotations

from functools import lru_cache

import torch



# --- tiny test backbones ------------------------------------------------------------------------

# A small fixed English corpus for the offline tokenizer: dialogue-ish text about films so that test
# sentences tokenize into sensible pieces. Changing it changes the tiny tokenizer (and test ids).
_TINY_CORPUS = """
Hi there! I am looking for a good movie to watch tonight. Do you have any recommendations?
Sure, what kind of movies do you like? I love comedies and romantic films, but horror is too scary.
Have you seen The Princess Bride? It is a classic adventure with romance, sword fights and humor.
Yes, I have seen it and I loved it. Something newer would be great, maybe from the last ten years.
Then you might enjoy La La Land, a musical drama about a jazz pianist and an actress in Los Angeles.
That sounds wonderful. Who directed it? It was directed by Damien Chazelle, who also made Whiplash.
I also like science fiction, like Star Wars, Interstellar, Arrival, Blade Runner and The Matrix.
If you like thoughtful science fiction, try Ex Machina or Moon; both are smart, quiet and moving.
My favorite actors are Tom Hanks, Meryl Streep, Denzel Washington, Emma Stone and Ryan Gosling.
What about animated films? Toy Story, Up, Spirited Away and Coco are wonderful for the whole family.
The plot follows a young woman who travels across the country to find her missing brother.
A detective investigates a series of strange murders in a small town during a cold winter.
Two friends start a band in high school and dream of playing music around the world one day.
An astronaut is stranded on Mars and must use science to survive until a rescue mission arrives.
The film stars a famous comedian as a teacher who helps his students win a national competition.
Thanks for the suggestions! I will watch it this weekend with my friends. You are welcome, enjoy!
Genre: comedy, drama, action, thriller, horror, romance, documentary, animation, fantasy, mystery.
Director, actors, genre, plot, title, year, rating, review, sequel, trailer, cinema, theater, actor.
I did not like that one very much; the story was slow and the ending was confusing to me.
Could you recommend something funny and light? Maybe a movie that makes me laugh out loud.
How about Groundhog Day, Superbad, Bridesmaids, Booksmart or The Grand Budapest Hotel?
Numbers and dates: 1, 2, 3, 10, 20, 100, 1999, 2001, 2010, 2015, 2019, 2020, 2023.
"""
_TINY_VOCAB_SIZE = 1000
_TINY_EOS = "<|endoftext|>"
_TINY_SEED = 0


@lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Train the byte-level BPE once per process (a few ms) and keep its serialised form.

    The serialised form, not the object, is cached because tokenizers are mutable
    (`add_special_tokens`) and each caller must get a fresh one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB_SIZE,
        special_tokens=[_TINY_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TINY_CORPUS.strip().splitlines(), trainer=trainer)
    return tokenizer.to_str()


def build_tiny_tokenizer():
    """A deterministic offline byte-level BPE tokenizer (~1000 tokens) with eos = pad = bos."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        bos_token=_TINY_EOS,
        eos_token=_TINY_EOS,
        pad_token=_TINY_EOS,
    )


def _build_tiny(name: str, dtype: torch.dtype, attn_implementation: str | None):
    """A seeded random 2-layer, 64-wide, 4-head model of the named architecture."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    eos = tokenizer.eos_token_id
    common = dict(vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    if name == "tiny-gpt2":
        # Dropout off: the tests compare outputs of different forward passes exactly.
        config = GPT2Config(
            n_positions=512, n_embd=64, n_layer=2, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
        )
        model_cls = GPT2LMHeadModel
    else:
        # Mirrors SmolLM2's layout in miniature: grouped-query attention and tied embeddings.
        config = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, **common,
        )
        model_cls = LlamaForCausalLM
    if attn_implementation:
        config._attn_implementation = attn_implementation
    # fork_rng: seed the init without disturbing the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = model_cls(config)
    return model.to(dtype).eval(), tokenizer


# ----------------------------------------------------------------------------------------------
# Special tokens, LoRA
# ----------------------------------------------------------------------------------------------
