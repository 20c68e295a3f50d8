"""Run configuration: plain data, read from YAML, overridable from the command line.

Three dataclasses hold every knob of a run: `model` (backbone, LoRA, item text, lengths), `train`
(data, optimisation, negatives, checkpoints) and `inference` (how a trained model ranks and
replies, read by evaluation and serving alike). Their defaults are the paper's settings (§4.1)
but for the backbone, `model.item_encoding` and `model.recall_temperature` (README, "Where pecrs
departs from the paper");
`configs/inspired.yaml` and `configs/redial.yaml` still spell out the paper's main ones, to be read
as the recipe, and the other configs list what they change.

Values read from a file, an override or a checkpoint are checked against the dataclass type
hints, ranges and fixed choices (`RunConfig.validate`; the rules are in config_checks.py) before
anything is loaded; a bad one is a `ConfigError` naming the key, the value and what was expected.
A key written twice in a file is an error too (plain YAML keeps the last).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config_checks import ConfigError, check_value, show_value  # noqa: F401 (ConfigError is pecrs.config's too)
from .data import DEFAULT_ITEM_FIELDS


class Section:
    """A config section: setting an attribute that is not one of its fields is an error, not a
    silently ignored new attribute (`config.train.m_inferense = 8` would otherwise do nothing)."""

    def __setattr__(self, name, value):
        if name not in self.__dataclass_fields__:
            moved = f" (it is inference.{LEGACY_TRAIN_KEYS[name]} now)" if LEGACY_TRAIN_KEYS.get(name) else ""
            raise AttributeError(f"{type(self).__name__} has no setting '{name}'{moved}; "
                                 f"settings: {', '.join(self.__dataclass_fields__)}")
        super().__setattr__(name, value)


@dataclass
class ModelConfig(Section):
    backbone: str = "smollm2-135m-instruct"  # a name known to pecrs.backbone or a local HF folder
    # The paper gives no LoRA settings. The authors' code: r 16, alpha 16, dropout 0.1 on GPT-2's
    # c_attn only (and AdamW weight decay 0.001); pecrs keeps r and adapts every attention projection.
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None  # None: the attention projections of the architecture
    item_fields: list[str] = field(default_factory=lambda: list(DEFAULT_ITEM_FIELDS))
    item_max_tokens: int = 128
    # "cached": item token states come once from the frozen base LM and are reused every step;
    # "adapted": items pass through the LoRA-adapted LM (no gradient), as the paper does.
    item_encoding: str = "cached"
    item_pooling: bool = True      # Table 5 "w/o item pooling": use the last token state instead
    item_head: bool = True         # Table 5 "w/o item head": no h_item MLP
    # Beyond the paper: pooled item states centred and scaled per dimension by the training
    # catalog's statistics (fixed at the start of training, pecrs.heads.ItemEncoder) before h_item.
    item_standardize: bool = False
    recall_temperature: float = 0.1  # scores are -angular_distance / temperature
    context_max_tokens: int = 256
    response_max_tokens: int = 64


@dataclass
class TrainConfig(Section):
    dataset: str = "../shared/datasets/inspired"
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    max_train_samples: int | None = None   # a slice of the train split (tiny runs)
    max_eval_samples: int | None = None    # the first N samples of dev and test (tiny runs)
    # ReDial-format data only (pecrs.loaders.redial): "pecrs" links the mentions PECRS's data did
    # (its sample counts); "all" links every @id of the catalog, as data without
    # respondentQuestions forms needs (under "pecrs" it would keep none).
    redial_mentions: str = "pecrs"
    targets_only: bool = False              # train on the samples that recommend an item only (CPU-budget runs)
    # Beyond the paper: drop the train samples whose target the dialogue mentioned before. They
    # teach the model to repeat a named film, which inference.exclude_mentioned (chat) forbids.
    fresh_targets_only: bool = False
    epochs: int = 20
    batch_size: int = 2                     # per device
    grad_accum: int = 1                     # effective batch = batch_size * grad_accum * devices; an
    # epoch's last update may have fewer micro-batches (each still weighs 1/grad_accum, as accelerate scales)
    lr: float = 3e-5
    lr_reference_batch: int | None = None   # set: lr is tuned at this batch, scaled by sqrt(batch / it)
    warmup_epochs: float = 1.0
    warmup_steps: int | None = None         # set: warm-up in optimiser updates (overrides warmup_epochs)
    weight_decay: float = 0.0               # §4.1 names AdamW without a decay; 0 (torch's default is 0.01)
    # Beyond the paper: the four special-token rows ([ITEM], [SEP], [REC], [REC_END]) learn at
    # lr x this. They start at the mean embedding; at a LoRA learning rate [ITEM] stays unlikely
    # (p ~ 2e-5 where a reply names a movie, after 446 updates at 1e-4) and the model writes
    # years in its place (docs/results.md, "Why the replies were numbers").
    special_token_lr_scale: float = 1.0
    alpha: float = 0.15                     # recall loss weight
    beta: float = 0.85                      # rerank loss weight
    gamma: float = 1.0                      # generation loss weight
    m_train: int = 150                      # rerank negatives per row (and recall negatives per batch)
    recall_pool: int | None = None          # shared recall negatives per step (None: m_train, the paper)
    # Beyond the paper: of each row's m_train negatives, this many are drawn from the items recall
    # ranks first for its context (the top hard_negative_depth, refreshed every epoch) instead of
    # uniformly: inference re-ranks recall's top m_inference, not random items (pecrs.hard_negatives).
    hard_negatives: int = 0
    hard_negative_depth: int = 100
    hard_negatives_from_epoch: int = 2      # the first epoch's recall is untrained: its neighbours are arbitrary
    loss_normalization: str = "batch"       # recall/rerank / B ("batch", Eq. 4-5) or / rows with a target ("targets")
    rerank_temperature: float = 1.0         # rerank logits divided by this in the loss
    label_smoothing: float = 0.0            # generation loss only
    share_negatives_batch: bool = True      # Table 5 ablations
    share_negatives_tasks: bool = True
    mixed_precision: str = "auto"           # "auto": bf16 on GPUs that have it, else none
    frozen_dtype: str = "auto"              # frozen LM weights: "float32", "bfloat16", "auto" (bf16 with bf16 autocast)
    static_shapes: bool | None = None       # fixed tensor shapes every step (None: on a GPU)
    step_mode: str = "auto"                 # "eager", "compile", "cudagraphs", "auto" (pecrs.step)
    compile_backend: str = "inductor"       # torch.compile backend of the compiled modes
    seed: int = 42
    eval_every_epochs: int = 1
    checkpoint_every: int = 200             # batches between mid-epoch checkpoints (0: epoch ends only)
    max_train_minutes: float | None = None  # stop (resumably) once training has run this long
    # Fine-tuning: start from a checkpoint's adapter and heads (a run folder, a checkpoint folder or a
    # shipped model's name), with a fresh optimiser and schedule. Its model section must equal this one.
    init_from: str | None = None


@dataclass
class InferenceConfig(Section):
    """How a trained model ranks and replies. Dev selection during training, `pecrs evaluate`, the
    experiments and serving (`Recommender`, chat, HTTP) all read these, so what is evaluated is
    what is served; a command-line flag or keyword argument overrides one value for one call.
    One exception: `pecrs chat` and the chat page leave out the items a conversation mentioned
    whatever exclude_mentioned says (`--no-exclude-mentioned` keeps them; docs/serving.md).
    (dtype is read by `pecrs evaluate` and serving; training and the experiments keep their own.)"""
    m_inference: int = 700                  # candidates retrieved by recall, then re-ranked (§3.6, §4.1)
    decoding: str = "top_k"                 # response decoding: a preset of pecrs.decoding
    no_repeat_ngram: int = 0                # n > 0: no n-gram of n tokens twice in a reply (0: as the paper)
    batch_size: int = 8                     # dialogue contexts per evaluation batch
    rerank_chunk_size: int = 1024           # candidates re-ranked per pass (bounds activation memory)
    dtype: str = "auto"                     # LM precision: "auto" (bf16 where native), "float32", "bfloat16"
    exclude_mentioned: bool = False         # never recommend an item the context mentions (False: as the paper)


# Settings that lived under `train` before the inference section existed: configs and checkpoints
# that still have them are read into `inference` (eval_generate was never used: dropped).
LEGACY_TRAIN_KEYS = {"m_inference": "m_inference", "decoding": "decoding", "eval_batch_size": "batch_size",
                     "eval_generate": None}
SECTIONS = ("model", "train", "inference")


PACKAGED_CONFIGS = Path(__file__).parent / "configs"   # inspired.yaml, redial.yaml, tiny.yaml, ...


def packaged_configs() -> list[str]:
    """Names of the configs that ship with pecrs (`pecrs train NAME`)."""
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def resolve_config_path(path_or_name: str | Path) -> Path:
    """A config file: the path itself if it exists, else a packaged config of that name, given
    bare ("inspired") or as the docs write it from a checkout ("configs/inspired.yaml")."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    packaged = PACKAGED_CONFIGS / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent in (Path("."), Path("configs")) and packaged.is_file():
        return packaged
    raise FileNotFoundError(f"config file not found: {path} (packaged configs: {', '.join(packaged_configs())})")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "RunConfig":
        """Check every value (type, range, choices); ConfigError on the first bad one. Ints
        given for floats become floats. Returns self. Call it after setting fields by hand."""
        for section in SECTIONS:
            obj = getattr(self, section)
            hints = typing.get_type_hints(type(obj))
            for f in dataclasses.fields(obj):
                key = f"{section}.{f.name}"
                setattr(obj, f.name, check_value(key, getattr(obj, f.name), hints[f.name]))
        t = self.train
        if not (t.alpha or t.beta or t.gamma):   # Eq. 8 would be 0: a run that learns nothing
            raise ConfigError("config train.alpha, train.beta, train.gamma: expected at least one above 0, got all 0")
        if t.recall_pool is not None and t.recall_pool < t.m_train:
            raise ConfigError(f"config train.recall_pool: expected at least train.m_train ({t.m_train}), "
                              f"got {t.recall_pool}")
        for bound, name in ((t.m_train, "train.m_train"), (t.hard_negative_depth, "train.hard_negative_depth")):
            if t.hard_negatives > bound:
                raise ConfigError(f"config train.hard_negatives: expected at most {name} ({bound}), "
                                  f"got {t.hard_negatives}")
        if t.hard_negatives and t.hard_negatives_from_epoch > t.epochs:
            raise ConfigError(f"config train.hard_negatives_from_epoch: expected at most train.epochs ({t.epochs}), "
                              f"got {t.hard_negatives_from_epoch}: no epoch would draw the {t.hard_negatives} "
                              f"hard negatives (1 draws them from the first)")
        return self

    @classmethod
    def from_dict(cls, raw: dict) -> "RunConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"a config is a mapping with sections {_SECTION_NAMES}, got {show_value(raw)}")
        unknown = set(raw) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"unknown config section(s): {sorted(unknown)} (expected {_SECTION_NAMES})")
        raw = _move_legacy_keys(raw)   # then `_section` refuses a section that is not a mapping
        return cls(model=_build(ModelConfig, _section(raw, "model"), "model"),
                   train=_build(TrainConfig, _section(raw, "train"), "train"),
                   inference=_build(InferenceConfig, _section(raw, "inference"), "inference")).validate()

    def overridden(self, overrides: list[str]) -> "RunConfig":
        """A new config: this one with `section.key=value` overrides applied, as `load` applies them."""
        raw = self.to_dict()   # a deep copy (dataclasses.asdict)
        _apply_overrides(raw, overrides)
        return RunConfig.from_dict(raw)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> "RunConfig":
        """Read a YAML config (a path, or the name of one that ships with pecrs: "inspired",
        "tiny", ...), then apply `section.key=value` overrides (values parsed as YAML)."""
        path = resolve_config_path(path)
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a config is a mapping with sections {_SECTION_NAMES}")
        try:
            for s in SECTIONS:
                _section(raw, s)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        raw = _move_legacy_keys(raw)  # so that an override by either name replaces the value
        _apply_overrides(raw, overrides)
        # A relative dataset path in a config file is relative to the working directory, as on
        # the command line; keep it as written so runs are portable.
        return cls.from_dict(raw)


