"""Which items a recommender serves, and what went wrong reading them.

A catalog is given as an items.jsonl path (or a folder holding one), a dict or list of `Item`s, or
nothing: then the catalog saved with the checkpoint (`CATALOG_FILE`, written by
`Recommender.save_pretrained`), else the catalog of the dataset the run trained on (`find_dataset`,
which `pecrs evaluate` also uses: its recorded path from the working directory, then from each
folder above the checkpoint, the first that holds a dataset). A file is read
strictly (`loaders.load_items`: the first bad line is an error naming file, line and field) or
leniently (bad lines skipped, counted and reported in a `CatalogReport`), as a server that must
start on a user's catalog prefers. Finding a run's dataset is run_dataset.py's.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data import DataError, Item
from .loaders import load_dataset, load_items, parse_item, parse_json_line, read_lines_each
from .loaders.reading import require_file
from .run_dataset import CATALOG_FILE, DatasetNotFound, find_dataset


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
