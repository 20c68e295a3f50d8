"""bfloat16 inference (pecrs.precision): detecting bfloat16 units, choosing the dtype, forcing each
path on a tiny checkpoint, the --dtype flag, the log line, and bfloat16-frozen training."""
import logging

import pytest
import torch

from pecrs import precision
from pecrs.cli import build_parser
from pecrs.precision import (BF16_CPU_FLAGS, cpu_bf16_units, cpu_flags, cpu_model, inference_dtype,
                             resolve_dtype, to_inference_dtype)
from pecrs.recommender import Recommender
from pecrs.testing import TURNS, make_tiny_run

# /proc/cpuinfo of the machine these tests were written on (AVX-512, no bfloat16 units), one core.
NO_UNITS = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Processor @ 2.50GHz
flags		: fpu vme sse sse2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni md_clear
vmx flags	: vnmi preemption_timer amx_bf16
bugs		: spectre_v1
"""
# A Sapphire Rapids core: AMX and AVX512-BF16.
AMX = NO_UNITS.replace("avx512_vnni md_clear", "avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 md_clear")
AVX512_BF16_ONLY = NO_UNITS.replace("avx512_vnni md_clear", "avx512_vnni avx512_bf16 md_clear")


@pytest.fixture(autouse=True)
def fresh_log():
    precision._logged.clear()
    yield
    precision._logged.clear()


def fake_cpu(monkeypatch, tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    monkeypatch.setattr(precision, "CPUINFO", path)


# ---- detection and choice ----------------------------------------------------------------------

def test_cpuinfo_flags_are_parsed():
    assert cpu_bf16_units(NO_UNITS) == []          # the "vmx flags" line is not the flags line
    assert "avx512f" in cpu_flags(NO_UNITS) and "amx_bf16" not in cpu_flags(NO_UNITS)
    assert cpu_bf16_units(AMX) == list(BF16_CPU_FLAGS)
    assert cpu_bf16_units(AVX512_BF16_ONLY) == ["avx512_bf16"]
    assert cpu_bf16_units("") == [] and cpu_flags("") == set()
    assert cpu_model(NO_UNITS) == "Intel(R) Xeon(R) Processor @ 2.50GHz"
    # every core repeats its flags; the first line decides
    assert cpu_bf16_units(AMX + "\n" + AMX) == list(BF16_CPU_FLAGS)


def test_auto_follows_the_units():
    none = resolve_dtype("auto", "cpu", cpuinfo=NO_UNITS)
    assert none.dtype == torch.float32 and "no bfloat16 matrix units" in none.reason
    assert "Intel(R) Xeon(R) Processor @ 2.50GHz" in none.reason
    amx = resolve_dtype("auto", "cpu", cpuinfo=AMX)
    assert amx.dtype == torch.bfloat16 and "amx_bf16" in amx.reason
    assert resolve_dtype("auto", "cpu", cpuinfo=AVX512_BF16_ONLY).dtype == torch.bfloat16


def test_forced_paths_and_bad_values():
    forced = resolve_dtype("bfloat16", "cpu", cpuinfo=NO_UNITS)
    assert forced.dtype == torch.bfloat16 and "emulated and slower" in forced.reason
    assert resolve_dtype("float32", "cpu", cpuinfo=AMX).dtype == torch.float32
    assert resolve_dtype(torch.bfloat16, "cpu", cpuinfo=AMX).dtype == torch.bfloat16
    assert "emulated" not in resolve_dtype("bfloat16", "cpu", cpuinfo=AMX).reason
    for bad in ("float16", "bf16", torch.float16):
        with pytest.raises(ValueError, match="dtype must be"):
            resolve_dtype(bad, "cpu")


def test_the_choice_is_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="pecrs.precision"):
        for _ in range(3):
            resolve_dtype("auto", "cpu", cpuinfo=NO_UNITS)
        assert len(caplog.records) == 1
        assert "float32" in caplog.records[0].getMessage()
        assert "no bfloat16 matrix units" in caplog.records[0].getMessage()
        resolve_dtype("bfloat16", "cpu", cpuinfo=NO_UNITS)   # another choice: its own line, once
        resolve_dtype("bfloat16", "cpu", cpuinfo=NO_UNITS)
    assert len(caplog.records) == 2 and "bfloat16" in caplog.records[1].getMessage()


# ---- each path on a tiny checkpoint ------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("precision"))


def load(run, tmp_path, dtype, cache=False):
    run_dir, items = run
    return Recommender.from_pretrained(run_dir, catalog=items, device="cpu", dtype=dtype,
                                       cache_dir=tmp_path / "cache" if cache else False)


def test_float32_path_changes_nothing(run, tmp_path):
    rec = load(run, tmp_path, "float32")
    assert rec.precision.dtype == torch.float32 and inference_dtype(rec.model) == torch.float32
    assert all(p.dtype == torch.float32 for p in rec.model.parameters())
    assert "forward" not in vars(rec.model.decoder)   # no autocast wrapper


def test_bfloat16_path_stores_frozen_linears_in_bfloat16(run, tmp_path):
    rec = load(run, tmp_path, "bfloat16")
    model = rec.model
    assert rec.precision.dtype == torch.bfloat16 and inference_dtype(model) == torch.bfloat16
    low = {n for n, p in model.named_parameters() if p.dtype == torch.bfloat16}
    assert low and all("base_layer" in n or "proj" in n for n in low)
    assert not any("lora_" in n or "embed" in n or "norm" in n for n in low)
    # tiny-llama: 2 layers x 7 projections
    assert sum(n.endswith("weight") for n in low) == 14
    heads = [p for n, p in model.named_parameters() if not n.startswith("lm.")]
    assert heads and all(p.dtype == torch.float32 for p in heads)
    assert rec.vectors.dtype == torch.float32
    assert "dtype=bfloat16" in repr(rec)
    with pytest.raises(ValueError, match="already runs in"):
        to_inference_dtype(model, torch.float32)


# Tolerance for the tiny model (64 wide, 2 layers, 12 items; re-rank scores ~0.09-0.11, the
# closest items 1e-4 apart). Measured at introduction: scores within 2e-4 of float32, item vectors
# cosine > 0.9999. Rankings agree up to near-ties: every two items whose float32 scores are more
# than 2 x SCORE_ATOL apart keep their order.
SCORE_ATOL = 5e-4


def test_bfloat16_ranks_as_float32_on_a_tiny_model(run, tmp_path):
    ref = load(run, tmp_path, "float32")
    low = load(run, tmp_path, "bfloat16")
    cos = torch.nn.functional.cosine_similarity(low.vectors, ref.vectors, dim=-1)
    assert float(cos.min()) > 0.999                 # catalog vectors encoded in bfloat16
    dialogues = [TURNS, TURNS[:1], [{"role": "seeker", "text": "A scary one from the nineties?"}],
                 TURNS + [{"role": "recommender", "text": "Try [ITEM]", "items": ["5"]},
                          {"role": "seeker", "text": "Seen it. Another?"}]]
    for turns in dialogues:
        a = ref.recommend(turns, k=12)
        b = low.recommend(turns, k=12)
        fp32 = {r.item.id: r.score for r in a}
        bf16 = {r.item.id: r.score for r in b}
        assert max(abs(bf16[i] - fp32[i]) for i in fp32) < SCORE_ATOL
        separated = [(i, j) for i in fp32 for j in fp32 if fp32[i] - fp32[j] > 2 * SCORE_ATOL]
        assert len(separated) > 40 and all(bf16[i] > bf16[j] for i, j in separated)
        assert b[0].item == a[0].item          # top-1 (these dialogues' top-2 gaps are >= 9e-4)
    # the recall query itself, float32 against bfloat16 (same float32 vectors)
    ctx = ref._context(ref.turns(TURNS))
    with torch.no_grad():
        qa, _ = ref.model.context_pass(*ctx, ref.vectors, keep_cache=False)
        qb, _ = low.model.context_pass(*ctx, ref.vectors, keep_cache=False)
    assert qb.dtype == torch.float32
    assert float(torch.nn.functional.cosine_similarity(qa, qb).min()) > 0.999


def test_bfloat16_generates(run, tmp_path):
    low = load(run, tmp_path, "bfloat16")
    a = low.respond(TURNS, seed=3, max_new_tokens=6)
    assert a == low.respond(TURNS, seed=3, max_new_tokens=6)
    assert "[ITEM]" not in a.text


def test_auto_on_a_cpu_with_and_without_units(run, tmp_path, monkeypatch):
    fake_cpu(monkeypatch, tmp_path, NO_UNITS)
    assert load(run, tmp_path, "auto").precision.dtype == torch.float32
    precision._logged.clear()
    fake_cpu(monkeypatch, tmp_path, AMX)
    rec = load(run, tmp_path, "auto")
    assert rec.precision.dtype == torch.bfloat16 and inference_dtype(rec.model) == torch.bfloat16
    assert "amx_bf16" in rec.precision.reason


def test_vectors_cache_is_keyed_by_the_encoding_dtype(run, tmp_path):
    low = load(run, tmp_path, "bfloat16", cache=True)
    assert not low.report.vectors_from_cache
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    ref = load(run, tmp_path, "float32", cache=True)       # bfloat16-encoded vectors are not for it
    assert not ref.report.vectors_from_cache
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    again = load(run, tmp_path, "bfloat16", cache=True)    # float32-encoded ones serve bfloat16 too
    assert again.report.vectors_from_cache
    assert torch.equal(again.vectors, ref.vectors)


def test_to_inference_dtype_refuses_training_mode(run, tmp_path):
    from pecrs.pretrained import load_pretrained

    model, _ = load_pretrained(run[0] / "best")
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        to_inference_dtype(model, torch.bfloat16)
    assert to_inference_dtype(model, torch.float32) == 0


# ---- the command line --------------------------------------------------------------------------

def test_chat_flag_reaches_the_model(run, tmp_path, monkeypatch):
    from pecrs.cli.serving import _load_recommender

    monkeypatch.setenv("PECRS_CACHE", str(tmp_path / "cache"))
    run_dir, items = run
    for flag, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        args = build_parser().parse_args(["chat", str(run_dir), "--catalog", str(items), "--device", "cpu",
                                          "--dtype", flag])
        rec = _load_recommender(args)
        assert rec.precision.dtype == dtype and inference_dtype(rec.model) == dtype
        proj = [p for n, p in rec.model.named_parameters() if n.endswith("q_proj.base_layer.weight")]
        assert proj and all(p.dtype == dtype for p in proj)
    # No flag: the model's own inference.dtype decides ("auto" unless its config says otherwise).
    assert build_parser().parse_args(["serve", str(run_dir)]).dtype is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", str(run_dir), "--dtype", "float16"])


def test_evaluate_flag_reaches_the_model(run, monkeypatch):
    import pecrs.prepare

    seen = {}

    class Stop(Exception):
        pass

    def prepare(config, model=None, **kwargs):
        seen["dtype"] = inference_dtype(model)
        seen["proj"] = {p.dtype for n, p in model.named_parameters() if n.endswith("proj.base_layer.weight")}
        raise Stop

    monkeypatch.setattr(pecrs.prepare, "prepare", prepare)
    for protocol in ("pecrs", "standardized"):
        if protocol == "standardized":
            import pecrs.standardized

            monkeypatch.setattr(pecrs.standardized, "load_collection", lambda path: object())
            monkeypatch.setattr(pecrs.standardized, "restrict", lambda c, n: c)
        args = build_parser().parse_args(["evaluate", str(run[0]), "--device", "cpu", "--dtype", "bfloat16",
                                          "--protocol", protocol])
        with pytest.raises(Stop):
            args.func(args)
        assert seen.pop("dtype") == torch.bfloat16 and seen.pop("proj") == {torch.bfloat16}


# ---- bfloat16-frozen training (the opt-in train.mixed_precision=bf16) ------------------------------

def test_bfloat16_frozen_training_follows_float32():
    """Two copies of a tiny model, the same batches and negatives: float32 against frozen weights in
    bfloat16 under bfloat16 autocast (what pecrs.train does with mixed_precision=bf16). The loss
    goes down in both and the curves stay within 3% of each other at every step (measured at
    introduction: 7.86 -> 6.76, within 0.3%; benchmarks/bf16_training.py on INSPIRED: within 1%)."""
    import copy

    from pecrs.step import cast_frozen, plan_step, step_losses
    from pecrs.testing import step_setup
    from pecrs.tokens import collate
    from pecrs.train import total_loss

    cfg, ref, store, _, encoded = step_setup("tiny-llama")
    low = copy.deepcopy(ref)
    assert cast_frozen(low, torch.bfloat16) > 0
    batches = [collate(encoded[i:i + 4], ref.tokenizer.pad_token_id, ref.rec_end_id) for i in (0, 4)]
    curves = {}
    for name, model, dtype in (("float32", ref, None), ("bfloat16", low, torch.bfloat16)):
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        curves[name] = []
        for step in range(12):
            inputs = plan_step(batches[step % 2], len(store), cfg.train, torch.Generator().manual_seed(step))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                loss = total_loss(step_losses(model, store, inputs, cfg.train), cfg)
            loss.backward()
            opt.step()
            opt.zero_grad()
            curves[name].append(loss.item())
    a, b = curves["float32"], curves["bfloat16"]
    assert a[-2] + a[-1] < 0.9 * (a[0] + a[1]) and b[-2] + b[-1] < 0.9 * (b[0] + b[1])
    assert max(abs(x - y) / x for x, y in zip(a, b)) < 0.03, (a, b)


# ---- the benchmarks still run (tiny backbone: a check against bit-rot, not a measurement) ---------

def test_bf16_benchmarks_run(shared_datasets, tmp_path, monkeypatch, run_benchmark):
    monkeypatch.setenv("PECRS_CACHE", str(tmp_path / "cache"))   # the catalog vectors it caches

    result = run_benchmark("bf16_agreement", "--backbone", "tiny-llama", "--quick", "--contexts", "2",
                           "--encode-items", "4", tmp_path=tmp_path)
    assert result["cpu"] and isinstance(result["bf16_units"], list)
    assert result["auto_dtype"] == ("bfloat16" if result["bf16_units"] else "float32")
    assert set(result["latency_p50_s"]) == {"float32", "bfloat16", "bfloat16_merged"}
    for row in result["agreement_with_float32"].values():
        assert 0 <= row["top1"] <= 1 and row["query_cosine"] > 0.99
    assert result["catalog_encoding"]["vector_cosine_mean_min"][1] > 0.99
    # --model: a trained checkpoint's own backbone, heads and LoRA (not --backbone's random ones).
    run, _ = make_tiny_run(tmp_path / "trained")
    trained = run_benchmark("bf16_agreement", "--model", str(run), "--quick", "--contexts", "2",
                            "--encode-items", "4", "--no-merged", tmp_path=tmp_path)
    assert trained["backbone"] == "tiny-llama" and trained["model"] == str(run)
    assert trained["settings"]["heads"].startswith("trained") and trained["settings"]["lora_B"] == "trained"
    assert set(trained["agreement_with_float32"]) == {"bfloat16"}
    train = run_benchmark("bf16_training", "--quick", "--steps", "3", tmp_path=tmp_path)
    assert len(train["loss_curves"]["float32"]) == len(train["loss_curves"]["bfloat16"]) == 3
    assert train["max_rel_diff"] < 0.05 and train["settings"]["frozen_tensors_cast"] > 0
