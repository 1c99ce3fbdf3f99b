#!/usr/bin/env python3
"""Benchmark of the streaming pseudobulk (src/utils/pseudobulk.py) on a Replogle-scale synthetic screen.

    python benchmarks/pseudobulk.py run [--n_cells 500000 --n_genes 8000 --density 0.1] [--workdir DIR]
    python benchmarks/pseudobulk.py generate --output screen.h5ad --n_cells 20000 --n_genes 2000 [--format scperturb]
    python benchmarks/pseudobulk.py test-sources --output resources_test/loaders

`run` writes (once, cached in --workdir) a scPerturb-like h5ad of sparse raw counts, generated and written
chunk by chunk with h5py so that generation stays within memory, then measures three approaches, each in
its own subprocess (peak RSS of that process from wait4, wall time in the parent, work time in the child):
  streaming   src/utils/pseudobulk.py: read obs, harmonise, stream X in blocks, sum per profile (r1/r2 halves)
  scanpy      scanpy.read_h5ad (the whole matrix in memory) + scanpy.get.aggregate(func="sum") on the same groups
  read        anndata.read_h5ad of the file (the floor of any approach that loads the matrix)
  loader      all the scperturb loader does: streaming plus normalisation, gene selection and the report
              (default normalisation: per-cell log1p(cp10k) averaged, which reads the matrix twice)
  loader_summed  the same with `--normalization log_cp10k` (log1p(cp10k) of summed counts, one pass)
and checks that streaming and scanpy give the same sums. The file is read once beforehand (warm page cache),
each approach runs --repeats times (interleaved) and the median and minimum are printed (on a shared machine
the minimum is the least disturbed run). Goal: streaming peak memory under 2 GB whatever the
number of cells, time within 2x of the plain read. scanpy is needed only here (`pip install scanpy`).

`generate` writes one synthetic source in the layout of a loader's real source (`--format scperturb`:
raw counts, `_`-joined combos; `perturbench`: log-normalised, obs `dataset`; `gears`: log-normalised,
`A+ctrl` conditions, zipped folder), and `test-sources` writes the tiny ones the component tests read.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
UTILS = ROOT / "src" / "utils"
CELLS_PER_CHUNK = 10_000


# ----------------------------------------------------------------------------------------- generation

def _write_elem(group, key, value):
    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem
    write_elem(group, key, value)


def _design(rng, n_cells: int, genes: np.ndarray, n_perturbations: int, n_combos: int, control_share: float):
    """Per-cell target tuples (() for controls): singles on random genes, combos of pairs of them."""
    targets = rng.choice(len(genes), size=min(n_perturbations, len(genes)), replace=False)
    singles = [(int(t),) for t in targets]
    combos = []
    while len(combos) < n_combos and len(targets) >= 2:
        pair = tuple(sorted(int(t) for t in rng.choice(targets, 2, replace=False)))
        if pair not in combos:
            combos.append(pair)
    designs = [()] + singles + combos
    weights = np.array([control_share] + [(1 - control_share) / (len(designs) - 1)] * (len(designs) - 1))
    return designs, rng.choice(len(designs), size=n_cells, p=weights / weights.sum())


def _label(design: tuple, genes: np.ndarray, fmt: str) -> str:
    names = [str(genes[g]) for g in design]
    if fmt == "scperturb":
        return "_".join(names) if names else "control"
    if fmt == "gears":
        return "+".join(names if len(names) > 1 else names + ["ctrl"]) if names else "ctrl"
    return "+".join(names) if names else "control"


def _obs(fmt: str, labels: np.ndarray, n_targets: np.ndarray, rng) -> pd.DataFrame:
    n = len(labels)
    if fmt == "scperturb":
        return pd.DataFrame({
            "perturbation": pd.Categorical(labels), "perturbation_type": pd.Categorical(["CRISPRi"] * n),
            "cell_line": pd.Categorical(["K562"] * n), "celltype": pd.Categorical(["lymphoblasts"] * n),
            "organism": pd.Categorical(["human"] * n), "nperts": n_targets.astype(np.int64)})
    if fmt == "perturbench":
        dataset = np.where(rng.random(n) < 0.8, "norman19", "mcfaline23")
        return pd.DataFrame({
            "condition": pd.Categorical(labels), "perturbation": pd.Categorical(labels),
            "perturbation_type": pd.Categorical(np.where(dataset == "norman19", "CRISPRa", "CRISPRi")),
            "cell_type": pd.Categorical(np.where(dataset == "norman19", "k562",
                                                 rng.choice(["A172", "T98G", "U87MG"], n))),
            "dataset": pd.Categorical(dataset), "treatment": pd.Categorical(["none"] * n)})
    return pd.DataFrame({"condition": pd.Categorical(labels), "cell_type": pd.Categorical(["K562"] * n),
                         "control": (n_targets == 0).astype(np.int64)})


def write_screen(path, *, n_cells: int, n_genes: int, n_perturbations: int, n_combos: int = 0,
                 density: float = 0.1, control_share: float = 0.05, fmt: str = "scperturb", seed: int = 0,
                 cells_per_chunk: int = CELLS_PER_CHUNK) -> dict:
    """Write a synthetic perturbation screen as an h5ad with a CSR X, one chunk of cells at a time.

    Counts: each cell draws about density * n_genes distinct genes (weighted by a log-normal abundance) with
    geometric counts; a perturbed cell loses its targets' counts (knockdown) and gains 50% on 5% of the genes
    (a per-perturbation signature), so profiles differ. fmt 'perturbench'/'gears' store log1p(cp10k) values.
    """
    import h5py

    rng = np.random.default_rng(seed)
    width = len(str(n_genes))
    genes = np.array([f"SYN{i + 1:0{width}d}" for i in range(n_genes)], dtype=object)
    designs, assignment = _design(rng, n_cells, genes, n_perturbations, n_combos, control_share)
    abundance = np.exp(rng.normal(0.0, 1.0, n_genes))
    abundance /= abundance.sum()
    # (design x gene) masks: the genes each perturbation raises (its signature) and its targets (lost).
    signature = np.zeros((len(designs), n_genes), dtype=bool)
    target = np.zeros((len(designs), n_genes), dtype=bool)
    for index, design in enumerate(designs):
        if design:
            signature[index, rng.choice(n_genes, max(1, n_genes // 20), replace=False)] = True
            target[index, list(design)] = True
    labels = np.array([_label(designs[i], genes, fmt) for i in range(len(designs))], dtype=object)[assignment]
    n_targets = np.array([len(d) for d in designs])[assignment]
    log_values = fmt in ("perturbench", "gears")
    path = str(path)
    with h5py.File(path, "w") as handle:
        handle.attrs["encoding-type"] = "anndata"
        handle.attrs["encoding-version"] = "0.1.0"
        group = handle.create_group("X")
        group.attrs["encoding-type"] = "csr_matrix"
        group.attrs["encoding-version"] = "0.1.0"
        group.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
        chunk = (int(min(1 << 20, max(1024, density * n_genes * n_cells // 4))),)
        data = group.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=chunk)
        indices = group.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=chunk)
        indptr = [np.zeros(1, dtype=np.int64)]
        stored = 0
        for start in range(0, n_cells, cells_per_chunk):
            stop = min(n_cells, start + cells_per_chunk)
            per_cell = np.clip(rng.poisson(density * n_genes, stop - start), 1, n_genes)
            cell = np.repeat(np.arange(stop - start), per_cell)
            gene = rng.choice(n_genes, size=len(cell), p=abundance)
            key = np.sort(cell.astype(np.int64) * n_genes + gene)
            key = key[np.concatenate([[True], key[1:] != key[:-1]])]  # distinct (np.unique is slow on numpy 2.4)
            cell, gene = key // n_genes, (key % n_genes).astype(np.int32)
            value = rng.geometric(0.5, size=len(key)).astype(np.float32)
            design_of_cell = assignment[start:stop][cell]
            value[signature[design_of_cell, gene]] *= 1.5
            value[target[design_of_cell, gene]] = 0
            value = np.round(value)
            nonzero = value > 0
            cell, gene, value = cell[nonzero], gene[nonzero], value[nonzero]
            if log_values:
                totals = np.bincount(cell, weights=value, minlength=stop - start)
                value = np.log1p(value / totals[cell] * 1e4).astype(np.float32)
            counts = np.bincount(cell, minlength=stop - start)
            data.resize((stored + len(value),))
            indices.resize((stored + len(value),))
            data[stored:] = value
            indices[stored:] = gene
            indptr.append(stored + np.cumsum(counts))
            stored += len(value)
        group.create_dataset("indptr", data=np.concatenate(indptr))
        obs = _obs(fmt, labels, n_targets, rng)
        obs.index = pd.Index([f"cell{i}" for i in range(n_cells)])
        _write_elem(handle, "obs", obs)
        if fmt == "gears":
            var = pd.DataFrame({"gene_name": genes}, index=pd.Index([f"ENSG{i:011d}" for i in range(n_genes)]))
        else:
            var = pd.DataFrame(index=pd.Index(genes))
        _write_elem(handle, "var", var)
        for key in ("uns", "obsm", "varm", "layers", "obsp", "varp"):
            _write_elem(handle, key, {})
    return {"path": path, "n_cells": n_cells, "n_genes": n_genes, "nnz": int(stored), "n_designs": len(designs)}


def zip_gears_folder(h5ad: str, archive: str, folder: str = "norman"):
    """Package a GEARS-layout h5ad the way GEARS' Dataverse archives hold it: `<folder>/perturb_processed.h5ad`."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr(f"{folder}/", "")
        bundle.write(h5ad, f"{folder}/perturb_processed.h5ad")
        bundle.writestr(f"{folder}/go.csv", "source,target\n")


