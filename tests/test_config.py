"""Config loading: overrides anywhere on the command line, and every value checked (type, range,
choices) before any model or data is loaded, with the key, the value and what was expected."""
import json
from pathlib import Path

import pytest
import yaml

import pecrs.train
from pecrs.cli import build_parser, main
from pecrs.config import ConfigError, RunConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = str(CONFIGS / "tiny.yaml")


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  backbone: tiny-llama\ntrain:\n  dataset: data\n  epochs: 2\n  lr: 1.0e-3\n")
    return path


@pytest.mark.parametrize("argv", [
    ["train", TINY, "--output-dir", "/tmp/x", "train.epochs=1", "model.lora_r=2"],
    ["train", "--quiet", TINY, "train.epochs=1", "--output-dir", "/tmp/x", "model.lora_r=2"],
    ["train", TINY, "train.epochs=1", "--output-dir", "/tmp/x", "model.lora_r=2"],
])
def test_train_overrides_after_options(argv):
    args = build_parser().parse_args(argv)
    assert args.config == TINY and args.output_dir == "/tmp/x"
    assert args.overrides == ["train.epochs=1", "model.lora_r=2"]


def test_experiment_overrides_after_options():
    args = build_parser().parse_args(["experiment", "table5", "--config", TINY, "train.epochs=1",
                                      "--output-dir", "/tmp/e", "inspired:model.lora_r=2"])
    assert args.overrides == ["train.epochs=1", "inspired:model.lora_r=2"] and args.output_dir == "/tmp/e"


def test_cli_train_runs_with_overrides_after_options(monkeypatch, config_file, tmp_path, capsys):
    seen = {}

    def fake_train(config, output, progress=True):
        seen.update(config=config, output=output)
        return {"epoch": 1, "global_step": 1, "best": None, "best_epoch": None}

    monkeypatch.setattr(pecrs.train, "train", fake_train)
    assert main(["train", str(config_file), "--output-dir", str(tmp_path / "run"), "train.epochs=1",
                 "--quiet", "train.lr=3e-5"]) == 0
    assert seen["config"].train.epochs == 1 and seen["config"].train.lr == pytest.approx(3e-5)
    assert isinstance(seen["config"].train.lr, float)     # YAML 1.1 reads 3e-5 as text
    assert seen["output"] == str(tmp_path / "run")


@pytest.mark.parametrize("override, words", [
    ("train.epochs=abc", ["train.epochs", "'abc'", "integer"]),
    ("train.epochs=1.5", ["train.epochs", "1.5", "integer"]),
    ("train.batch_size=0", ["train.batch_size", "0", ">= 1"]),
    ("train.grad_accum=-2", ["train.grad_accum", "-2", ">= 1"]),
    ("train.lr=-0.1", ["train.lr", "-0.1", "> 0"]),
    ("train.lr=.nan", ["train.lr", "nan", "> 0"]),
    ("train.lr=.inf", ["train.lr", "inf", "finite"]),
    ("train.lr=fast", ["train.lr", "'fast'", "number"]),
    ("train.eval_every_epochs=0", ["train.eval_every_epochs", ">= 1"]),
    ("train.m_train=0", ["train.m_train", ">= 1"]),
    ("train.label_smoothing=1", ["train.label_smoothing", "< 1"]),
    ("train.share_negatives_batch=1", ["train.share_negatives_batch", "true or false", "1 (int)"]),
    ("train.max_train_minutes=0", ["train.max_train_minutes", "> 0"]),
    ("train.mixed_precision=fp32", ["train.mixed_precision", "'fp32'", "auto, no, fp16, bf16"]),
    ("inference.decoding=telepathy", ["inference.decoding", "'telepathy'", "top_k"]),
    ("inference.dtype=fp8", ["inference.dtype", "'fp8'", "auto, float32, bfloat16"]),
    ("inference.m_inference=0", ["inference.m_inference", ">= 1"]),
    ("inference.no_repeat_ngram=-1", ["inference.no_repeat_ngram", "-1", ">= 0"]),
    ("model.item_encoding=frozen", ["model.item_encoding", "'frozen'", "cached, adapted"]),
    ("model.item_fields=[title,budget]", ["model.item_fields", "budget", "genres"]),
    ("model.item_fields=title", ["model.item_fields", "'title'", "list of strings"]),
    ("model.item_fields=[]", ["model.item_fields", "empty"]),
    ("model.item_fields=[title,genres,title]", ["model.item_fields", "['title']", "twice"]),
    ("model.lora_dropout=1.0", ["model.lora_dropout", "< 1"]),
    ("model.recall_temperature=0", ["model.recall_temperature", "> 0"]),
    ("model.lora_target_modules=q_proj", ["model.lora_target_modules", "list of strings or null"]),
    ("model.backbone=null", ["model.backbone", "string", "None"]),
    ("train.dataset=", ["train.dataset", "None", "write '' for an empty string"]),
    ("train.epochs=[1", ["train.epochs", "'[1'"]),
    ("train.seed=-1", ["train.seed", ">= 0"]),
    ("train.seed=4294967296", ["train.seed", "<= 4294967295"]),
    ("model.lora_target_modules=[]", ["model.lora_target_modules", "empty"]),
    ("train.max_train_samples=0", ["train.max_train_samples", "0", ">= 1"]),   # 0 once read as "all"
    ("train.max_eval_samples=0", ["train.max_eval_samples", "0", ">= 1"]),
])
def test_bad_values_name_key_value_and_type(config_file, override, words):
    with pytest.raises(ConfigError) as e:
        RunConfig.load(config_file, [override])
    for word in words:
        assert word in str(e.value), (word, str(e.value))


