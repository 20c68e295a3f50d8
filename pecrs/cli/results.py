"""Where an evaluation's result goes and what it records (`pecrs evaluate`): the dataset it
measured, found as a chat's catalog is; the file name, `eval_<split>.json` only for the run's own
full figures (the file `pecrs export` quotes) and a name saying what differs otherwise; and the
paths refused because writing them would destroy an input (the dataset, a checkpoint)."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def _measured_dataset(given: str | None, ckpt: Path, meta: dict, folder: bool = True) -> tuple[Path, bool | None]:
    """The dataset an evaluation reads, found before the backbone loads, and whether it is the
    run's own (its config's train.dataset; None: that one was not found to compare with). That recorded path is relative to where training ran:
    it is looked for as a chat's catalog is (`run_dataset.find_dataset`: the working
    directory, then each folder above the checkpoint). --dataset is a path from the working
    directory (`folder` False: any path, the standardized protocol takes a test file too); it is
    the run's own when it holds the same files (`matches_record`: a copy elsewhere counts)."""
    from ..run_dataset import DatasetNotFound, dataset_record, find_dataset, matches_record, not_a_dataset

    recorded = meta["config"].get("train", {}).get("dataset")
    try:
        own = find_dataset(recorded, ckpt) if recorded else None
    except DatasetNotFound as e:
        if given is None:
            looked = "; ".join(f"{place} ({why})" for place, why in e.looked)
            raise ValueError(f"the model's dataset (its config's train.dataset) {recorded}: no such folder with a "
                             f"dataset in it, from the working directory {Path.cwd()} or above the checkpoint "
                             f"{ckpt} (looked in {looked}); give the dataset's folder with --dataset DIR") from None
        own = None
    if given is None:
        if own is None:
            raise ValueError(f"{ckpt}: its config records no train.dataset; give the dataset's folder with --dataset DIR")
        # Found, not given: say which copy (a relative path is looked for in several places).
        print(f"pecrs: the model's dataset {recorded}: {own.resolve()}", file=sys.stderr)
        return own, True
    why = not_a_dataset(Path(given)) if folder or not Path(given).is_file() else None
    if why is not None:
        raise ValueError(f"--dataset {given}: {why} "
                         f"(from the working directory {Path.cwd()}); give the dataset's folder with --dataset DIR")
    return Path(given), None if own is None else matches_record(dataset_record(own), Path(given))


def _variant(args, dataset: Path, own: bool | None, meta: dict) -> tuple[str | None, list[str], list[str]]:
    """What sets this evaluation apart from the run's own figures: (another dataset's folder
    name, the other parts of the default file name: "first<N>" for --max-samples N, the fields
    joined by "-" for --item-fields other than the run's, the decoding, "norepeat<N>", "m<M>",
    "exclude-mentioned"/"with-mentioned" given other than the run's, "inject-target-turns",
    "no-generate", "no-ppl", and
    why each is there). None of them: eval_<split>.json, the file `pecrs export` quotes as the run's
    test metrics, measured on the run's dataset, whole split, with its own settings, in full."""
    from ..config import RunConfig

    extras: list[str] = []
    recorded = meta["config"].get("train", {}).get("dataset")
    why = [] if own else [f"--dataset {args.dataset} is not the run's dataset" if own is False
                          else f"the run's dataset {recorded} was not found to compare --dataset {args.dataset} with"]
    run = RunConfig.from_dict(meta["config"])
    if args.max_samples:   # named by the samples kept: the run's own train.max_eval_samples may cut more
        kept = samples_kept(args, run.train)
        extras.append(f"first{kept}")
        why.append(f"--max-samples {args.max_samples}" + (f" (the run's train.max_eval_samples keeps {kept})"
                                                          if kept < args.max_samples else ""))
    fields = args.item_fields.split(",") if getattr(args, "item_fields", None) else None
    if fields and fields != list(run.model.item_fields):
        extras.append("-".join(fields))
        why.append(f"--item-fields {args.item_fields}")
    # The run's own figures are its full evaluation (replies, PPL) at its own inference settings.
    for flag, name, part in (("--decoding", "decoding", str), ("--no-repeat-ngram", "no_repeat_ngram", "norepeat{}".format),
                             ("--m-inference", "m_inference", "m{}".format),
                             ("--exclude-mentioned", "exclude_mentioned", {True: "exclude-mentioned", False: "with-mentioned"}.get)):
        given = getattr(args, name, None)
        if given is not None and given != getattr(run.inference, name):
            extras.append(part(given))
            why.append(f"{flag} {given}")
    if getattr(args, "inject", "every-turn") != "every-turn":
        extras.append(f"inject-{args.inject}")
        why.append(f"--inject {args.inject}")
    for flag in ("no_generate", "no_ppl"):
        if getattr(args, flag, False):
            extras.append(flag.replace("_", "-"))
            why.append(f"--{flag.replace('_', '-')}")
    folder = dataset.resolve() if dataset.is_dir() else dataset.resolve().parent   # (standardized: a test file)
    return (None if own else folder.name), extras, why


