"""The standardized ReDial test collection, built from the raw official `test_data.jsonl`.

Conversations as they are in the file (raw messages, never merged), the movies each message
mentions, and the instances to predict with their ground truth, full and de-duplicated; the
rules are in the package docstring (pecrs/standardized/__init__.py). Bad input raises DataError
naming file, line and field.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..data import DataError
from ..loaders import check_record, check_text, items_from_movies_csv, load_items, read_jsonl
from ..loaders.redial import AT_MENTION
from ..metrics.ranking import items_by_last_mention

VARIANTS = ("full", "dedup")
TEST_FILE = "test_data.jsonl"
LIKED_REWARD, SEEN_REWARD = 1.0, 0.5
_CODES = (0, 1, 2)  # initiatorQuestions liked/seen: 0 = no, 1 = yes, 2 = did not say


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
    return tuple(m for m in AT_MENTION.findall(text) if m in movie_ids)


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
    if names == [] or names is None:  # as pecrs.loaders.redial reads them: no mentions
        names = {}
    if not isinstance(names, dict):
        raise DataError(f"expected an object, got {type(names).__name__}", field="movieMentions", **where)
    raw = obj["messages"]
    if not isinstance(raw, list):
        raise DataError("expected a list of messages", field="messages", **where)
    if not raw:   # as pecrs.loaders.redial reads it: an empty conversation is a broken line
        raise DataError("empty dialogue (no messages)", field="messages", **where)
    workers = (obj["respondentWorkerId"], obj["initiatorWorkerId"])
    messages, mentions = [], []
    for m, msg in enumerate(raw):
        field = f"messages[{m}]"
        check_record(msg, field, ("senderWorkerId", "text"), where)
        if msg["senderWorkerId"] not in workers:
            raise DataError(f"sender {msg['senderWorkerId']!r} is neither the respondent nor the initiator",
                            field=f"{field}.senderWorkerId", **where)
        check_text(msg, field, where)
        messages.append((msg["senderWorkerId"] == obj["respondentWorkerId"], msg["text"]))
        mentions.append(message_mentions(msg["text"], names))
    return Conversation(id=str(obj["conversationId"]), line=where.get("line") or 0, messages=tuple(messages),
                        movie_names={str(k): v if isinstance(v, str) else "" for k, v in names.items()},
                        feedback=_parse_feedback(obj.get("initiatorQuestions"), where),
                        mentions=tuple(mentions))


def conversation_instances(conv: Conversation, index: int) -> list[Instance]:
    """The instances of one conversation (rules in the package docstring)."""
    out = []
    seen: set[str] = set()
    for m, ((by_recommender, _), movies) in enumerate(zip(conv.messages, conv.mentions)):
        truth = tuple(dict.fromkeys(movies))
        if by_recommender and m > 0 and truth:
            out.append(Instance(conversation=index, message_index=m, ground_truth=truth,
                                fresh=tuple(x for x in truth if x not in seen),
                                earlier=items_by_last_mention(conv.mentions[:m])))
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
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    if (folder / "items.jsonl").is_file():
        return list(load_items(folder / "items.jsonl"))
    for csv_path in (folder / "movies_with_mentions.csv", folder / "official" / "movies_with_mentions.csv"):
        if csv_path.is_file():   # read as `pecrs data stats` and training read it
            return list(items_from_movies_csv(csv_path))
    return None


def restrict(collection: Collection, max_instances: int | None) -> Collection:
    """The whole conversations that hold the first `max_instances` instances (a quick, partial
    run; SR and RDL stay per whole dialogue)."""
    if not max_instances or max_instances >= len(collection.instances):
        return collection
    last = collection.instances[max_instances - 1].conversation
    convs = collection.conversations[: last + 1]
    instances = [inst for inst in collection.instances if inst.conversation <= last]
    return Collection(collection.path, convs, instances)