def _apply_overrides(raw: dict, overrides) -> None:
    """Set `section.key=value` overrides (values parsed as YAML) in a raw config mapping, in place."""
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"override '{item}' must look like section.key=value, e.g. train.epochs=2")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value  # not YAML: kept as text, so the type check names it
        if section == "train" and name in LEGACY_TRAIN_KEYS:  # an old name overrides the new setting
            if LEGACY_TRAIN_KEYS[name] is None:
                continue
            section, name = "inference", LEGACY_TRAIN_KEYS[name]
        if raw.get(section) is None:
            raw[section] = {}
        raw[section][name] = parsed


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key written twice in one mapping is an error: PyYAML keeps
    the last value silently, and a config whose first `lr:` is ignored trains something else."""

    def construct_mapping(self, node, deep=False):
        first_line: dict[str, int] = {}
        # The keys as written, before `<<` merges are flattened (a merged key may be overridden).
        for key_node in (k for k, _ in node.value if k.tag == "tag:yaml.org,2002:str"):
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in first_line:
                raise ConfigError(f"line {line}: '{key}' is given twice (first at line {first_line[key]})")
            first_line[key] = line
        return super().construct_mapping(node, deep)


_SECTION_NAMES = ", ".join(f"'{s}'" for s in SECTIONS)


def _section(raw: dict, name: str) -> dict:
    """raw[name] as a mapping: absent or empty ("model:" with nothing under it) is {}; a list, a
    string or false is an error, not the defaults."""
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config section '{name}' must be a mapping of key: value, got {show_value(value)}")
    return value


def _move_legacy_keys(raw: dict) -> dict:
    """`raw` with train.m_inference / decoding / eval_batch_size moved to the inference section
    (LEGACY_TRAIN_KEYS), so run folders and configs written before it load unchanged. A value set
    in both places must agree."""
    train = raw.get("train")
    if not isinstance(train, dict) or not set(train) & set(LEGACY_TRAIN_KEYS):
        return raw
    train, inference = dict(train), dict(_section(raw, "inference"))
    for old, new in LEGACY_TRAIN_KEYS.items():
        if old not in train:
            continue
        value = train.pop(old)
        if new is None:
            continue
        if new in inference and inference[new] != value:
            raise ConfigError(f"config train.{old} ({value!r}) and inference.{new} ({inference[new]!r}) disagree; "
                              f"inference.{new} is the setting (train.{old} is its old name)")
        inference[new] = value
    return {**raw, "train": train, "inference": inference}


def _build(kind, values: dict, section: str):
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{section}' must be a mapping of key: value, got {show_value(values)}")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown key(s) in config section '{section}': {sorted(unknown, key=str)}; "
                          f"known: {sorted(names)}")
    return kind(**values)
