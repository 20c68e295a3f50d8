"""Tiny worlds for tests and benchmarks (like `torch.testing`): a toy catalog and dialogues, dataset
folders written from them, a tiny run config, a random tiny-llama run folder, a word-level tokenizer,
and small copies of the shared datasets.

The suite (tests/) and the benchmark scripts (benchmarks/) build what they share from here, so that
each toy world has one definition. Nothing here is a test: no pytest, no assertions. Every model is
a random tiny backbone ("tiny-llama", "tiny-gpt2"): seconds on a CPU, meaningless as a recommender.
Importing the module does not import torch; the builders that make a model import it when called.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pecrs.config import RunConfig
from pecrs.data import ITEM, REC, REC_END, SEP, Dialogue, Item, Turn

# ---- a 16-item catalog, one word each, and dialogues that ask for one of them --------------------

WORDS = ["apple", "river", "castle", "dragon", "robot", "ocean", "forest", "desert",
         "pirate", "zombie", "wizard", "space", "jungle", "train", "music", "winter"]
ITEMS = [Item(id=str(i), title=w.capitalize(), genres=(w,), plot=f"a story about the {w}")
         for i, w in enumerate(WORDS)]


def dialogues(seed: int, n: int) -> list[Dialogue]:
    """n three-turn dialogues: the seeker names a word of WORDS, the recommender answers with its
    item. Learnable: training on them lifts recall far above chance within a few hundred steps."""
    rng = np.random.default_rng(seed)
    out = []
    for d in range(n):
        k = int(rng.integers(len(WORDS)))
        out.append(Dialogue(id=f"d{d}", turns=(
            Turn("recommender", "Hi! What do you feel like?"),
            Turn("seeker", f"Something with a {WORDS[k]} please"),
            Turn("recommender", "You will love [ITEM]", (str(k),)))))
    return out


def varied_dialogues(n: int) -> list[Dialogue]:
    """Dialogues of varied length over ITEMS; each has a recommender turn without an item and one with."""
    out = []
    for d in range(n):
        k = d % len(WORDS)
        chat = [Turn("seeker", f"Hello, I want something about {WORDS[k]} " + "and more " * (d % 5))]
        out.append(Dialogue(id=f"d{d}", turns=(*chat,
            Turn("recommender", "Sure, what else do you like?"),
            Turn("seeker", f"I liked {WORDS[(k + 1) % len(WORDS)].capitalize()}", (str((k + 1) % len(WORDS)),)),
            Turn("recommender", "Then try [ITEM]", (str(k),)))))
    return out


def write_dataset(folder: Path) -> None:
    """A project-format dataset folder (it must not exist yet): ITEMS, 12 train and 4 dev dialogues."""
    folder.mkdir()
    with open(folder / "items.jsonl", "w") as f:
        for it in ITEMS:
            f.write(json.dumps(asdict(it)) + "\n")
    for split, seed, n in (("train", 0, 12), ("dev", 1, 4)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for d in dialogues(seed, n):
                turns = [{"role": t.role, "text": t.text, "items": list(t.items)} for t in d.turns]
                f.write(json.dumps({"id": d.id, "turns": turns}) + "\n")


def tiny_config(dataset) -> RunConfig:
    """tiny-llama on the folder of write_dataset: 2 epochs of 3 batches, a checkpoint every batch."""
    cfg = RunConfig()
    cfg.model.backbone, cfg.model.item_max_tokens = "tiny-llama", 16
    cfg.model.context_max_tokens, cfg.model.response_max_tokens = 64, 16
    t = cfg.train
    t.dataset, t.epochs, t.batch_size, t.lr, t.warmup_epochs = str(dataset), 2, 4, 1e-3, 0.5
    t.m_train, t.checkpoint_every = 6, 1
    cfg.inference.m_inference, cfg.inference.batch_size = 16, 8
    return cfg


def sharpen_attention(model, factor: float = 8.0):
    """Scale the frozen query and key weights (Llama's q/k projections, GPT-2's fused c_attn) in
    place: random tiny models attend almost uniformly at init, which hides a token attending where
    it must not (padding, another candidate) below any tolerance. Returns the model."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.base_layer.weight", "k_proj.base_layer.weight", "c_attn.base_layer.weight")):
                p.mul_(factor)
    return model


