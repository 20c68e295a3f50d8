"""pecrs: PECRS (Ravaut et al., EACL 2024), parameter-efficient conversational recommendation.

One frozen causal LM with LoRA adapters encodes items, retrieves and re-ranks them, and writes
the recommender's response. Start with `pecrs.Recommender` (library use) or the `pecrs` command.
"""
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `import pecrs` (and `pecrs --help`) does not import torch and transformers.
    if name in ("Recommender", "Recommendation", "Response"):
        from . import recommender

        return getattr(recommender, name)
    raise AttributeError(f"module 'pecrs' has no attribute {name!r}")