def write_test_sources(directory):
    """The tiny sources the loaders' component tests read (`--input` examples): one per loader."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    small = dict(n_cells=900, n_genes=80, n_perturbations=8, n_combos=3, density=0.3, control_share=0.15, seed=1)
    write_screen(directory / "scperturb.h5ad", fmt="scperturb", **small)
    write_screen(directory / "perturbench_devel.h5ad", fmt="perturbench", **small)
    gears_h5ad = directory / "gears_perturb_processed.h5ad"
    write_screen(gears_h5ad, fmt="gears", **small)
    zip_gears_folder(str(gears_h5ad), str(directory / "gears.zip"))
    gears_h5ad.unlink()
    return sorted(str(p) for p in directory.iterdir())


# ----------------------------------------------------------------------------------------- measuring

def _halves(perturbation: pd.Series, seed: int = 0) -> np.ndarray:
    """r1/r2 per cell, as the streaming loader assigns them, for the scanpy comparison."""
    sys.path.insert(0, str(UTILS))
    from pseudobulk import assign_profiles

    cells = pd.DataFrame({"perturbation": perturbation.astype(str).to_numpy(), "perturbation_type": "knockdown",
                          "cell_type": "K562", "condition": "none"})
    codes, profiles = assign_profiles(cells, seed=seed, min_cells=1, log=lambda m: None)
    return profiles["replicate"].to_numpy()[codes], profiles, codes


def measure(approach: str, path: str, result: str | None):
    """Run one approach in this process and print a JSON line with its work time."""
    started = time.perf_counter()
    info = {"approach": approach}
    if approach == "read":
        import anndata as ad

        adata = ad.read_h5ad(path)
        info["nnz"] = int(adata.X.nnz)
    elif approach in ("streaming", "loader", "loader_summed"):
        sys.path.insert(0, str(UTILS))
        from harmonize import DEFAULT_DROP_PART
        from pseudobulk import assign_profiles, gene_table, harmonize_cells, pseudobulk, read_obs, stream_sums

        obs = read_obs(path, ["perturbation", "perturbation_type", "cell_line"])
        cells = harmonize_cells(path, obs, perturbation_column="perturbation",
                                perturbation_type_column="perturbation_type", cell_type_column="cell_line",
                                separators=("+", "_"), drop_part=DEFAULT_DROP_PART, log=lambda m: None)
        if approach != "streaming":  # everything the scperturb loader does after reading obs, report included
            from dataset_report import dataset_report

            normalization = {"loader": {}, "loader_summed": {"normalization": "log_cp10k"}}[approach]
            adata = pseudobulk(path, cells, values="counts", seed=0, min_cells=1, n_top_genes=2000,
                               genes=gene_table(path), uns={"dataset_id": "benchmark"}, log=lambda m: None,
                               **normalization)
            adata.uns["dataset_report"] = dataset_report(adata)
            info["n_profiles"], info["n_genes"] = adata.n_obs, adata.n_vars
        else:
            codes, profiles = assign_profiles(cells, seed=0, min_cells=1, log=lambda m: None)
            sums = stream_sums(path, codes, len(profiles), counts=True)
            info["n_profiles"] = len(profiles)
            if result:
                keys = (profiles["perturbation"] + "|" + profiles["replicate"]).to_numpy()
                np.save(result, sums)
                pd.Series(keys).to_csv(result + ".keys.csv", index=False)
    elif approach == "scanpy":
        import scanpy as sc

        adata = sc.read_h5ad(path)
        replicate, _, _ = _halves(adata.obs["perturbation"])
        adata.obs["replicate"] = pd.Categorical(replicate)
        aggregated = sc.get.aggregate(adata, by=["perturbation", "replicate"], func="sum")
        info["n_profiles"] = int(aggregated.n_obs)
        if result:
            matrix = aggregated.layers["sum"]
            matrix = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
            keys = (aggregated.obs["perturbation"].astype(str) + "|" + aggregated.obs["replicate"].astype(str)).to_numpy()
            np.save(result, matrix)
            pd.Series(keys).to_csv(result + ".keys.csv", index=False)
    else:
        raise SystemExit(f"unknown approach {approach}")
    info["work_seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(info), flush=True)


def _run_child(arguments: list[str]) -> dict:
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, *arguments], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    output = process.stdout.read()
    process.stdout.close()
    code = os.waitstatus_to_exitcode(status)
    info = json.loads(output.strip().splitlines()[-1]) if code == 0 and output.strip() else {}
    info.update({"exit_code": code, "wall_seconds": round(time.perf_counter() - started, 2),
                 "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)})
    return info


def _same_sums(streaming: str, scanpy: str) -> float:
    """Largest absolute difference between the two approaches' sums, matched by profile."""
    a = pd.DataFrame(np.load(streaming), index=pd.read_csv(streaming + ".keys.csv").iloc[:, 0].astype(str))
    b = pd.DataFrame(np.load(scanpy), index=pd.read_csv(scanpy + ".keys.csv").iloc[:, 0].astype(str))
    # the streaming loader names controls `control` and joins targets with '+'; the source joins them with '_'
    b.index = [k.replace("_", "+") for k in b.index]
    common = a.index.intersection(b.index)
    if len(common) != len(a) or len(common) != len(b):
        return float("inf")
    return float(np.abs(a.loc[common].to_numpy() - b.loc[common].to_numpy()).max())


