"""Cell-level h5ad source -> pseudobulk profiles of the common dataset, streamed in bounded memory.

Included as a viash resource by the dataset loaders (needs numpy, pandas, scipy, h5py, anndata, and
`harmonize.py`, `profiles.py` and `matrix_stream.py` beside it). A loader does:

    obs = read_obs(path, [columns...])                     # only the obs columns it needs
    cells = harmonize_cells(path, obs, perturbation_column=..., replicate_column=..., ...)  # one row per cell
    adata = pseudobulk(path, cells, values="counts", seed=0, min_cells=10, n_top_genes=2000,
                       genes=gene_table(path), uns={...}, log=log)

Replicates and the minimum number of cells: see `profiles.py`. Gene selection (`n_top_genes`): the genes
most variable across condition means (every perturbation x cell type x condition of the dataset once, over
all its cells, controls included), plus every measured target gene. The rule looks at no split: it is the
same for every split and fold, no condition weighs more for having more replicates or cells, and replicate
batch effects do not pick genes. `uns['gene_selection']` says what was done.

Count data (`normalization`, COUNT_NORMALIZATIONS): `log_cp10k_cell_mean` (the default) makes a profile the
mean over its cells of log1p(1e4 x counts / the cell's total over all genes of the source), cell-eval's
convention; `log_cp10k` is log1p(cp10k) of the counts summed over the profile's cells. The expectation of
the latter depends on how many cells (and how much depth) a profile pools (log of a sum is not the mean of
logs), so on shallow screens a control profile of 30 cells and a perturbation profile of 84 differ although
no gene responds; a mean of per-cell values does not depend on the number of cells it averages. Measured on
the Datlinger subset by benchmarks/normalisation.py (numbers in the README's "Shallow count data").

How it stays small: the cell matrix is never loaded; `matrix_stream.stream_sums` reads it in blocks (see
there). Cell means take two passes: per-cell totals (with the summed counts, kept in `layers['counts']`),
then the sums of the per-cell log values. Problems of the source raise `SourceError`, whose message names the
file and the problem.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import scipy.sparse as sp

from vocabulary import targets as split_targets
from matrix_stream import _open, matrix_layout, stream_sums  # noqa: F401 (re-exported)
from profiles import SourceError, assign_profiles, harmonize_cells  # noqa: F401 (re-exported)

GENE_BLOCK = 1024  # genes per step when normalising and ranking the profiles
COUNTS_PER = 1e4
# normalization_id of count profiles -> how a profile is made from its cells' counts (module docstring)
COUNT_NORMALIZATIONS = {
    "log_cp10k_cell_mean": "each cell log1p(counts per 10k of its total over all genes), averaged over the "
                           "profile's cells",
    "log_cp10k": "summed over the profile's cells, then log1p(counts per 10k)",
}
DEFAULT_COUNT_NORMALIZATION = "log_cp10k_cell_mean"

# ------------------------------------------------------------------------------------------ reading

def _read_elem(node):
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem(node)


def _frame(path, handle, key: str, columns=None) -> pd.DataFrame:
    """obs or var as a DataFrame (only `columns` if given), without touching the matrix."""
    if key not in handle:
        raise SourceError(path, f"has no '{key}' group; not an AnnData file")
    group = handle[key]
    try:
        if group.attrs.get("encoding-type") != "dataframe":  # files written before anndata 0.7
            import anndata as ad

            frame = getattr(ad.read_h5ad(str(path), backed="r"), key).copy()
            return frame if columns is None else frame[[c for c in columns if c in frame.columns]]
        index_key = group.attrs.get("_index", "_index")
        order = [str(c) for c in np.atleast_1d(group.attrs.get("column-order", [])) if str(c)]
        wanted = order if columns is None else [c for c in columns if c in group and c != index_key]
        data = {name: _read_elem(group[name]) for name in wanted if name in group}
        if key == "obs":  # cell names are not needed (and slow to read for millions of cells)
            return pd.DataFrame(data, index=pd.RangeIndex(group[index_key].shape[0]))
        return pd.DataFrame(data, index=pd.Index(np.asarray(_read_elem(group[index_key])).astype(str)))
    except SourceError:
        raise
    except Exception as error:  # damaged or unusual encodings
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SourceError(path, f"cannot read {key} ({detail})") from None


def read_obs(path, columns=None) -> pd.DataFrame:
    """The cells' annotation (only `columns` that exist, if given); raises SourceError for unreadable files."""
    with _open(path) as handle:
        obs = _frame(path, handle, "obs", columns)
        if len(obs) == 0:
            raise SourceError(path, "has no cells (obs is empty)")
        return obs