def step_setup(backbone: str, m_train: int = 6, **train):
    """(cfg, model, store, encoder, encoded) for one training step on ITEMS and varied_dialogues(12):
    no LoRA dropout, queries and keys sharpened (random tiny models attend almost uniformly at init,
    which hides padding or masking differences below any tolerance). `train` sets cfg.train fields."""
    from pecrs.catalog import ItemStore
    from pecrs.pretrained import build_model
    from pecrs.samples import make_samples
    from pecrs.tokens import DialogueEncoder

    cfg = RunConfig()
    cfg.model.backbone, cfg.model.item_max_tokens, cfg.train.m_train = backbone, 16, m_train
    cfg.model.lora_dropout = 0.0
    for k, v in train.items():
        setattr(cfg.train, k, v)
    model = sharpen_attention(build_model(cfg, seed=0))
    store = ItemStore(ITEMS, model.tokenizer, cfg.model.item_fields, 16).cache_base_states(model)
    encoder = DialogueEncoder(model.tokenizer, store.index, 96, 12)
    # Dialogues of varied length, some rows with a target and some without.
    encoded = encoder.encode_all(make_samples(varied_dialogues(12)))
    return cfg, model, store, encoder, encoded


# ---- a toy movie catalog and a random tiny-llama run that serves it -----------------------------

GENRES = ["Action", "Comedy", "Drama", "Horror"]

TURNS = [{"role": "seeker", "text": "Hi! I want a funny movie."},
         {"role": "recommender", "text": "Did you see [ITEM]?", "items": ["3"]},
         {"role": "seeker", "text": "Yes, something like that please"}]


def toy_items(n=12) -> list[Item]:
    return [Item(id=str(i), title=f"Movie {i}", year=2000 + i, genres=(GENRES[i % 4],),
                 actors=(f"Actor {i}",), plot=f"plot number {i}") for i in range(n)]


def make_tiny_run(root: Path) -> tuple[Path, Path]:
    """A run folder root/run with best/ (random tiny-llama PECRS) whose dataset root/data holds a
    toy items.jsonl (toy_items()). Returns (run folder, items.jsonl)."""
    import torch

    from pecrs.pretrained import build_model, save_pretrained
    from pecrs.catalog_source import write_items

    data = root / "data"
    data.mkdir(parents=True)
    write_items(toy_items(), data / "items.jsonl")
    cfg = RunConfig()
    cfg.model.backbone = "tiny-llama"
    cfg.model.lora_dropout = 0.0
    cfg.model.item_max_tokens = 16
    cfg.model.context_max_tokens = 64
    cfg.model.response_max_tokens = 8
    cfg.train.dataset = str(data)
    cfg.inference.m_inference = 8
    model = build_model(cfg, seed=0)
    torch.manual_seed(1)
    with torch.no_grad():  # a non-zero adapter, so that LoRA on and off differ
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    save_pretrained(model, cfg, root / "run" / "best")
    return root / "run", data / "items.jsonl"


# ---- a word-level tokenizer: every expected token sequence writable by hand ----------------------

