"""The standardized ReDial evaluation protocol (Kostric and Balog, "A Standardized Re-evaluation of
Conversational Recommender Systems on the ReDial Dataset", SIGIR '26).

The study builds one test collection from the raw official ReDial `test_data.jsonl`, so that
methods which preprocess ReDial differently can be compared, plus a de-duplicated ("fresh")
variant that removes the "repetition shortcut" (recommending a movie already mentioned), a naive
baseline that only repeats, and two user-centric metrics. The rules, as the study describes them
(and as implemented here):

* **Mentions.** Walk each conversation's messages in order (raw messages, never merged). A
  message mentions movie m when its text contains the token `@m` for an id m that is a key of
  that conversation's `movieMentions`; any other `@<digits>` is plain text. `@m` is matched as a
  whole number (`@12345` does not mention 1234).
* **Instances.** The recommender is the `respondentWorkerId`. An instance is a recommender
  message that mentions at least one movie and has at least one earlier message (so a
  conversation's first message is never an instance); its context is all earlier messages and
  its ground truth is the distinct movies it mentions (first-occurrence order).
* **Dedup ("fresh").** Per instance, keep only the ground-truth movies not mentioned in any
  earlier message of the conversation, by either side; drop instances left with none. The
  same rankings are scored (the context is unchanged); only the ground truth shrinks.
* **R@K** (K = 1, 10, 50): micro over ground-truth mentions, i.e. the fraction of (instance,
  movie) pairs whose movie is in the instance's top K. A multi-movie instance is ranked once and
  each of its movies counts.
* **Naive baseline.** The movies mentioned in earlier messages, most recently mentioned first
  (an earlier movie mentioned again moves to the front; within one message a later `@m` is more
  recent). It needs no model and no catalog; on the dedup variant it scores 0 by construction.
* **SR** (success rate): over dialogues with >= 1 instance, the fraction in which at some
  instance the top-1 recommendation is one of that instance's ground-truth movies and the
  seeker marked it liked (liked = 1) or seen (seen = 1) in `initiatorQuestions`.
* **RDL** (reward per dialogue length): mean over the same dialogues of (sum over the
  dialogue's instances of the top-1's reward) / (the dialogue's number of messages), where the
  reward is 1.0 for a ground-truth movie the seeker liked, 0.5 for one seen but not liked, else 0.
  `initiatorQuestions` codes for liked/seen: 1 = yes, 0 = no, 2 = did not say.

On the official test file this gives 4,198 instances with 4,975 ground-truth mentions (dedup:
3,838 / 4,472). The study's final tables use 3,617 / 3,372 rows after a further filter it does not
publish; numbers from this module are on the 4,198 / 3,838 collections.

Catalog. Ground-truth movies missing from the catalog a model ranks are kept (they count as
misses) and reported as `n_missing_from_catalog` (mentions), never dropped. Every number is a
fraction in [0, 1]; a metric with nothing to average is None.

This module needs no torch; `evaluate_model` imports the model code when called.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import metrics
from .data import DataError
from .loaders import read_jsonl

KS = (1, 10, 50)
VARIANTS = ("full", "dedup")
TEST_FILE = "test_data.jsonl"
LIKED_REWARD, SEEN_REWARD = 1.0, 0.5
_CODES = (0, 1, 2)  # initiatorQuestions liked/seen: 0 = no, 1 = yes, 2 = did not say
_AT_MENTION = re.compile(r"@(\d+)")


# ---- the collection ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Conversation:
    id: str
    line: int                                   # line in the JSONL file (1-based)
    messages: tuple[tuple[bool, str], ...]      # (sent by the recommender?, raw text)
    movie_names: Mapping[str, str]              # movieMentions: id -> name
    feedback: Mapping[str, tuple[int, int]]     # initiatorQuestions: id -> (liked, seen)
    mentions: tuple[tuple[str, ...], ...]       # movies each message mentions, every @m in order

    @property
    def n_messages(self) -> int:
        return len(self.messages)

    def reward(self, movie: str) -> float:
        """1.0 if the seeker liked `movie`, 0.5 if seen but not liked, else 0 (RDL's reward)."""
        liked, seen = self.feedback.get(movie, (2, 2))
        return LIKED_REWARD if liked == 1 else SEEN_REWARD if seen == 1 else 0.0


@dataclass(frozen=True)
class Instance:
    conversation: int                 # index into Collection.conversations
    message_index: int                # the recommender message to predict (>= 1)
    ground_truth: tuple[str, ...]     # distinct movies it mentions, first-occurrence order
    fresh: tuple[str, ...]            # those not mentioned in an earlier message (dedup)
    earlier: tuple[str, ...]          # movies of earlier messages, most recently mentioned first


@dataclass
class Collection:
    path: str
    conversations: list[Conversation]
    instances: list[Instance]

    def variant(self, name: str) -> list[tuple[int, tuple[str, ...]]]:
        """(instance index, ground truth) of the "full" collection or its "dedup" variant."""
        if name == "full":
            return [(i, inst.ground_truth) for i, inst in enumerate(self.instances)]
        if name == "dedup":
            return [(i, inst.fresh) for i, inst in enumerate(self.instances) if inst.fresh]
        raise ValueError(f"variant must be one of {VARIANTS}, got {name!r}")

    def movies(self) -> list[str]:
        """Every movie mentioned in the collection's conversations (ground truth or context),
        each once, in order of appearance."""
        return list(dict.fromkeys(m for conv in self.conversations for movies in conv.mentions for m in movies))


def message_mentions(text: str, movie_ids) -> tuple[str, ...]:
    """The movies a message mentions: each `@m` token whose id m is in `movie_ids` (the
    conversation's movieMentions keys), in text order, repeats kept."""
    return tuple(m for m in _AT_MENTION.findall(text) if m in movie_ids)


def _parse_feedback(raw, where: dict) -> dict[str, tuple[int, int]]:
    if raw is None or raw == []:   # 11 official test conversations have [] (no form filled)
        return {}
    if not isinstance(raw, dict):
        raise DataError(f"expected an object, got {type(raw).__name__}", field="initiatorQuestions", **where)
    out = {}
    for movie, answers in raw.items():
        field = f"initiatorQuestions.{movie}"
        if not isinstance(answers, dict):
            raise DataError(f"expected an object, got {answers!r}", field=field, **where)
        codes = []
        for key in ("liked", "seen"):
            value = answers.get(key, 2)
            if isinstance(value, bool) or value not in _CODES:
                raise DataError(f"expected 0, 1 or 2, got {value!r}", field=f"{field}.{key}", **where)
            codes.append(int(value))
        out[str(movie)] = (codes[0], codes[1])
    return out


def parse_conversation(obj: dict, where: dict) -> Conversation:
    """One line of ReDial's test_data.jsonl; `where` ({"path", "line"}) goes into DataErrors."""
    for key in ("conversationId", "respondentWorkerId", "initiatorWorkerId", "messages", "movieMentions"):
        if key not in obj:
            raise DataError("missing required field", field=key, **where)
    names = obj["movieMentions"]
    if names == []:
        names = {}
    if not isinstance(names, dict):
        raise DataError(f"expected an object, got {type(names).__name__}", field="movieMentions", **where)
    raw = obj["messages"]
    if not isinstance(raw, list):
        raise DataError("expected a list of messages", field="messages", **where)
    workers = (obj["respondentWorkerId"], obj["initiatorWorkerId"])
    messages, mentions = [], []
    for m, msg in enumerate(raw):
        field = f"messages[{m}]"
        if not isinstance(msg, dict):
            raise DataError("expected an object", field=field, **where)
        for key in ("senderWorkerId", "text"):
            if key not in msg:
                raise DataError("missing required field", field=f"{field}.{key}", **where)
        if msg["senderWorkerId"] not in workers:
            raise DataError(f"sender {msg['senderWorkerId']!r} is neither the respondent nor the initiator",
                            field=f"{field}.senderWorkerId", **where)
        if not isinstance(msg["text"], str):
            raise DataError("expected a string", field=f"{field}.text", **where)
        messages.append((msg["senderWorkerId"] == obj["respondentWorkerId"], msg["text"]))
        mentions.append(message_mentions(msg["text"], names))
    return Conversation(id=str(obj["conversationId"]), line=where.get("line") or 0, messages=tuple(messages),
                        movie_names={str(k): v if isinstance(v, str) else "" for k, v in names.items()},
                        feedback=_parse_feedback(obj.get("initiatorQuestions"), where),
                        mentions=tuple(mentions))


def conversation_instances(conv: Conversation, index: int) -> list[Instance]:
    """The instances of one conversation (rules in the module docstring)."""
    out = []
    seen: set[str] = set()
    last: dict[str, int] = {}   # movie -> position of its latest mention so far
    pos = 0
    for m, ((by_recommender, _), movies) in enumerate(zip(conv.messages, conv.mentions)):
        truth = tuple(dict.fromkeys(movies))
        if by_recommender and m > 0 and truth:
            out.append(Instance(conversation=index, message_index=m, ground_truth=truth,
                                fresh=tuple(x for x in truth if x not in seen),
                                earlier=tuple(sorted(last, key=last.__getitem__, reverse=True))))
        for movie in movies:
            last[movie] = pos
            pos += 1
        seen.update(truth)
    return out


def find_test_file(path) -> Path:
    """ReDial's official test file: `path` itself, or test_data.jsonl in `path` or `path`/official."""
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path, path / "official"):
        if (folder / TEST_FILE).is_file():
            return folder / TEST_FILE
    raise DataError(f"no ReDial {TEST_FILE} here or in official/ (the standardized protocol is built from "
                    "the official ReDial test file)", path=str(path))