def test_cli_train_refuses_an_output_dir_in_a_saved_model_or_under_a_file(monkeypatch, config_file, tmp_path, capsys):
    """`--output-dir RUN/best` (or a folder inside an export) would put a run inside a saved model,
    which would then load as that run's best/ (checkpoint_dir): refused, nothing started or written."""
    monkeypatch.setattr(pecrs.train, "train", lambda *a, **k: pytest.fail("training started"))
    best = tmp_path / "run" / "best"
    best.mkdir(parents=True)
    (best / "pecrs_config.json").write_text("{}")
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["train", str(config_file), "--output-dir", str(afile / "sub")]) == 2   # before any loading
    assert f"--output-dir {afile / 'sub'}: {afile} is a file, not a folder" in capsys.readouterr().err
    for output in (best, best / "more"):
        assert main(["train", str(config_file), "--output-dir", str(output)]) == 2
        err = capsys.readouterr().err
        assert f"--output-dir {output}: {best} is a saved model (pecrs_config.json), not a run folder" in err
    assert sorted(p.name for p in best.iterdir()) == ["pecrs_config.json"]


def test_an_os_error_is_a_message_not_a_traceback(monkeypatch, config_file, tmp_path, capsys):
    """Any OSError a command meets (a folder under a file, a full disk, a permission) ends as
    `pecrs: error: ...` naming the path, exit status 2, as the other errors do."""
    def fail(*a, **k):
        raise NotADirectoryError(20, "Not a directory", "/data/afile/sub/main")

    monkeypatch.setattr(pecrs.train, "train", fail)
    assert main(["train", str(config_file), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == "pecrs: error: [Errno 20] Not a directory: '/data/afile/sub/main'\n"


def test_the_empty_string_hint_is_for_string_keys_only(config_file):
    with pytest.raises(ConfigError) as e:
        RunConfig.load(config_file, ["train.epochs="])
    assert str(e.value) == "config train.epochs: expected an integer, got None (NoneType)"


def test_all_three_loss_weights_zero_is_refused(config_file):
    """Eq. 8 with α = β = γ = 0 is 0: a run that finishes, saves checkpoints and learns nothing."""
    with pytest.raises(ConfigError, match="train.alpha, train.beta, train.gamma: expected at least one above 0"):
        RunConfig.load(config_file, ["train.alpha=0", "train.beta=0", "train.gamma=0"])
    assert RunConfig.load(config_file, ["train.alpha=0", "train.beta=0"]).train.gamma > 0   # replies only: fine


def test_experiment_configs_are_checked_and_their_grids_are_positive_and_distinct(capsys):
    """`pecrs experiment fig3 --m-train 0` once trained with m_train 0, which `pecrs train` refuses:
    copy_config checks what it sets, and the grids are distinct integers >= 1."""
    from pecrs.experiments.keys import copy_config

    with pytest.raises(ConfigError, match="train.m_train"):
        copy_config(RunConfig(), **{"train.m_train": 0})
    assert copy_config(RunConfig(), **{"train.m_train": 5}).train.m_train == 5
    for grid in ("0,5", "5,5", ",", "-1", "x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["experiment", "fig3", "--m-train", grid])
        assert f"expected distinct comma-separated integers >= 1, got '{grid}'" in capsys.readouterr().err
    assert build_parser().parse_args(["experiment", "fig3", "--m-train", "50,150"]).m_train == [50, 150]


def test_bad_value_in_cli_fails_before_anything_loads(monkeypatch, config_file, capsys):
    monkeypatch.setattr(pecrs.train, "train", lambda *a, **k: pytest.fail("training started"))
    assert main(["train", str(config_file), "--output-dir", "/tmp/never", "train.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and ">= 1" in err and "Traceback" not in err


def test_bad_value_in_the_file_itself(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train\.epochs.*'many'"):
        RunConfig.load(path)
    path.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match="mapping"):
        RunConfig.load(path)
    for empty_like in ("[]", "false", "''"):   # read as "all defaults" before
        path.write_text(f"model: {empty_like}\n")
        with pytest.raises(ConfigError, match=r"c\.yaml: config section 'model' must be a mapping"):
            RunConfig.load(path)
        with pytest.raises(ConfigError, match="section 'model' must be a mapping"):
            RunConfig.from_dict({"model": yaml.safe_load(empty_like)})   # a checkpoint's pecrs_config.json
    path.write_text("model:\ntrain:\n  epochs: 2\n")                     # an empty section is the defaults
    assert RunConfig.load(path).train.epochs == 2
    path.write_text("train: {epochs: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.load(path)
    path.write_bytes(b"train:\n  dataset: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not UTF-8 text \(byte 21\)"):
        RunConfig.load(path)


def test_a_key_written_twice_is_an_error_not_the_last_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-4\n  epochs: 2\n  lr: 3.0e-5\n")   # plain YAML keeps 3.0e-5
    with pytest.raises(ConfigError, match=r"c\.yaml: line 4: 'lr' is given twice \(first at line 2\)"):
        RunConfig.load(path)
    path.write_text("train:\n  epochs: 2\ntrain:\n  lr: 1.0e-4\n")
    with pytest.raises(ConfigError, match=r"line 3: 'train' is given twice"):
        RunConfig.load(path)
    # The same key in two sections is no repeat, nor is a key that overrides a YAML merge.
    path.write_text("train:\n  batch_size: 8\ninference:\n  batch_size: 4\n")
    assert (RunConfig.load(path).train.batch_size, RunConfig.load(path).inference.batch_size) == (8, 4)
    from pecrs.config import _UniqueKeyLoader
    merged = yaml.load("a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  p: 3\n", Loader=_UniqueKeyLoader)
    assert merged["b"] == {"p": 3, "q": 2}


def test_good_values_pass_and_stay_plain(config_file):
    cfg = RunConfig.load(config_file, ["train.max_train_minutes=null", "train.warmup_epochs=1",
                                       "train.dev_split=''", "model.lora_target_modules=[q_proj,v_proj]",
                                       "inference.decoding=nucleus_0.95", "model.item_fields=[title,year]"])
    assert cfg.train.max_train_minutes is None and cfg.train.warmup_epochs == 1.0
    assert isinstance(cfg.train.warmup_epochs, float)
    assert cfg.model.lora_target_modules == ["q_proj", "v_proj"] and cfg.train.dev_split == ""
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    for path in CONFIGS.glob("*.yaml"):
        RunConfig.load(path)
    RunConfig().validate()


def test_validate_catches_values_set_in_code():
    cfg = RunConfig()
    cfg.train.batch_size = "4"
    with pytest.raises(ConfigError, match=r"train\.batch_size.*'4' \(str\)"):
        cfg.validate()


@pytest.mark.parametrize("argv, words", [
    (["--item-fields", "title,budget"], ["--item-fields", "budget"]),
    (["--batch-size", "0"], ["--batch-size", "positive integer", "'0'"]),
    (["--m-inference", "many"], ["--m-inference", "'many'"]),
    (["--max-samples", "-3"], ["--max-samples", "'-3'"]),
])
def test_evaluate_options_checked_while_parsing(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["evaluate", "run", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and all(w in err for w in words), err


def test_evaluate_options_that_parse():
    args = build_parser().parse_args(["evaluate", "run", "--item-fields", "title,genres", "--batch-size", "4"])
    assert args.item_fields == "title,genres" and args.batch_size == 4


def test_checking_a_config_needs_no_torch():
    """Checking a config does not import torch (4 s), whatever its decoding preset."""
    import subprocess
    import sys

    code = ("import sys; from pecrs.config import RunConfig; RunConfig().validate(); "
            "RunConfig.from_dict({'inference': {'decoding': 'nucleus_0.95'}}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_bad_config_fails_before_torch_is_imported(config_file):
    """`pecrs train C train.epochs=abc` answers at once: nothing heavy is imported first."""
    import subprocess
    import sys

    code = ("import sys; from pecrs.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "train", str(config_file), "--output-dir", "/tmp/never",
                           "train.epochs=abc"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "train.epochs" in done.stderr and "'abc'" in done.stderr, done.stderr


def test_targets_only_keeps_the_recommending_train_samples_and_a_new_key(tmp_path):
    """train.targets_only drops the train samples without a target (dev and test keep them all);
    at its default it leaves every stored experiment key as it was."""
    from pecrs.experiments.keys import train_key
    from pecrs.prepare import prepare
    from pecrs.testing import tiny_config, write_dataset

    write_dataset(tmp_path / "data")
    with open(tmp_path / "data" / "train.jsonl", "a") as f:   # a recommender turn without an item
        f.write(json.dumps({"id": "chit-chat", "turns": [{"role": "seeker", "text": "Hello"},
                                                         {"role": "recommender", "text": "Hi, what do you like?"}]}) + "\n")
    cfg = tiny_config(tmp_path / "data")
    everything = prepare(cfg).samples
    cfg.train.targets_only = True
    filtered = prepare(cfg).samples
    kept = [s for s in everything["train"] if s.target is not None]
    assert 0 < len(kept) < len(everything["train"])
    assert [(s.dialogue_id, s.turn_index, s.target) for s in filtered["train"]] == \
        [(s.dialogue_id, s.turn_index, s.target) for s in kept]
    assert len(filtered["dev"]) == len(everything["dev"])
    assert train_key(cfg) != train_key(RunConfig.from_dict({**cfg.to_dict(), "train": {
        **cfg.to_dict()["train"], "targets_only": False}}))
    assert train_key(RunConfig.load("configs/inspired.yaml")) == "96b9c7cdfd3d"


def test_fresh_targets_only_drops_the_train_samples_whose_target_was_mentioned_before(tmp_path):
    """train.fresh_targets_only keeps every train sample but those recommending an item the
    dialogue named before (dev and test keep them all); at its default no stored key changes."""
    from pecrs.experiments.keys import train_key
    from pecrs.prepare import prepare
    from pecrs.testing import tiny_config, write_dataset

    write_dataset(tmp_path / "data")
    with open(tmp_path / "data" / "train.jsonl", "a") as f:   # "1" is named, then recommended again
        f.write(json.dumps({"id": "again", "turns": [
            {"role": "seeker", "text": "I loved [ITEM]", "items": ["1"]},
            {"role": "recommender", "text": "Then watch [ITEM] again", "items": ["1"]},
            {"role": "recommender", "text": "Or [ITEM]", "items": ["2"]}]}) + "\n")
    cfg = tiny_config(tmp_path / "data")
    everything = prepare(cfg).samples
    cfg.train.fresh_targets_only = True
    filtered = prepare(cfg).samples
    kept = [s for s in everything["train"] if not s.target_seen_before]
    assert 0 < len(kept) < len(everything["train"])
    assert ("again", 1, "1") not in {(s.dialogue_id, s.turn_index, s.target) for s in filtered["train"]}
    assert ("again", 2, "2") in {(s.dialogue_id, s.turn_index, s.target) for s in filtered["train"]}
    assert [(s.dialogue_id, s.turn_index, s.target) for s in filtered["train"]] == \
        [(s.dialogue_id, s.turn_index, s.target) for s in kept]
    assert len(filtered["dev"]) == len(everything["dev"])
    fresh_key = train_key(cfg)
    cfg.train.fresh_targets_only = False
    assert train_key(cfg) != fresh_key
    assert train_key(RunConfig.load("configs/inspired.yaml")) == "96b9c7cdfd3d"


def test_prepare_reports_what_reading_the_dataset_skipped_or_repaired(tmp_path, monkeypatch, capsys):
    """Mentions written as text and repaired records (bundle.skipped / repaired, what `pecrs data
    stats` shows) are said when a run reads its dataset, not left for the user to discover."""
    import pecrs.prepare
    from pecrs.prepare import prepare
    from pecrs.testing import tiny_config, write_dataset

    write_dataset(tmp_path / "data")
    read = pecrs.prepare.load_dataset

    def counted(path, **kwargs):
        bundle = read(path, **kwargs)
        bundle.skipped["redial: mention not in catalog"] = 7
        bundle.repaired["QUOTATION_MARK read as a quote"] = 1234
        return bundle
    monkeypatch.setattr(pecrs.prepare, "load_dataset", counted)
    prepare(tiny_config(tmp_path / "data"), progress=True)
    err = capsys.readouterr().err
    assert "skipped redial: mention not in catalog: 7" in err and "repaired QUOTATION_MARK read as a quote: 1,234" in err
    prepare(tiny_config(tmp_path / "data"), progress=False)
    assert "skipped" not in capsys.readouterr().err


def test_a_checkpoint_saved_when_0_samples_meant_all_still_loads(tmp_path):
    """train.max_train_samples / max_eval_samples 0 meant "every sample" until 2026-12-01 and is
    refused now; a checkpoint that recorded 0 reads it as null (all), not as an error."""
    import json

    from pecrs.pretrained import read_meta

    raw = RunConfig().to_dict()
    raw["train"].update(max_train_samples=0, max_eval_samples=0)
    meta = {"config": raw, "model_type": "llama", "hidden_size": 8, "vocab_size": 10}
    (tmp_path / "pecrs_config.json").write_text(json.dumps(meta))
    config = RunConfig.from_dict(read_meta(tmp_path)["config"])
    assert (config.train.max_train_samples, config.train.max_eval_samples) == (None, None)
    with pytest.raises(ConfigError, match="train.max_train_samples"):
        RunConfig.from_dict(raw)