class WordTokenizer:
    """The slice of a Hugging Face tokenizer DialogueEncoder uses: words, [SPECIAL] tokens and
    newlines are one token each; ids are handed out in first-seen order."""
    pad_token, eos_token = "<pad>", "</s>"
    all_special_tokens = [pad_token, eos_token, ITEM, SEP, REC, REC_END]
    _TOKEN = re.compile(r"\[[A-Z_]+\]|\n|[^\s\[]+|\[")
    _PLAIN = re.compile(r"\n|[^\s\[]+|\[")

    def __init__(self):
        self.vocab: dict[str, int] = {}
        for token in (self.pad_token, self.eos_token, ITEM, SEP, REC, REC_END):
            self.convert_tokens_to_ids(token)
        self.pad_token_id, self.eos_token_id = self.vocab[self.pad_token], self.vocab[self.eos_token]

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.vocab.setdefault(token, len(self.vocab))

    def tokens(self, text: str) -> list[str]:
        return self._TOKEN.findall(text)

    def __call__(self, text, add_special_tokens=False, split_special_tokens=False):
        def encode(t):   # split_special_tokens: "[REC]" typed in a text is "[" "REC]", as plain words
            tokens = self._PLAIN.findall(t) if split_special_tokens else self.tokens(t)
            return [self.convert_tokens_to_ids(tok) for tok in tokens]
        return {"input_ids": [encode(t) for t in text] if isinstance(text, list) else encode(text)}

    def convert_ids_to_tokens(self, ids) -> list[str]:
        names = {i: t for t, i in self.vocab.items()}
        return [names[int(i)] for i in ids]

    def decode(self, ids, skip_special_tokens=False) -> str:
        return " ".join(self.convert_ids_to_tokens(ids))


# ---- dataset files by hand -----------------------------------------------------------------------

def write_jsonl(path: Path, rows) -> Path:
    """One line a row: a string as it is (a broken line on purpose), anything else as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# The columns of the authors' INSPIRED dev.tsv (format "inspired-tsv").
TSV_HEADER = ["dialog_id", "utt_id", "speaker", "text", "text_with_placeholder", "movie_dict",
              "genre_dict", "actor_dict", "director_dict"]


def tsv_folder(folder: Path, rows, header=TSV_HEADER) -> Path:
    """An inspired-tsv folder: a one-item catalog (Heat, 1995) and dev.tsv with these rows."""
    write_jsonl(folder / "items.jsonl", [{"id": "1", "title": "Heat", "year": 1995}])
    with open(folder / "dev.tsv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)
    return folder


# ---- small copies of the shared datasets ---------------------------------------------------------

def _first_lines(path: Path, n: int) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line for _, line in zip(range(n), f)]


def _filter_items(src: Path, dst: Path, keep: set[str], extra: int = 40) -> None:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    out = [line for i, line in enumerate(lines) if i < extra or json.loads(line)["id"] in keep]
    dst.write_text("".join(out), encoding="utf-8")


def make_mini_datasets(shared: Path, out: Path) -> Path:
    """out/inspired (project JSON Lines) and out/redial (official ReDial layout), small: the first
    dialogues of each split of the shared datasets folder and only the items they mention, plus 40."""
    ins, red = out / "inspired", out / "redial"
    ins.mkdir(parents=True)
    keep: set[str] = set()
    for split, n in (("train", 12), ("dev", 3), ("test", 4)):
        lines = _first_lines(shared / "inspired" / f"{split}.jsonl", n)
        for line in lines:
            for turn in json.loads(line)["turns"]:
                keep.update(turn["items"])
        (ins / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    _filter_items(shared / "inspired" / "items.jsonl", ins / "items.jsonl", keep)

    (red / "official").mkdir(parents=True)
    keep = set()
    for name, n in (("train_subset_data.jsonl", 10), ("test_data.jsonl", 4)):
        lines = _first_lines(shared / "redial" / "official" / name, n)
        for line in lines:
            conv = json.loads(line)
            keep.update(conv.get("movieMentions") or {})
            for m in conv["messages"]:
                keep.update(re.findall(r"@(\d+)", m["text"]))
        (red / "official" / name).write_text("".join(lines), encoding="utf-8")
    for name in ("items.jsonl", "items_sources.jsonl"):
        _filter_items(shared / "redial" / name, red / name, keep)
    return out