def obs_columns(path) -> list[str]:
    with _open(path) as handle:
        group = handle["obs"] if "obs" in handle else None
        if group is None:
            raise SourceError(path, "has no 'obs' group; not an AnnData file")
        order = [str(c) for c in np.atleast_1d(group.attrs.get("column-order", [])) if str(c)]
        return order or [k for k in group.keys() if k != group.attrs.get("_index", "_index")]


def gene_table(path, symbol_column: str | None = None, id_columns=("gene_id", "ensembl_id", "gene_ids",
                                                                   "ensembl_gene_id")) -> pd.DataFrame:
    """DataFrame with `symbol` and `gene_id` (None when unknown), one row per matrix column, in order.

    symbol_column: var column holding gene symbols (GEARS: `gene_name`, whose var_names are Ensembl ids);
    None = the var_names. Raises SourceError on missing or duplicated symbols.
    """
    with _open(path) as handle:
        var = _frame(path, handle, "var")
    if len(var) == 0:
        raise SourceError(path, "has no genes (var is empty)")
    if symbol_column:
        if symbol_column not in var.columns:
            raise SourceError(path, f"var has no column '{symbol_column}' with gene symbols "
                                    f"(columns: {list(var.columns)[:10]})")
        symbols = var[symbol_column].astype(str).to_numpy()
        ids = var.index.astype(str).to_numpy()
        if not all(re.match(r"^ENS[A-Z]*G\d+", i) for i in ids[:50]):  # var_names are not stable ids
            ids = None
    else:
        symbols = var.index.astype(str).to_numpy()
        id_column = next((c for c in id_columns if c in var.columns), None)
        ids = var[id_column].astype(str).to_numpy() if id_column else None
    missing = pd.isna(symbols) | np.isin(np.char.lower(symbols.astype(str)), ["", "nan", "none"])
    if missing.any():
        raise SourceError(path, f"{int(missing.sum())} gene(s) have no symbol in var")
    duplicated = pd.Index(symbols)[pd.Index(symbols).duplicated()].unique()
    if len(duplicated):
        raise SourceError(path, f"{len(duplicated)} duplicated gene name(s) in var (e.g. {list(duplicated[:3])}); "
                                "genes must be unique")
    return pd.DataFrame({"symbol": symbols, "gene_id": ids if ids is not None else [None] * len(symbols)})


# ------------------------------------------------------------------------------------------ profiles

def normalize_counts(sums: np.ndarray, genes=slice(None), dtype=np.float32, totals=None) -> np.ndarray:
    """log1p(counts per 10k) of each profile (totals over all genes) for the columns `genes`."""
    totals = sums.sum(axis=1) if totals is None else totals
    scale = COUNTS_PER / np.where(totals > 0, totals, 1.0)
    return np.log1p(sums[:, genes] * scale[:, None]).astype(dtype, copy=False)


def variability_rank(X: np.ndarray, transform=None) -> np.ndarray:
    """Rank of each gene by its variance across the rows of X (0 = most variable; ties in gene order).

    transform(columns) -> the values of those columns, when X itself is not the expression (e.g. counts that
    are normalised a block of genes at a time, so that no normalised copy of all genes is held).
    """
    blocks = [slice(start, start + GENE_BLOCK) for start in range(0, X.shape[1], GENE_BLOCK)]
    variance = np.concatenate([np.asarray(transform(b) if transform else X[:, b], dtype=np.float64).var(axis=0)
                               for b in blocks]) if blocks else np.empty(0)
    rank = np.empty(X.shape[1], dtype=np.int64)
    rank[np.argsort(-variance, kind="stable")] = np.arange(X.shape[1])
    return rank


def condition_indicator(profiles: pd.DataFrame) -> sp.csr_matrix:
    """conditions x profiles 0/1 matrix: which profiles (replicates) make up each perturbation x cell type x
    condition; indicator @ sums adds a condition's replicates up to all its cells."""
    codes = profiles.groupby(["perturbation", "cell_type", "condition"], sort=True, observed=True).ngroup().to_numpy()
    return sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(codes.max() + 1, len(codes)))


def measured_targets(symbols, profiles: pd.DataFrame) -> np.ndarray:
    targets = {t for p in pd.unique(profiles["perturbation"]) for t in split_targets(p)}
    return pd.Index(symbols).isin(targets)


