"""Which items a recommender serves, and what went wrong reading them.

A catalog is given as an items.jsonl path (or a folder holding one), a dict or list of `Item`s, or
nothing: then the catalog saved with the checkpoint (`CATALOG_FILE`, written by
`Recommender.save_pretrained`), else the catalog of the dataset the run trained on (`find_dataset`,
which `pecrs evaluate` also uses: its recorded path from the working directory, then from each
folder above the checkpoint, the first that holds a dataset). A file is read
strictly (`loaders.load_items`: the first bad line is an error naming file, line and field) or
leniently (bad lines skipped, counted and reported in a `CatalogReport`), as a server that must
start on a user's catalog prefers.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data import DataError, Item
from .loaders import detect_format, load_dataset, load_items, parse_item, parse_json_line, read_lines_each
from .loaders.reading import require_file

CATALOG_FILE = "items.jsonl"     # the catalog copy that Recommender.save_pretrained writes


@dataclass
class CatalogReport:
    """Where a catalog came from and what was skipped while reading it (lenient reading only)."""
    source: str
    n_items: int
    n_errors: int = 0
    errors: list[str] = field(default_factory=list)   # the first few messages
    vectors_from_cache: bool = False
    cache_path: str | None = None
    encode_seconds: float = 0.0
    vectors_with_model: bool = False   # read from the model's own folder (a shipped or saved model), no cache

    def summary(self) -> str:
        vec = (f"vectors saved with the model ({Path(self.cache_path or '').name})" if self.vectors_with_model else
               f"vectors loaded from cache {self.cache_path}" if self.vectors_from_cache
               else f"vectors encoded in {self.encode_seconds:.1f} s"
               + (f", cached at {self.cache_path}" if self.cache_path else ""))
        bad = f"; skipped {self.n_errors} bad line(s)" if self.n_errors else ""
        return f"catalog {self.source}: {self.n_items} items{bad}; {vec}"


def read_items_lenient(path, max_errors: int = 10) -> tuple[dict[str, Item], list[str], int]:
    """An items.jsonl read like `loaders.load_items`, except that a bad line (malformed JSON, a
    missing title, a wrong type, a duplicate id) is skipped and reported instead of raised.
    Returns (items, the first `max_errors` messages, the number of bad lines). A file whose bad
    lines outnumber its items (another format, a pretty-printed JSON file) is refused: serving
    the few lines that happen to parse would hide that the catalog was not read."""
    path = require_file(Path(path))
    items: dict[str, Item] = {}
    errors: list[str] = []
    n_bad = 0
    for n, line in read_lines_each(path):   # a line of bytes that are not UTF-8 is one bad line
        if isinstance(line, str) and not line.strip():
            continue
        where = {"path": str(path), "line": n}
        try:
            if isinstance(line, DataError):
                raise line
            item = parse_item(parse_json_line(line, where), where)
            if item.id in items:
                raise DataError(f"duplicate item id '{item.id}'", field="id", **where)
            items[item.id] = item
        except DataError as e:
            n_bad += 1
            if len(errors) < max_errors:
                errors.append(str(e))
    if not items and not n_bad:
        raise DataError("the catalog holds no items", path=str(path))
    if n_bad > len(items):
        first = errors[0] if errors else "not kept"
        hint = ("; a catalog is JSON Lines, one JSON object per line (docs/data-format.md)"
                if path.suffix.lower() != ".jsonl" or len(items) else "")
        found = "no valid items" if not items else f"most lines are bad, {len(items)} item(s) read"
        raise DataError(f"{found} ({n_bad} bad line(s); first: {first}){hint}", path=str(path))
    return items, errors, n_bad


def write_items(items, path) -> None:
    """An items.jsonl that `loaders.load_items` reads back to the same Items."""
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(asdict(it), ensure_ascii=False) + "\n")


def dataset_candidates(dataset: str | Path, checkpoint: Path) -> list[Path]:
    """Where a run's recorded dataset may be, in the order searched. Its path was written
    relative to the directory training ran from: the working directory, then each folder above
    the checkpoint (a run trained on `books` beside its runs/ folder). An absolute path: itself."""
    ds = Path(dataset)
    if ds.is_absolute():
        return [ds]
    places: dict[Path, Path] = {}   # resolved -> as searched: each folder once (cwd may be above the checkpoint)
    for folder in [Path.cwd() / ds, *(p / ds for p in checkpoint.resolve().parents)]:
        places.setdefault(folder.resolve(), folder)
    return list(places.values())


def not_a_dataset(folder: Path) -> str | None:
    """Why `folder` is not a dataset folder (None when it is one): it must hold a catalog the
    loaders read, items.jsonl (all chat needs) or ReDial's release (`loaders.detect_format`; its
    movies_with_mentions.csv stands in for items.jsonl), and not be a pecrs checkpoint (an
    exported model holds an items.jsonl too). A run folder named like its dataset (runs/books for
    the dataset books) is neither, so the search goes on past it: its metrics.jsonl alone makes
    detect_format answer "jsonl", which is why a catalog is asked for first."""
    from .pretrained import CONFIG_FILE   # (pretrained imports torch: only when a dataset is searched)

    if not folder.exists():
        return "no such folder"
    if not folder.is_dir():
        return "a file, not a folder"
    if (folder / CONFIG_FILE).is_file():
        return f"a pecrs checkpoint ({CONFIG_FILE}), not a dataset"
    if (folder / CATALOG_FILE).is_file():
        return None
    try:
        if detect_format(folder) == "redial":
            return None
    except DataError:
        pass
    return f"a folder without a dataset: no {CATALOG_FILE}, no ReDial release"


class DatasetNotFound(FileNotFoundError):
    """No dataset folder at any place a run's recorded dataset may be; `looked` says, for each
    place, why it was passed over."""

    def __init__(self, dataset: str | Path, looked: list[tuple[Path, str]], hint: str = ""):
        self.dataset, self.looked = str(dataset), looked
        where = "; ".join(f"{folder} ({why})" for folder, why in looked)
        super().__init__(f"the run's dataset '{dataset}' was not found; looked in {where}{hint}")


def find_dataset(dataset: str | Path, checkpoint: Path) -> Path:
    """The first of `dataset_candidates` that is a dataset folder (`not_a_dataset`); a
    DatasetNotFound names every place looked and why each was passed over. `pecrs evaluate` and
    a recommender without a catalog of its own both find a run's dataset here."""
    looked = []
    for folder in dataset_candidates(dataset, checkpoint):
        why = not_a_dataset(folder)
        if why is None:
            return folder
        looked.append((folder, why))
    raise DatasetNotFound(dataset, looked)


