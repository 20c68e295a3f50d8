"""Where, when and with what each number was measured: date, hardware, git revision, backbone
source; and the "Measured on" lines of table.md."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def hardware() -> dict:
    import torch

    from ..precision import cpu_bf16_units, cpu_model

    # The CPU's model and its bfloat16 units: speeds differ several-fold between this project's machines.
    info = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpu": cpu_model(), "cpu_bf16_units": cpu_bf16_units(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda_version=torch.version.cuda)
    return info


def hardware_summary(hw: dict | None) -> str:
    if not hw:
        return "unknown"
    if hw.get("cuda"):
        return f"{hw.get('gpu')} (x{hw.get('gpu_count', 1)})"
    return f"{hw.get('cpu') or 'CPU'}, {hw.get('torch_threads')} torch thread(s) of {hw.get('cpu_count')} cores"


def git_revision() -> str | None:
    """The short revision of this tree (+dirty), else $PECRS_GIT_REVISION (a copy without .git, such
    as the GPU machine's: tools/gpu/env.sh sets it from what `--prepare` recorded), else None."""
    return _git_revision() or os.environ.get("PECRS_GIT_REVISION") or None


def _git_revision() -> str | None:
    """pecrs's own checkout only: installed from a wheel, `root` is site-packages, and git would
    answer for any repository around it (a project holding its .venv), not for pecrs."""
    root = Path(__file__).resolve().parents[2]
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if not top or Path(top).resolve() != root:
            return None
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("+dirty" if dirty else "")) if rev else None


def backbone_source(name: str) -> dict:
    out = {"name": name}
    if name == "smollm2-135m-instruct" and os.environ.get("PECRS_SMOLLM2_GGUF"):
        out["gguf"] = os.path.basename(os.environ["PECRS_SMOLLM2_GGUF"])
    if name == "gemma-3-270m" and os.environ.get("PECRS_GEMMA3_GGUF"):
        out["gguf"] = os.path.basename(os.environ["PECRS_GEMMA3_GGUF"])
    return out


def provenance_lines(recs: dict[str, dict]) -> list[str]:
    """One markdown bullet per distinct (hardware, backbone) with its dates and parts."""
    groups: dict[tuple, list] = {}
    for name, rec in recs.items():
        prov = rec.get("provenance") or {}
        bb = (prov.get("backbone") or {}).get("name", "?") if rec.get("kind") != "baseline" else None
        k = (hardware_summary(prov.get("hardware")), bb)
        groups.setdefault(k, []).append((prov.get("date", "?"), name, prov.get("git")))
    lines = []
    for (hw, bb), items in groups.items():
        dates = sorted(d for d, _, _ in items)
        gits = sorted({g for _, _, g in items if g})
        span = dates[0][:10] if dates[0][:10] == dates[-1][:10] else f"{dates[0][:10]} to {dates[-1][:10]}"
        lines.append(f"- {hw}; {f'backbone `{bb}`' if bb else 'no model'}; {span}; git {', '.join(gits) or '?'}; parts: "
                     + ", ".join(n for _, n, _ in items))
    return lines or ["- nothing measured yet"]