def select_genes(rank: np.ndarray, symbols, profiles: pd.DataFrame, n_top_genes: int) -> np.ndarray:
    """Boolean mask: the `n_top_genes` most variable genes plus every measured target gene (0 = all genes)."""
    if not n_top_genes or n_top_genes >= len(rank):
        return np.ones(len(rank), dtype=bool)
    return (rank < n_top_genes) | measured_targets(symbols, profiles)


def gene_selection_text(n_source: int, n_top_genes: int, keep: np.ndarray, n_targets_added: int) -> str:
    if keep.all():
        return f"all {n_source} genes of the source (no selection by the loader)"
    return (f"{int(keep.sum())} of {n_source} genes: the {n_top_genes} most variable across condition means "
            "(log-normalised expression of each perturbation x cell type x condition over all its cells, every "
            "condition of the dataset counted once, controls included; the same genes for every split and fold) "
            f"plus {n_targets_added} measured target genes outside them")


def count_normalization(name: str | None) -> str:
    """The normalization_id of count profiles named by a loader's --normalization (None: the default);
    ValueError naming the choices otherwise."""
    name = DEFAULT_COUNT_NORMALIZATION if name in (None, "") else str(name)
    if name not in COUNT_NORMALIZATIONS:
        raise ValueError(f"--normalization is {name!r}, expected one of {', '.join(COUNT_NORMALIZATIONS)}")
    return name


def _cell_means(sums: np.ndarray, profiles: pd.DataFrame, indicator, symbols, n_top_genes: int):
    """(keep, source_rank, rank, X) of profiles that are the mean of their cells' values; sums: per-profile sums
    of those values (all genes of the source). A condition's value is the mean over all its cells."""
    n_cells = profiles["n_cells"].to_numpy(dtype=np.float64)
    condition_cells = indicator @ n_cells

    def condition_values(matrix, columns):
        return (indicator @ matrix[:, columns]) / condition_cells[:, None]
    source_rank = variability_rank(sums, lambda columns: condition_values(sums, columns))
    keep = select_genes(source_rank, symbols, profiles, n_top_genes)
    kept_sums = sums[:, keep]
    rank = variability_rank(kept_sums, lambda columns: condition_values(kept_sums, columns))
    return keep, source_rank, rank, np.ascontiguousarray(kept_sums / n_cells[:, None], dtype=np.float32)


