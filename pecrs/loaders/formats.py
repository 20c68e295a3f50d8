"""Which format a dataset folder holds, the files that format reads, and `load_dataset`."""
from __future__ import annotations

from pathlib import Path

from ..data import DataError, DatasetBundle
from .inspired_tsv import inspired_tsv_files, load_inspired_tsv, tsv_split_files
from .jsonl import jsonl_files, jsonl_split_files, load_jsonl_folder
from .redial import load_redial, redial_files, redial_split_files

FORMATS = ("jsonl", "redial", "inspired-tsv")
_FILES = {"jsonl": jsonl_files, "redial": redial_files, "inspired-tsv": inspired_tsv_files}


def _missing_folder(folder: Path) -> DataError:
    if folder.is_file():
        return DataError(f"a dataset is a folder, not a file: give the folder that holds {folder.name}",
                         path=str(folder))
    return DataError("dataset folder not found", path=str(folder))


def detect_format(folder) -> str:
    """Which loader fits `folder`: ReDial if it (or its official/) holds ReDial's file names
    (train_data.jsonl, test_data.jsonl, ...), else JSON Lines if it holds any other *.jsonl, taken
    for a split (its items.jsonl is then required: loading without one names it; the shared
    INSPIRED folder holds both JSON Lines and TSV files: JSON Lines wins), else INSPIRED TSV if it
    (or official/) holds *.tsv files. A folder is not checked for being a dataset here: a run
    folder's metrics.jsonl reads as a split (`run_dataset.not_a_dataset` asks for a catalog)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise _missing_folder(folder)
    if redial_split_files(folder):
        return "redial"
    if jsonl_split_files(folder):
        return "jsonl"
    if tsv_split_files(folder):
        return "inspired-tsv"
    raise DataError("cannot tell the dataset format: expected items.jsonl with <split>.jsonl, "
                    "ReDial *_data.jsonl files, or INSPIRED <split>.tsv files", path=str(folder))


def _format(folder: Path, fmt: str | None) -> str:
    """`fmt`, or the detected format when it is None; a missing folder is a DataError."""
    if fmt is None:
        return detect_format(folder)
    if not folder.is_dir():
        raise _missing_folder(folder)
    return fmt


def dataset_files(folder, fmt: str | None = None) -> list[Path]:
    """The files `load_dataset(folder, fmt)` reads, those present, sorted: the catalog
    (items.jsonl; ReDial without one: movies_with_mentions.csv), items_sources.jsonl where the
    format reads it (ReDial, INSPIRED TSV) and every split file. What is loaded depends on these
    files only, so a copy of them elsewhere is the same dataset (`pecrs.experiments` hashes them
    into a dataset's fingerprint). `fmt` as in `load_dataset`; a folder whose format cannot be
    told is a DataError."""
    folder = Path(folder)
    fmt = _format(folder, fmt)
    if fmt not in _FILES:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    return sorted({f for f in _FILES[fmt](folder) if f.is_file()})


def load_dataset(path, fmt: str | None = None, *, mentions: str = "pecrs") -> DatasetBundle:
    """Load a dataset folder. `fmt` forces "jsonl", "redial" or "inspired-tsv" (default: detect).
    `mentions` only affects ReDial: "pecrs" (reproduces PECRS's samples) or "all"."""
    path = Path(path)
    fmt = _format(path, fmt)
    if fmt == "jsonl":
        return load_jsonl_folder(path)
    if fmt == "redial":
        return load_redial(path, mentions=mentions)
    if fmt == "inspired-tsv":
        return load_inspired_tsv(path)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
