#!/usr/bin/env python3
"""The deflate behind cells files: zlib level 1 (HDF5's own filter) against ISA-L level 1 (isal, which
src/utils/deflate_chunks.py uses when it is installed), on the chunks of a real cells file.

    python benchmarks/deflate.py CELLS.h5ad [--chunks 64]

For X's values and column indices and each layer's values: the first `--chunks` chunks of 65,536 values,
shuffled as HDF5's shuffle filter does, compressed and inflated by each; printed: MB/s of one core (CPU time)
and the compression ratio. Both write the same kind of stream (zlib format), so either reads the other's.
"""
from __future__ import annotations

import argparse
import time
import zlib

import h5py
import numpy as np


def rate(function, chunks) -> tuple[float, list]:
    start = time.process_time()
    out = [function(chunk) for chunk in chunks]
    return sum(map(len, chunks)) / 1e6 / max(1e-9, time.process_time() - start), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", help="a cells file (h5ad with CSR X, e.g. a loader's dataset_cells.h5ad)")
    parser.add_argument("--chunks", type=int, default=64)
    args = parser.parse_args()
    try:
        from isal import isal_zlib
    except ImportError:
        raise SystemExit("isal is not installed (pip install isal)")
    with h5py.File(args.cells, "r") as handle:
        names = ["X/data", "X/indices"] + [f"layers/{name}/data" for name in handle.get("layers", {})]
        print(f"{'dataset':<22} {'MB':>5} {'zlib-1 MB/s':>12} {'ratio':>6} {'isal-1 MB/s':>12} {'ratio':>6} "
              f"{'inflate zlib':>13} {'isal':>6}")
        for name in names:
            values = handle[name][: args.chunks * 65536]
            size = values.dtype.itemsize
            chunks = [np.ascontiguousarray(values[i:i + 65536]).view(np.uint8).reshape(-1, size).T.tobytes()
                      for i in range(0, len(values), 65536)]
            raw = sum(map(len, chunks))
            z_rate, z_out = rate(lambda c: zlib.compress(c, 1), chunks)
            i_rate, i_out = rate(lambda c: isal_zlib.compress(c, 1), chunks)
            z_inflate, _ = rate(zlib.decompress, z_out)
            i_inflate, back = rate(isal_zlib.decompress, z_out)
            assert back == chunks and [zlib.decompress(c) for c in i_out] == chunks  # each reads the other's
            print(f"{name:<22} {raw / 1e6:>5.0f} {z_rate:>12.0f} {raw / sum(map(len, z_out)):>6.2f} {i_rate:>12.0f} "
                  f"{raw / sum(map(len, i_out)):>6.2f} {z_inflate * raw / sum(map(len, z_out)):>13.0f} "
                  f"{i_inflate * raw / sum(map(len, z_out)):>6.0f}")
    print("MB/s: uncompressed megabytes per CPU second of one core (inflate: of output)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