def pseudobulk(path, cells: pd.DataFrame, *, values: str, seed: int, min_cells: int, n_top_genes: int,
               genes: pd.DataFrame, uns: dict, layer: str | None = None, log=print, chunk_nnz: int | None = None,
               cells_output: str | None = None, cells_options: dict | None = None,
               normalization: str = DEFAULT_COUNT_NORMALIZATION):
    """The common dataset (AnnData) of a cell-level source.

    values: 'counts' (raw UMI counts: X as `normalization` says, see COUNT_NORMALIZATIONS, which also becomes
    uns['normalization_id']; the summed counts in layers['counts']) or 'log' (log-normalised cells: X = mean
    of the cells' values, no counts layer; uns['normalization_id'] as given). genes: `gene_table(path)`.
    cells: `harmonize_cells(...)`; with a `replicate` column profiles follow its labels (see profiles.py).
    uns: dataset metadata (dataset_id, ... normalization_id, replicate_column); the replicate and QC fields
    (replicate_kind, n_replicates, min_cells_per_half, n_conditions_too_few_cells, gene_selection) are added.
    cells_output: also write the dataset cells file there (`cell_files.write_source_cells`; cells_options:
    max_cells, max_control, seed), with the same genes and profile labels.
    Raises SourceError / ValueError with a message.
    """
    import anndata as ad

    if values not in ("counts", "log"):
        raise ValueError(f"values must be 'counts' or 'log', not {values!r}")
    if values == "counts":
        uns = {**uns, "normalization_id": count_normalization(normalization)}
    try:
        codes, profiles = assign_profiles(cells, seed=seed, min_cells=min_cells, log=log)
    except ValueError as error:
        raise SourceError(path, str(error)) from None
    facts, profiles.attrs = dict(profiles.attrs), {}
    if not profiles["is_control"].any():
        raise SourceError(path, f"no control condition has at least {facts['min_cells_per_half']} cells in each of "
                                "two replicates (lower --min_cells_per_half?)")
    contexts = profiles.groupby(["cell_type", "condition"])["is_control"].any()
    if not contexts.all():
        log(f"[warning] no control profiles in {', '.join('/'.join(c) for c in contexts.index[~contexts])}")
    is_counts = values == "counts"
    sums = stream_sums(path, codes, len(profiles), layer=layer, counts=is_counts, chunk_nnz=chunk_nnz,
                       cell_totals=is_counts)
    if is_counts:
        sums, cell_totals = sums
    if len(genes) != sums.shape[1]:
        raise SourceError(path, f"var has {len(genes)} genes but the matrix has {sums.shape[1]} columns")
    # Genes are ranked on condition means (replicates added up), so that neither replicate batch effects nor
    # a condition's number of replicates weighs in. Memory: only the float64 sums for all genes; normalised
    # values are made a block of genes at a time.
    indicator = condition_indicator(profiles)
    if not is_counts:
        keep, source_rank, rank, X = _cell_means(sums, profiles, indicator, genes["symbol"], n_top_genes)
        counts = None
    else:
        totals = sums.sum(axis=1)
        if (totals == 0).any():
            raise SourceError(path, f"{int((totals == 0).sum())} profile(s) have no counts at all "
                                    f"(e.g. {profiles.index[totals == 0][0]})")
        if uns["normalization_id"] == "log_cp10k":
            condition_totals = indicator @ totals

            def condition_values(matrix, columns):
                return normalize_counts(indicator @ matrix[:, columns], dtype=np.float64, totals=condition_totals)
            source_rank = variability_rank(sums, lambda columns: condition_values(sums, columns))
            keep = select_genes(source_rank, genes["symbol"], profiles, n_top_genes)
            X = normalize_counts(sums, np.flatnonzero(keep), totals=totals)
            counts = sums[:, keep]
            rank = variability_rank(counts, lambda columns: condition_values(counts, columns))
        else:  # second pass: the sums of the cells' log1p(cp10k); a cell without counts adds zeros
            empty = int(((cell_totals == 0) & (codes >= 0)).sum())
            if empty:
                log(f"[warning] {empty} cells of the profiles have no counts at all: each adds zeros to its profile's mean")
            scale = COUNTS_PER / np.where(cell_totals > 0, cell_totals, 1.0)
            log_sums = stream_sums(path, codes, len(profiles), layer=layer, chunk_nnz=chunk_nnz, cell_scale=scale,
                                   held_bytes=sums.nbytes)
            keep, source_rank, rank, X = _cell_means(log_sums, profiles, indicator, genes["symbol"], n_top_genes)
            del log_sums
            counts = sums[:, keep]
    del sums
    n_targets_added = int((keep & (source_rank >= n_top_genes)).sum())
    var = pd.DataFrame({"highly_variable_rank": rank, "mean_expression": X.mean(axis=0, dtype=np.float64)},
                       index=pd.Index(genes["symbol"].to_numpy()[keep], dtype=object))
    if genes["gene_id"].notna().any():
        var.insert(0, "gene_id", genes["gene_id"].astype(object).where(genes["gene_id"].notna(), "").to_numpy()[keep])
    layers = {}
    if counts is not None:  # float32 holds integers exactly below 2^24
        layers["counts"] = counts.astype(np.float32 if counts.max(initial=0) < 2 ** 24 else np.float64)
    left_out = facts["left_out"]
    uns = {**uns, "replicate_kind": facts["replicate_kind"],
           "n_replicates": int(profiles["replicate"].nunique()),
           "min_cells_per_half": int(facts["min_cells_per_half"]),
           "n_conditions_too_few_cells": int(left_out["n_conditions"]),
           "n_cells_too_few_cells": int(left_out["n_cells"]),
           "n_replicate_profiles_too_few_cells": int(left_out["n_replicate_profiles"]),
           "gene_selection": gene_selection_text(len(genes), n_top_genes, keep, n_targets_added)}
    uns.setdefault("replicate_column", "none")
    adata = ad.AnnData(X=X, obs=profiles, var=var, uns=uns, layers=layers)
    if cells_output:
        from cell_files import write_source_cells

        write_source_cells(path, cells_output, codes=codes, profiles=profiles, keep=keep, var=var[[c for c in ("gene_id",)
                           if c in var.columns]], values=values, layer=layer, log=log, **(cells_options or {}),
                           uns={key: uns[key] for key in ("dataset_id", "normalization_id") if key in uns})
    log(f"{uns.get('dataset_id', 'dataset')}: {adata.n_obs} profiles x {adata.n_vars} genes "
        f"(of {len(genes)}; {int((codes >= 0).sum())} cells used; replicates: {uns['replicate_kind']}, "
        f"{uns['n_replicates']} labels)")
    return adata