def _result_name(what: str, variant: tuple[str | None, list[str], list[str]]) -> str:
    """eval_<what>.json, another dataset's folder name first: eval_redial_test.json,
    eval_test_first150.json, eval_redial_test_first8_title-genres.json."""
    dataset, extras, _ = variant
    return "eval_" + "_".join([*([dataset] if dataset else []), what, *extras]) + ".json"


def _say_where(output: str | None, out: Path, variant: tuple[str | None, list[str], list[str]], canonical: str) -> None:
    """A default file name other than the run's own says why on stderr (stdout keeps the JSON)."""
    if output is None and variant[2]:
        print(f"pecrs: writing {out}, not {canonical} (the run's own figures): {'; '.join(variant[2])}",
              file=sys.stderr)


def samples_kept(args, train) -> int | None:
    """How many samples of the split an evaluation reads when it is cut (None: all): --max-samples,
    or the run's own train.max_eval_samples, which `prepare` applies to dev and test."""
    config_slice = train.max_eval_samples if getattr(args, "split", None) in (train.dev_split, train.test_split) else None
    cuts = [n for n in (args.max_samples, config_slice) if n]
    return min(cuts) if cuts else None


def _measured_on(dataset: Path, args, train=None) -> dict:
    """What a result records of what it measured: the dataset (its absolute path, and the hash
    of its files `pecrs export` compares with the run's), the samples kept when the split was cut
    (`samples_kept`, with the run's `train` section), and --item-fields when set."""
    from ..run_dataset import dataset_record

    kept = samples_kept(args, train) if train is not None else args.max_samples
    return {**dataset_record(dataset),
            **({"max_samples": kept} if kept else {}),
            **({"item_fields": args.item_fields.split(",")} if getattr(args, "item_fields", None) else {})}


def _output_path(output: str | None, ckpt: Path, filename: str, option: str = "--output",
                 dataset: Path | None = None) -> Path:
    """Where the result JSON goes (--output, else `_result_path`), its folder created now: a path
    that cannot be written, or that holds what evaluations read (`_input_there`), fails before
    the evaluation runs, not after."""
    out = Path(output) if output else _result_path(ckpt, filename)
    why = _input_there(out, dataset)
    if why:
        raise ValueError(f"{option} {out}: refused, {why}; write it elsewhere")
    try:
        if out.is_dir():
            raise IsADirectoryError(f"{out} is a folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
            raise PermissionError(f"{out} is not writable")
    except OSError as e:
        raise ValueError(f"{option} {out}: cannot write the result there ({e})") from None
    return out


def _input_there(out: Path, dataset: Path | None) -> str | None:
    """Why writing `out` would destroy an input (None: it would not): a file of the dataset
    being evaluated, or a .jsonl/.tsv/.csv beside them that the loaders would read as part of it
    next time (a split, a catalog); a file of a pecrs checkpoint (any folder holding
    pecrs_config.json: its named files and subfolders; a shipped model, whole), or the
    metrics.jsonl / config.yaml that training keeps in a run folder."""
    from ..catalog_source import CATALOG_FILE
    from ..export import CARD_FILE
    from ..loaders import dataset_files
    from ..pretrained import ADAPTER_DIR, CONFIG_FILE, FILES_KEY, HEADS_FILE, is_shipped, read_meta
    from ..vector_cache import VECTORS_FILE

    target = out.resolve()
    if dataset is not None:
        data = dataset.resolve()
        if target == data:
            return f"it is the dataset file {dataset} this evaluation reads"
        try:
            read = {f.resolve() for f in dataset_files(data)} if data.is_dir() else set()
        except ValueError:   # a folder whose format cannot be told: loading it fails with its own message
            read = set()
        if target in read:
            return f"it is {target.relative_to(data)} of the dataset {dataset}, which this evaluation reads"
        if target.parent in (data, data / "official") and target.suffix in (".jsonl", ".tsv", ".csv"):
            return (f"a {target.suffix} file in the dataset folder {dataset} is read as part of the dataset "
                    f"(a split or its catalog)")
    for folder in target.parents:
        if (folder / CONFIG_FILE).is_file():
            try:
                extra = read_meta(folder).get(FILES_KEY, [])
            except ValueError:
                extra = []
            own = {CONFIG_FILE, HEADS_FILE, ADAPTER_DIR, "tokenizer", CATALOG_FILE, VECTORS_FILE, CARD_FILE, *extra}
            if is_shipped(folder):
                return f"it is inside the model {folder} that ships with pecrs"
            if target.parent != folder or target.name in own:
                return f"it is part of the pecrs checkpoint {folder}"
        if target.parent == folder and target.name in ("metrics.jsonl", "config.yaml") and any(
                (folder / sub / CONFIG_FILE).is_file() for sub in ("best", "last")):
            return f"it is the {target.name} that `pecrs train` keeps in the run folder {folder}"
    return None


def _result_path(ckpt: Path, filename: str) -> Path:
    """Where an evaluation of `ckpt` is written: where `pecrs export` reads it (`results_dir`: the
    run folder of a best/, else the checkpoint folder), or for a model shipped inside the package
    (never written into) the working directory, as eval_<model>_<...>.json."""
    from ..pretrained import is_shipped, results_dir

    return Path.cwd() / f"eval_{ckpt.name}_{filename[5:]}" if is_shipped(ckpt) else results_dir(ckpt) / filename
