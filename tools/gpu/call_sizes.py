"""What each device call of the GPU session sends, against the device tool's 64 MiB per call.

A call sends the whole working tree (tracked files and untracked ones git does not ignore: 13.6
MiB with the shipped model) plus the ignored paths it carries (docs/gpu.md, section 2):

    call 1 (--land)   .gguf/<name>.part00, .gguf/<name>.manifest.json, .whl/
    call 2            .gguf/<name>.part01, .devdata/inspired/, .devdata/revision.txt

    python tools/gpu/call_sizes.py        # after --prepare: prints both, exits 1 over the margin

`bash tools/gpu/train_inspired.sh --prepare` runs it; tests/test_gpu_run.py checks the same sums
with the real GGUF split, so a tree that grows past the limit fails CI, not the GPU session.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LIMIT = 64 * 2**20
MARGIN = 62 * 2**20          # what a call may send here: 2 MiB for files that appear before it runs


def carried(gguf_dir: str = ".gguf", name: str = GGUF_NAME) -> dict[int, list[str]]:
    return {1: [f"{gguf_dir}/{name}.part00", f"{gguf_dir}/{name}.manifest.json", ".whl"],
            2: [f"{gguf_dir}/{name}.part01", ".devdata/inspired", ".devdata/revision.txt"]}


def path_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def tree_bytes(root: Path = ROOT) -> int:
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return sum(path_bytes(root / f) for f in listed if f)


def call_sizes(root: Path = ROOT, gguf_dir: Path | None = None, **allowances: int) -> dict[int, int]:
    """Bytes each call sends: the tree plus its carried paths (`gguf_dir`: where the parts are,
    default root/.gguf). `allowances` ({".whl": bytes, ".devdata/inspired": bytes}) stand in for carried
    folders not prepared yet."""
    tree = tree_bytes(root)
    out = {}
    for call, paths in carried().items():
        total = tree
        for rel in paths:
            if rel in allowances:
                total += allowances[rel]
            elif rel.startswith(".gguf/") and gguf_dir is not None:
                total += path_bytes(gguf_dir / rel.removeprefix(".gguf/"))
            else:
                total += path_bytes(root / rel)
        out[call] = total
    return out


def main() -> int:
    tree, sizes = tree_bytes(), call_sizes()
    print(f"tree {tree / 2**20:.1f} MiB; call 1 sends {sizes[1] / 2**20:.1f} MiB, call 2 sends "
          f"{sizes[2] / 2**20:.1f} MiB (limit 64 MiB each, checked against {MARGIN // 2**20})")
    if max(sizes.values()) >= MARGIN:
        print("TOO LARGE: trim untracked files, .whl or .devdata, or the tracked tree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