def dataset_sha1(folder: Path) -> str | None:
    """A hash of the files the loaders read from the dataset `folder`
    (`experiments.keys.dataset_fingerprint`): a byte copy elsewhere has the same one. None for
    what is no dataset folder."""
    from .experiments.keys import dataset_fingerprint

    return dataset_fingerprint(str(folder)).get("sha1")


def dataset_record(folder: Path) -> dict:
    """What a result (`pecrs evaluate`) or a resumable checkpoint (last/) records of the dataset it
    was made from: the folder, absolute, and the hash of its files (`dataset_sha1`)."""
    return {"dataset": str(Path(folder).resolve()), "dataset_sha1": dataset_sha1(Path(folder))}


def matches_record(record: dict, folder: Path) -> bool:
    """Whether `folder` holds the dataset of `record` (`dataset_record`): the same files, wherever
    they are (the GPU machine's byte copy is the run's dataset; the same folder edited since is
    not), or, for a record without a hash, the same folder."""
    if record.get("dataset_sha1") is not None:
        return dataset_sha1(Path(folder)) == record["dataset_sha1"]
    return Path(record["dataset"]).resolve() == Path(folder).resolve()


def _dataset_catalog(checkpoint: Path, dataset: str) -> tuple[dict[str, Item], str]:
    """The catalog of the dataset a run trained on (`find_dataset`)."""
    try:
        folder = find_dataset(dataset, checkpoint)
    except DatasetNotFound as e:
        raise DatasetNotFound(dataset, e.looked, hint="; pass catalog=path/to/items.jsonl") from None
    if (folder / CATALOG_FILE).is_file():
        return load_items(folder / CATALOG_FILE), str(folder / CATALOG_FILE)
    return load_dataset(folder).items, str(folder)


def _given_items(catalog: dict | list | tuple) -> dict[str, Item]:
    """A dict {id: Item} or a list of Items, or of dicts shaped as lines of items.jsonl, each
    checked as such a line is (`parse_item`: a string id, a non-empty title, ...); a DataError
    names the entry."""
    entries = catalog.items() if isinstance(catalog, dict) else enumerate(catalog)
    items: dict[str, Item] = {}
    for key, given in entries:
        where = {"path": f"catalog[{key!r}]"}
        if isinstance(given, Item):
            given = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(given).items()}
        elif not isinstance(given, dict):
            raise DataError(f"expected an Item or an items.jsonl object, got {type(given).__name__}", **where)
        item = parse_item(given, where)
        if isinstance(catalog, dict) and key != item.id:   # the id a recommendation returns must be its key
            raise DataError(f"a catalog dict is keyed by item id; this key holds item '{item.id}'", **where)
        if item.id in items:
            raise DataError(f"duplicate item id '{item.id}'", **where)
        items[item.id] = item
    if not items:
        raise DataError("the catalog holds no items")
    return items


def resolve_catalog(catalog, checkpoint: Path | None, dataset: str | None, strict: bool = True):
    """(items, report) for a catalog given as a path, a dict or list of Items, or None."""
    if catalog is None:
        if checkpoint is not None and (checkpoint / CATALOG_FILE).is_file():
            catalog = checkpoint / CATALOG_FILE
        elif checkpoint is not None and dataset:
            items, source = _dataset_catalog(checkpoint, dataset)
            return items, CatalogReport(source, len(items))
        else:
            raise ValueError("no catalog: pass catalog=path/to/items.jsonl or a list of Items")
    if isinstance(catalog, (dict, list, tuple)):
        items = _given_items(catalog)
        return items, CatalogReport(f"<{type(catalog).__name__}>", len(items))
    if not isinstance(catalog, (str, Path)):
        raise TypeError(f"catalog= takes an items.jsonl path, a dict or list of Items (or of items.jsonl "
                        f"objects), or None; got {type(catalog).__name__}")
    path = Path(catalog)
    if path.is_dir():
        path = path / CATALOG_FILE
    if strict:
        items = load_items(path)
        return items, CatalogReport(str(path), len(items))
    items, errors, n_bad = read_items_lenient(path)
    return items, CatalogReport(str(path), len(items), n_bad, errors)
