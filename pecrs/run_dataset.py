"""A run's dataset: where it is, and whether a folder holds the same files.

A run records the dataset it trained on as a path relative to the directory training ran from,
with a hash of its files (`dataset_record`). `pecrs evaluate`, `pecrs export`, a resumed training
run and a recommender without a catalog of its own find it again here (`find_dataset`), and check
that a copy found elsewhere, such as the GPU machine's, is the same data (`matches_record`); a
resumed run must train on the same data as it started with (`check_same_data`).
"""
from __future__ import annotations

from pathlib import Path

from .config import RunConfig
from .data import DataError
from .loaders import detect_format

CATALOG_FILE = "items.jsonl"   # a dataset's catalog, and the copy Recommender.save_pretrained writes


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


# The train.* settings that decide which samples a run trains and is selected on: resuming with
# another value would continue a run on other data (or compare dev scores of two dev sets for
# best/), so it is refused (`check_same_data`; train.dataset is compared as a folder, not a
# spelling). Everything else may change on resume: the length of the run (epochs, the deadline,
# checkpoint and eval cadence), how steps run (precision, step mode, batch size on a smaller GPU)
# and the inference section. A batch size or seed changed mid-epoch re-cuts the rest of that
# epoch (a few samples twice or not at all), a lesser harm than a run that can never continue.
DATA_KEYS = ("train_split", "dev_split", "max_train_samples", "max_eval_samples", "targets_only",
             "fresh_targets_only", "redial_mentions")


def check_same_data(config: RunConfig, last: Path, what: str) -> None:
    """A ValueError naming every DATA_KEYS setting, and train.dataset, that differs from the run
    in `last`. The dataset is the same when it holds the files recorded (`matches_record`: the same
    folder edited since is not); a run saved before the record existed compares its config's
    spelling, then the folders."""
    from .pretrained import CONFIG_FILE, read_meta   # (pretrained imports torch: only when a run resumes)

    meta = read_meta(last)
    theirs, ours = RunConfig.from_dict(meta["config"]).train, config.train
    differ = [f"train.{k} is {getattr(theirs, k)!r} there, {getattr(ours, k)!r} here"
              for k in DATA_KEYS if getattr(theirs, k) != getattr(ours, k)]
    recorded, here = meta.get("data"), Path(ours.dataset).resolve()
    there = Path(recorded["dataset"]) if recorded else Path(theirs.dataset).resolve()
    # With a record: the same files (a copy elsewhere counts). Without one: the same folder or spelling.
    same_dataset = (matches_record(recorded, here) if recorded
                    else here == there or theirs.dataset == ours.dataset)
    if recorded and here == there and not same_dataset:
        differ.insert(0, f"the files of train.dataset {here} changed since it was saved")
    elif not same_dataset:
        def shown(spelling, folder):  # the folder too where the spelling is relative
            return repr(spelling) if str(folder) == spelling else f"{spelling!r} ({folder})"
        differ.insert(0, f"train.dataset is {shown(theirs.dataset, there)} there, {shown(ours.dataset, here)} here")
    if differ:
        raise ValueError(f"{what}: {last / CONFIG_FILE} was trained on other data: " + ", ".join(differ))
