"""What each device call of the GPU session sends, against the device tool's 64 MiB per call.

A call sends the whole working tree (tracked files and untracked ones git does not ignore: 14.0
MiB with the shipped model on 2026-11-30) plus the ignored paths it carries (docs/gpu.md, section 2):

    call 1 (--land)   .gguf/<name>.part00, .gguf/<name>.manifest.json, .whl/
    call 2            .gguf/<name>.part01, .devdata/inspired.tar.gz, .devdata/revision.txt

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


CARRIED = {1: [f".gguf/{GGUF_NAME}.part00", f".gguf/{GGUF_NAME}.manifest.json", ".whl"],
           2: [f".gguf/{GGUF_NAME}.part01", ".devdata/inspired.tar.gz", ".devdata/revision.txt"]}


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
    default root/.gguf). `allowances` ({".whl": bytes, ".devdata/inspired.tar.gz": bytes}) stand in for carried
    folders not prepared yet."""
    tree, gguf_dir = tree_bytes(root), gguf_dir or root / ".gguf"

    def size(rel: str) -> int:
        if rel in allowances:
            return allowances[rel]
        return path_bytes(gguf_dir / Path(rel).name if rel.startswith(".gguf/") else root / rel)
    return {call: tree + sum(size(rel) for rel in paths) for call, paths in CARRIED.items()}


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
