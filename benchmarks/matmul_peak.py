"""What this CPU can do: GEMM GFLOP/s in float32, bfloat16 and dynamic int8 at 1 and N threads.

    python benchmarks/matmul_peak.py [--quick]

Shapes are SmolLM2's MLP up-projection ([M, 576] x [576, 1536]) at M = 257 (one context) and
M = 512 (a re-rank chunk). It tells which dtype lever exists on the machine: bfloat16 matmuls are
fast only with AVX512-BF16 / AMX; on AVX2-only CPUs they run on a slow emulated path.
"""
from __future__ import annotations

import _common as C


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    import time
    import warnings

    import torch
    import torch.nn.functional as F

    n_max = C.set_threads(args.threads)
    reps = 5 if args.quick else 20

    def gflops(fn, flop):
        for _ in range(2):
            fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return round(flop * reps / (time.perf_counter() - t) / 1e9, 1)

    flags = ""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni") if f" {f}" in flags]
    rows = {}
    for threads in sorted({1, n_max}):
        torch.set_num_threads(threads)
        for M in (257, 512):
            a, w = torch.randn(M, 576), torch.randn(1536, 576)
            a16, w16 = a.bfloat16(), w.bfloat16()  # converted once: only the GEMM is timed
            flop = 2 * M * 576 * 1536
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.ao.quantization import quantize_dynamic

                q = quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(576, 1536)), {torch.nn.Linear},
                                     dtype=torch.qint8)
            rows[f"threads={threads},M={M}"] = {
                "float32": gflops(lambda: F.linear(a, w), flop),
                "bfloat16": gflops(lambda: F.linear(a16, w16), flop) if not args.quick else None,
                "int8_dynamic": gflops(lambda: q(a), flop),
            }
    result = {"benchmark": "matmul_peak", "isa_flags": isa, "gflops": rows}
    best = rows[f"threads={n_max},M=512"]
    C.emit(args, result, f"matmul_peak ({n_max} threads, M=512): float32 {best['float32']} GFLOP/s, bfloat16 "
                         f"{best['bfloat16']}, int8 dynamic {best['int8_dynamic']}; ISA {','.join(isa)}")


if __name__ == "__main__":
    main()