def load_collection(path) -> Collection:
    """The standardized collection of ReDial's official test file (a file, or a folder holding
    test_data.jsonl or official/test_data.jsonl). Bad input raises DataError (file, line, field)."""
    path = find_test_file(path)
    conversations: list[Conversation] = []
    ids: set[str] = set()
    for n, obj in read_jsonl(path):  # UTF-8, malformed or too deep JSON: a DataError naming file and line
        where = {"path": str(path), "line": n}
        conv = parse_conversation(obj, where)
        if conv.id in ids:
            raise DataError(f"duplicate conversationId '{conv.id}'", field="conversationId", **where)
        ids.add(conv.id)
        conversations.append(conv)
    instances = [inst for c, conv in enumerate(conversations) for inst in conversation_instances(conv, c)]
    return Collection(str(path), conversations, instances)


def catalog_ids(folder) -> list[str] | None:
    """The movie ids of a ReDial dataset folder's catalog: items.jsonl, else the official
    movies_with_mentions.csv (in the folder or its official/); None when it has neither."""
    from .loaders import load_items

    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    if (folder / "items.jsonl").is_file():
        return list(load_items(folder / "items.jsonl"))
    for csv_path in (folder / "movies_with_mentions.csv", folder / "official" / "movies_with_mentions.csv"):
        if csv_path.is_file():
            with open(csv_path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                if "movieId" not in (reader.fieldnames or []):
                    raise DataError("missing column", path=str(csv_path), line=1, field="movieId")
                return [row["movieId"] for row in reader]
    return None


# ---- scoring -----------------------------------------------------------------------------------

def item_codes(collection: Collection, catalog: Sequence[str] | None = None) -> dict[str, int]:
    """Integer codes for rankings: the catalog's positions (so a model's catalog indices are
    codes as they are), then every movie mentioned in the collection but missing from the
    catalog after them (a code no model ranking can hold: such a movie is always a miss for a
    model, while the naive baseline, which needs no catalog, can still recommend it)."""
    codes = {item: i for i, item in enumerate(catalog or ())}
    for movie in collection.movies():
        codes.setdefault(movie, len(codes))
    return codes


def score(collection: Collection, ranked: np.ndarray, codes: Mapping[str, int], variant: str = "full",
          catalog: set[str] | None = None, ks: Sequence[int] = KS) -> dict:
    """The protocol's metrics of one variant for `ranked` [n_instances, K] (codes of `codes`,
    best first, -1 = empty slot; row i ranks `collection.instances[i]`).

    Returns n_instances, n_mentions, n_dialogues, recall@k (micro over mentions), sr, rdl and
    n_missing_from_catalog (ground-truth mentions whose movie is not in `catalog`; None when no
    catalog is given)."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[0] != len(collection.instances):
        raise ValueError(f"ranked must have one row per instance ({len(collection.instances)}), "
                         f"got shape {ranked.shape}")
    rows = collection.variant(variant)
    # One entry per ground-truth mention: its instance row, movie code and reward.
    mention_row = np.array([i for i, truth in rows for _ in truth], dtype=np.int64)
    mention_code = np.array([codes[m] for _, truth in rows for m in truth], dtype=np.int64)
    convs = collection.conversations
    reward = np.array([convs[collection.instances[i].conversation].reward(m) for i, truth in rows for m in truth],
                      dtype=np.float64)
    out: dict = {"n_instances": len(rows), "n_mentions": int(mention_row.size)}
    if mention_row.size:
        recall = metrics.recall_at_k(ranked[mention_row], mention_code, ks)
        out.update({k: float(v) for k, v in recall.items()})
        top1 = ranked[mention_row, 0] if ranked.shape[1] else np.full(mention_row.size, -1)
        hit1 = top1 == mention_code                       # the top-1 is this ground-truth movie
        # Per dialogue: instances' top-1 rewards summed; success if any top-1 hit earns a reward.
        dialogue = np.array([collection.instances[i].conversation for i in mention_row], dtype=np.int64)
        used, local = np.unique(dialogue, return_inverse=True)
        total = np.bincount(local, weights=np.where(hit1, reward, 0.0), minlength=used.size)
        success = np.bincount(local, weights=(hit1 & (reward > 0)).astype(np.float64), minlength=used.size) > 0
        length = np.array([convs[c].n_messages for c in used], dtype=np.float64)
        out.update({"sr": float(success.mean()), "rdl": float((total / length).mean()),
                    "n_dialogues": int(used.size)})
    else:
        out.update({f"recall@{k}": None for k in ks})
        out.update({"sr": None, "rdl": None, "n_dialogues": 0})
    if catalog is None:
        out["n_missing_from_catalog"] = None
    else:
        out["n_missing_from_catalog"] = sum(m not in catalog for _, truth in rows for m in truth)
    return out


def score_all(collection: Collection, ranked: np.ndarray, codes: Mapping[str, int],
              catalog: Sequence[str] | None = None) -> dict:
    """{"full": score(...), "dedup": score(...)} for one ranking of every instance."""
    known = set(catalog) if catalog is not None else None
    return {v: score(collection, ranked, codes, v, known) for v in VARIANTS}


def naive_ranking(collection: Collection, codes: Mapping[str, int], k: int = max(KS)) -> np.ndarray:
    """The naive baseline's ranking [n_instances, k] in `codes`: each instance's earlier movies,
    most recently mentioned first (-1 pads)."""
    earlier = [inst.earlier for inst in collection.instances]
    return metrics.naive_baseline_ranking(earlier, k, last_mention_order=earlier, item_index=codes)


def evaluate_naive(collection: Collection, catalog: Sequence[str] | None = None) -> dict:
    """The naive baseline on both variants (no model; the catalog only feeds the missing count)."""
    codes = item_codes(collection, catalog)
    return score_all(collection, naive_ranking(collection, codes), codes, catalog)


def restrict(collection: Collection, max_instances: int | None) -> Collection:
    """The whole conversations that hold the first `max_instances` instances (a quick, partial
    run; SR and RDL stay per whole dialogue)."""
    if not max_instances or max_instances >= len(collection.instances):
        return collection
    last = collection.instances[max_instances - 1].conversation
    convs = collection.conversations[: last + 1]
    instances = [inst for inst in collection.instances if inst.conversation <= last]
    return Collection(collection.path, convs, instances)


# ---- a model -----------------------------------------------------------------------------------

def context_turns(conv: Conversation, upto: int, item_index: Mapping[str, int]):
    """The dialogue before message `upto` as the model's `Turn`s, laid out as in training on
    ReDial (pecrs.loaders): consecutive messages of one side merged with a space; each mention
    `@m` of a catalog movie becomes [ITEM] with m in `items`, of a movie missing from the catalog
    its name from movieMentions (year dropped); other text is kept as it is."""
    from .data import ITEM, RECOMMENDER, SEEKER, Turn
    from .loaders import split_title_year

    merged: list[list] = []   # [role, text, items]
    for by_recommender, text in conv.messages[:upto]:
        items: list[str] = []

        def link(match: re.Match) -> str:
            movie = match.group(1)
            if movie not in conv.movie_names:
                return match.group(0)
            if movie in item_index:
                items.append(movie)
                return ITEM
            return split_title_year(conv.movie_names[movie])[0] or match.group(0)

        text = _AT_MENTION.sub(link, text.replace(ITEM, "[item]"))
        role = RECOMMENDER if by_recommender else SEEKER
        if merged and merged[-1][0] == role:
            merged[-1][1] += " " + text
            merged[-1][2] += items
        else:
            merged.append([role, text, items])
    return tuple(Turn(role, text, tuple(items)) for role, text, items in merged)


def instance_samples(collection: Collection, item_index: Mapping[str, int]) -> list:
    """One `pecrs.data.Sample` per instance (target None: only its context is read), so that the
    instances go through the same encoder and ranking code as `pecrs evaluate`."""
    from .data import RECOMMENDER, Sample, Turn

    out = []
    for inst in collection.instances:
        conv = collection.conversations[inst.conversation]
        context = context_turns(conv, inst.message_index, item_index)
        out.append(Sample(dialogue_id=conv.id, turn_index=inst.message_index, context=context,
                          response=Turn(RECOMMENDER, ""), target=None))
    return out


def rank_instances(model, store, encoder, collection: Collection, *, m_inference: int, batch_size: int = 8,
                   progress: bool = False, index=None) -> np.ndarray:
    """Catalog indices [n_instances, 50] best first: each instance's context ranked once by
    `pecrs.evaluate.rank_samples` (retrieve M_inference by recall, re-rank), as `pecrs evaluate` does."""
    from .evaluate import rank_samples

    model.eval()
    encoded = encoder.encode_all(instance_samples(collection, store.index))
    if not encoded:
        return np.zeros((0, max(KS)), dtype=np.int64)
    vectors = store.all_vectors(model)
    return rank_samples(model, store, encoded, vectors, m_inference, batch_size, keep=max(KS),
                        progress=progress, index=index)


def evaluate_model(model, store, encoder, collection: Collection, *, m_inference: int, batch_size: int = 8,
                   progress: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """The protocol's metrics of a PECRS model on both variants ({"full": ..., "dedup": ...});
    `store` is the catalog it ranks (ground-truth movies not in it are misses, and counted)."""
    ranked = rank_instances(model, store, encoder, collection, m_inference=m_inference, batch_size=batch_size,
                            progress=progress)
    codes = item_codes(collection, store.ids)
    result = score_all(collection, ranked, codes, store.ids)
    if log and result["full"]["n_missing_from_catalog"]:
        log(f"{result['full']['n_missing_from_catalog']} ground-truth mention(s) are of movies missing from the "
            "catalog; they count as misses")
    return result
