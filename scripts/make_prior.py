#!/usr/bin/env python3
"""Make a gene-embedding prior (src/api/file_prior.yaml) from a common dataset or a train file.

    python scripts/make_prior.py --input other_dataset.h5ad --output prior.h5ad [--n_components 10]
        [--regulators tfs.txt] [--exclude_test test.h5ad]

This is the "pretrained on another dataset" variant of the Ahlmann-Eltze linear model: pass the result
to a method as `--input_prior prior.h5ad` (e.g. `linear_baseline`, `knn_perturbation`), and the
perturbation embedding P comes from this dataset instead of the training data.

The computation is src/utils/pca_prior.py (the prior component src/priors/other_dataset_pca runs the
same code inside the benchmark), exactly as `linear_baseline` computes its G: each perturbation's
replicate profiles are averaged per cell_type x condition, the context's mean control profile is
subtracted, each condition's delta is centred on the mean delta of its context, and the genes x
conditions matrix is decomposed by PCA with genes as observations; `varm['gene_embedding']` holds the top `--n_components`
principal-component scores of every gene. `obs` has one row per component (`PC1`, ...) with `X` = the
embedding transposed and the share of variance each component explains.

Use a *different* dataset from the one being benchmarked. Built from the same dataset, the prior would
see the held-out perturbations; `--exclude_test test.h5ad` first drops every row (in every cell type and
condition) whose perturbation is one of that test file's perturbations.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src" / "utils"))

import baselines  # noqa: E402
import pca_prior  # noqa: E402
from formats import FormatError, read_h5ad  # noqa: E402


def fail(message: str):
    print(f"[error] make_prior: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def make_prior(adata, n_components: int, regulators=None, exclude_perturbations=(), prior_id=None):
    """The prior AnnData of `adata` (common dataset or train file); raises baselines.InputError. The
    computation lives in src/utils/pca_prior.py, shared with the prior component src/priors/other_dataset_pca."""
    return pca_prior.pca_prior(adata, n_components, regulators, exclude_perturbations, prior_id)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="common dataset or train file (.h5ad) of another dataset")
    parser.add_argument("--output", required=True, help="prior file to write (.h5ad)")
    parser.add_argument("--n_components", type=int, default=10, help="embedding dimensions K (default 10)")
    parser.add_argument("--regulators", help="text file with one regulator gene symbol per line -> var['is_regulator']")
    parser.add_argument("--exclude_test", help="test file whose perturbations are left out (in every context)")
    parser.add_argument("--prior_id", help="uns['prior_id'] (default pca_<dataset_id>_k<K>)")
    args = parser.parse_args(argv)
    if args.n_components < 1:
        fail(f"--n_components is {args.n_components}, expected an integer >= 1")
    try:
        adata = read_h5ad(args.input)
        regulators = None
        if args.regulators:
            regulators = {line.strip() for line in Path(args.regulators).read_text().splitlines() if line.strip()}
        exclude = set()
        if args.exclude_test:
            test = read_h5ad(args.exclude_test)
            exclude = set(test.obs["perturbation"].astype(str))
        prior, n_conditions = make_prior(adata, args.n_components, regulators, exclude, args.prior_id)
    except FormatError as error:
        fail(str(error))
    except (baselines.InputError, OSError, KeyError) as error:
        fail(f"--input file '{args.input}': {error}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    prior.write_h5ad(args.output)
    print(f"make_prior: {prior.n_vars} genes x {prior.n_obs} dimensions from {n_conditions} conditions "
          f"-> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