def run(args):
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"screen_{args.n_cells}x{args.n_genes}_d{args.density:g}_p{args.n_perturbations}.h5ad"
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        generated = _run_child([__file__, "generate", "--output", str(path) + ".tmp", "--n_cells", str(args.n_cells),
                                "--n_genes", str(args.n_genes), "--density", str(args.density),
                                "--n_perturbations", str(args.n_perturbations), "--n_combos", str(args.n_combos)])
        if generated["exit_code"] != 0:
            raise SystemExit("generation failed")
        os.replace(str(path) + ".tmp", path)
        print(f"generated in {generated['wall_seconds']} s, peak RSS {generated['peak_rss_mb']} MB", flush=True)
    print(f"file: {path} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)
    with open(path, "rb") as handle:  # warm the page cache, so that no approach pays for the disk alone
        while handle.read(1 << 26):
            pass
    runs = {approach: [] for approach in args.approaches}
    for repeat in range(args.repeats):  # interleaved, so that a busy moment of the machine hits all alike
        for approach in args.approaches:
            result = str(workdir / f"sums_{approach}.npy") if approach in ("streaming", "scanpy") and repeat == 0 else None
            child = [__file__, "measure", "--approach", approach, "--input", str(path)]
            info = _run_child(child + (["--result", result] if result else []))
            runs[approach].append(info)
            print(json.dumps(info), flush=True)
    def summary(function):
        return {approach: {key: float(function([r.get(key, np.nan) for r in infos]))
                           for key in ("wall_seconds", "work_seconds", "peak_rss_mb")}
                for approach, infos in runs.items()}

    median, best = summary(np.median), summary(np.min)
    lines = [f"{path.name}: {args.n_cells} cells x {args.n_genes} genes, {args.repeats} run(s) of each approach",
             f"{'approach':<13} {'wall s (median, min)':>22} {'work s (median, min)':>22} {'peak RSS MB':>12}"]
    for approach in median:
        m, b = median[approach], best[approach]
        lines.append(f"{approach:<13} {m['wall_seconds']:>13.2f} {b['wall_seconds']:>7.2f} "
                     f"{m['work_seconds']:>14.2f} {b['work_seconds']:>7.2f} {m['peak_rss_mb']:>12.1f}")
    if "streaming" in median and "read" in median:
        for name, table in (("median", median), ("min", best)):
            lines.append(f"streaming / read ({name}): work time "
                         f"{table['streaming']['work_seconds'] / table['read']['work_seconds']:.2f}, "
                         f"wall time {table['streaming']['wall_seconds'] / table['read']['wall_seconds']:.2f}")
    if all(a in runs and runs[a][0]["exit_code"] == 0 for a in ("streaming", "scanpy")):
        difference = _same_sums(str(workdir / "sums_streaming.npy"), str(workdir / "sums_scanpy.npy"))
        lines.append(f"max |streaming - scanpy| over all profile sums: {difference:g}")
    print("\n".join(lines), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("run", help="generate the screen once and measure the three approaches")
    generate = commands.add_parser("generate", help="write one synthetic screen")
    for sub in (bench, generate):
        sub.add_argument("--n_cells", type=int, default=500_000)
        sub.add_argument("--n_genes", type=int, default=8_000)
        sub.add_argument("--n_perturbations", type=int, default=2_000)
        sub.add_argument("--n_combos", type=int, default=0)
        sub.add_argument("--density", type=float, default=0.1, help="share of genes detected per cell")
    bench.add_argument("--workdir", default="/tmp/perturbcast_pseudobulk_benchmark")
    bench.add_argument("--approaches", nargs="+", default=["streaming", "scanpy", "read", "loader"],
                       choices=["streaming", "scanpy", "read", "loader", "loader_summed"])
    bench.add_argument("--repeats", type=int, default=5, help="runs of each approach (median and min are reported)")
    generate.add_argument("--output", required=True)
    generate.add_argument("--format", default="scperturb", choices=["scperturb", "perturbench", "gears"])
    generate.add_argument("--seed", type=int, default=0)
    sources = commands.add_parser("test-sources", help="write the tiny sources of the loaders' component tests")
    sources.add_argument("--output", default=str(ROOT / "resources_test" / "loaders"))
    child = commands.add_parser("measure", help=argparse.SUPPRESS)
    child.add_argument("--approach", required=True)
    child.add_argument("--input", required=True)
    child.add_argument("--result")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args)
    elif args.command == "generate":
        info = write_screen(args.output, n_cells=args.n_cells, n_genes=args.n_genes,
                            n_perturbations=args.n_perturbations, n_combos=args.n_combos, density=args.density,
                            fmt=args.format, seed=args.seed)
        print(json.dumps(info), flush=True)
    elif args.command == "test-sources":
        for written in write_test_sources(args.output):
            print(written)
    else:
        measure(args.approach, args.input, args.result)


if __name__ == "__main__":
    main()
