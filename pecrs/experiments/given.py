"""A trained model given to an experiment (`pecrs experiment NAME --model RUN`) instead of one it
trains: a run folder, a checkpoint folder or a shipped model's name ("inspired").

The model brings its own config and dataset, which replace `--config`, and it stands for the
training run whose settings are its own: the part that would train that run records the model
instead (runs.training_part), evaluations read its checkpoint (runs.checkpoint), and every part
that evaluates it is keyed by a hash of its weights, so numbers stored for another model with the
same settings are never taken for its own. Overrides may change only what evaluation reads; in
an experiment that also trains other models (Table 5's ablations, Figure 3's other M_train) not
even that when it would train them otherwise than the given model was.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..config import LEGACY_TRAIN_KEYS, RunConfig
from .keys import dataset_fingerprint, dataset_key, dataset_label, train_key

# What may be overridden on a given model: what evaluation reads. train.dataset only to another
# copy of the model's data; train.seed is the decoding's and the constant reply's draw.
EVALUATION_SETTINGS = ("train.dataset", "train.test_split", "train.max_eval_samples", "train.seed", "model.backbone")


@dataclass(frozen=True)
class GivenModel:
    checkpoint: Path
    config: RunConfig   # the one it was trained with, its dataset found here
    weights: str        # hash of its weight files, in the keys of the parts that evaluate it
    info: dict          # what its checkpoint says of it: the result of the part it stands for

    def spec(self) -> dict:
        """What the keys of its parts hold of it: its weights, and how far its training had got
        when it was given unfinished (so numbers labelled partly trained are redone once it is not)."""
        partial = {} if self.info.get("finished") else {"partly_trained": [self.info.get("epoch"), self.info.get("batch")]}
        return {"given_model": self.weights, **partial}


def evaluation_setting(dotted: str) -> bool:
    section, _, name = dotted.partition(".")
    return section == "inference" or dotted in EVALUATION_SETTINGS or (section == "train" and name in LEGACY_TRAIN_KEYS)


def weights_hash(checkpoint: Path) -> str:
    """A hash of the adapter's and heads' weight files. The tokenizer is left out: a checkpoint
    saves the one it was trained with, which in practice changes only with the weights."""
    from ..pretrained import ADAPTER_DIR, HEADS_FILE

    h = hashlib.sha1()
    for f in [checkpoint / HEADS_FILE, *sorted((checkpoint / ADAPTER_DIR).glob("*.safetensors"))]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def unfinished_training(checkpoint: Path) -> dict | None:
    """How far the training of a run folder's best/ had got, when its run has not finished (its
    last/ has completed fewer epochs than it is configured for: stopped by train.max_train_minutes,
    interrupted, or still running); None for a finished run or a checkpoint outside a run folder
    (or a run whose last/ cannot be read: nothing says it is unfinished)."""
    from .json_files import read_json
    from .parts import DONE_FILE

    folder = checkpoint.parent
    meta = read_json(folder / "last" / "pecrs_config.json") if checkpoint.name == "best" else None
    if meta is None or (folder / DONE_FILE).is_file():
        return None
    trainer, epochs = meta.get("trainer") or {}, (meta.get("config") or {}).get("train", {}).get("epochs")
    epoch, batch = int(trainer.get("epoch") or 0), int(trainer.get("batch") or 0)
    if epochs is None or (epoch >= int(epochs) and not batch):
        return None
    return {"epoch": epoch, "batch": batch, "epochs": int(epochs)}


def model_dataset(model: str, trained: RunConfig, checkpoint: Path, given: str | None) -> str:
    """The dataset folder the experiment reads: the model's own (found as `pecrs evaluate` finds
    it), or `given` (train.dataset=DIR) when that holds the same files or the own is not here."""
    from ..run_dataset import DatasetNotFound, dataset_record, find_dataset, matches_record, not_a_dataset

    try:
        own = find_dataset(trained.train.dataset, checkpoint)
    except DatasetNotFound as e:
        if given is None:   # the error names every place looked and why each was passed over
            raise ValueError(f"--model {model}: {e}; give the folder with train.dataset=DIR") from None
        own = None
    if given is None:
        return str(own.resolve())
    why = not_a_dataset(Path(given))
    if why is not None:
        raise ValueError(f"--model {model}: train.dataset={given}: {why}")
    if own is not None and not matches_record(dataset_record(own), Path(given)):
        raise ValueError(f"--model {model}: train.dataset={given} holds other data than the model was trained on "
                         f"({own.resolve()}); `pecrs evaluate {model} --dataset {given}` evaluates it on other data")
    return str(Path(given).resolve())


def load_given(model: str, common: list[str], prefixed: dict[str, list[str]],
               trains_others: bool = False, accept_partial: bool = False) -> tuple[dict[str, RunConfig], dict, GivenModel]:
    """({dataset key: config}, how it was made, the model) for `--model`; `common` and `prefixed`
    are the overrides (`runner.split_overrides`). The config is the model's own with the overrides
    applied; one that would change the training is named and refused, and with `trains_others`
    so is one that changes the training key (the other models would be trained otherwise). A run
    folder whose training has not finished is refused unless `accept_partial`: then its best/ is
    evaluated and labelled partly trained, as a model trained here would be."""
    from .runs import training_progress
    from ..pretrained import checkpoint_dir, read_meta

    checkpoint = checkpoint_dir(model)
    meta = read_meta(checkpoint)
    trained = RunConfig.from_dict(meta["config"])
    key = dataset_key(trained)
    other = sorted(set(prefixed) - {key})
    if other:
        raise ValueError(f"--model {model} was trained on {dataset_label(trained)}: override prefix(es) {other} "
                         "name no dataset of this experiment")
    shown = {o: o for o in common} | {o: f"{key}:{o}" for o in prefixed.get(key, [])}
    overrides = list(shown)
    refused = [shown[o] for o in overrides if "=" in o and not evaluation_setting(o.partition("=")[0])]
    if refused:
        raise ValueError(f"--model {model}: {', '.join(refused)} would change how the model was trained; a given "
                         f"model is evaluated as it was trained: override only what evaluation reads "
                         f"({', '.join(EVALUATION_SETTINGS)}, inference.*)")
    datasets = [o.partition("=")[2] for o in overrides if o.startswith("train.dataset=")]
    trained.train.dataset = model_dataset(model, trained, checkpoint, datasets[-1] if datasets else None)
    config = trained.overridden([o for o in overrides if not o.startswith("train.dataset=")])
    if trains_others and train_key(config) != train_key(trained):
        changed = [shown[o] for o in overrides if train_key(trained.overridden([o])) != train_key(trained)]
        raise ValueError(f"--model {model}: this experiment also trains other models, and {', '.join(changed)} "
                         "would train them otherwise than the given model was; leave it out")
    unfinished = unfinished_training(checkpoint)
    if unfinished is not None and not accept_partial:
        raise ValueError(f"--model {model}: the run in {checkpoint.parent} has not finished training "
                         f"({training_progress(unfinished)}); resume it with `pecrs train` into the same folder, "
                         "or pass --accept-partial to evaluate its best/ as it is (labelled partly trained)")
    info = {"given": True, "model": model, "path": str(checkpoint), "finished": unfinished is None,
            "epochs": trained.train.epochs, **({"epoch": meta["epoch"]} if "epoch" in meta else {}),
            **({"batch": meta["batch"]} if meta.get("batch") else {})}
    if unfinished is not None:  # epoch/batch stay best/'s own: the label says what was evaluated
        info["run_progress"] = training_progress(unfinished)
    if meta.get("export"):
        info["export"] = meta["export"]
    how = {key: {"model": model, "checkpoint": str(checkpoint), "overrides": [shown[o] for o in overrides],
                 "label": dataset_label(config), "dataset": config.train.dataset,
                 "fingerprint": dataset_fingerprint(config.train.dataset), "resolved": config.to_dict()}}
    return {key: config}, how, GivenModel(checkpoint, trained, weights_hash(checkpoint), info)


def output_dir(checkpoint: Path) -> Path:
    """The default output folder of experiments on a given model, apart from those that train
    (runs/experiments), so that neither overwrites the other's records: runs/experiments-NAME."""
    name = checkpoint.parent.name if checkpoint.name in ("best", "last") else checkpoint.name
    return Path("runs") / f"experiments-{name}"


def given_note(name: str, info: dict) -> str:
    """The table's line on the model a `train` part stands for."""
    export = info.get("export") or {}
    made = f", exported from {export['source']} at git {export.get('git_revision')}" if export.get("source") else ""
    at = f"saved at epoch {info['epoch']}, " if info.get("epoch") is not None else ""
    unfinished = f"; its run had not finished: {info['run_progress']}" if info.get("run_progress") else ""
    return (f"`{name}`: the given model `{info.get('model')}` (`{info.get('path')}`{made}; {at}"
            f"configured for {info.get('epochs')} epochs{unfinished}), not trained here")
