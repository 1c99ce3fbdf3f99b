#!/usr/bin/env python3
"""How hard is each dataset to forecast? The statistics of the real subsets and of simulated_grn side by side.

    python benchmarks/dataset_statistics.py [--seeds 0 1 2] [--shared_data DIR] [--set name=value ...]

The real subsets of ../shared/data are pseudobulked into common datasets the way tests/realdata.py does
(Norman 2019 CRISPRa and McFaline-Figueroa 2023 CRISPRi from PerturBench's devel file; Datlinger 2017
CROP-seq knockouts); simulated_grn runs through perturbcast.runner with its defaults (`--set` overrides an
argument, e.g. `--set cells_per_perturbation=100`) for each seed. For each dataset it prints the statistics
of src/utils/screen_statistics.py: median pairwise delta correlation, median split-half correlation of
deltas, share of perturbations with a reproducible effect (split-half r > 0.2), effect-to-noise ratio and
the median change of a single perturbation's own target mRNA. These decided simulated_grn's defaults
(n_control_cells 100, share_ineffective 0.2, ...): the default should sit among the real screens, not
above them. Not part of the test suite; each simulation seed takes a few seconds (15 s on a busy 2-core machine).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src" / "utils"))

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402

from perturbcast.runner import run_component  # noqa: E402
from screen_statistics import REPRODUCIBLE_R, screen_statistics  # noqa: E402

COLUMNS = [("median_pairwise_delta_correlation", "pairwise r"), ("split_half_correlation", "split-half r"),
           ("share_reproducible", f"share r>{REPRODUCIBLE_R:g}"), ("effect_to_noise", "effect/noise"),
           ("target_change", "target change")]


def real_datasets(shared: Path) -> dict:
    """The real subsets as common datasets, built by tests/realdata.py from `shared`."""
    import conftest
    conftest.SHARED_DATA = shared  # realdata reads its files through conftest.shared_file
    import realdata
    builders = {"norman19 (CRISPRa)": realdata.norman19_common, "mcfaline23 (CRISPRi)": realdata.mcfaline23_common,
                "datlinger2017 (knockout)": realdata.datlinger2017_common}
    missing = [name for name in (realdata.DEVEL, realdata.DATLINGER) if not (shared / name).exists()]
    if missing:
        print(f"[warning] {shared} lacks {', '.join(missing)}: real subsets left out", file=sys.stderr)
        return {}
    return {name: build(0) for name, build in builders.items()}


def simulated(seed: int, overrides: dict, directory: Path) -> ad.AnnData:
    output = directory / f"simulated_{seed}.h5ad"
    argv = ["--seed", str(seed), "--output", str(output)]
    for key, value in overrides.items():
        argv += [f"--{key}", value]
    with open(directory / f"simulated_{seed}.log", "w") as log:
        result = run_component(ROOT / "src" / "datasets" / "simulated_grn", argv, stdout=log, stderr=log)
    if result.exit_code != 0:
        sys.exit(f"[error] simulated_grn failed: {(directory / f'simulated_{seed}.log').read_text().strip()}")
    return ad.read_h5ad(output)


def row(name: str, adata: ad.AnnData) -> str:
    statistics = screen_statistics(adata)
    cells = float(np.median(adata.obs.loc[~adata.obs["is_control"].astype(bool), "n_cells"]))
    values = "".join(f"{statistics[key]:>15.3f}" for key, _ in COLUMNS)
    return f"{name:<34}{statistics['n_perturbation_contexts']:>6}{cells:>8.0f}{values}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shared_data", type=Path, default=None,
                        help="folder of the real subsets (default: ../shared/data beside the repository, "
                             "else /work/shared/data)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="simulated_grn arguments")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    shared = args.shared_data or next((p for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data"))
                                       if p.exists()), ROOT.parent / "shared" / "data")
    print(f"{'dataset':<34}{'n':>6}{'cells':>8}" + "".join(f"{label:>15}" for _, label in COLUMNS))
    for name, adata in real_datasets(shared).items():
        print(row(name, adata), flush=True)
    with tempfile.TemporaryDirectory() as directory:
        for seed in args.seeds:
            start = time.time()
            adata = simulated(seed, overrides, Path(directory))
            label = f"simulated_grn seed {seed} ({time.time() - start:.1f} s)"
            print(row(label, adata), flush=True)
    print("n: perturbation x context pairs with two replicates; cells: median cells per profile (one replicate)")


if __name__ == "__main__":
    main()
