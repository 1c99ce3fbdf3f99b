"""Shared helpers of the baseline methods and controls (train_median, random_perturbation, additive,
linear_baseline, knn_perturbation): replicate-averaged training profiles per context, control means,
target parsing, gene embeddings, the prior-knowledge file and the prediction file.

Included as a viash resource; needs numpy, pandas, scipy and anndata, and component_io for the readers.

    train, test, profiles, contexts, targets = read_method_inputs(io)   # checked; one-line error otherwise
    prior = read_prior_argument(par)              # None unless --input_prior was given
    profiles = TrainingProfiles(train)            # one row per training perturbation x context x type
    rows = profiles.rows_in(context)              # that context's conditions (may be empty)
    control = profiles.control_of(context)        # its mean control profile
    io.write("output", prediction(train, test, X, method_id, fell_back))  # fell_back: one bool per test row

A *context* is a (cell_type, condition) pair. A *condition* is a perturbation x context x
perturbation_type; its profile is the mean over its replicate profiles (replicates averaged first, so a
perturbation with more replicates weighs no more than one with fewer). Problems of the input raise
`InputError` with a one-line message; the component turns it into `fail(...)` (exit 1).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

import vocabulary
from vocabulary import CONTROL, TARGET_SEPARATOR  # noqa: F401 (methods use baselines.TARGET_SEPARATOR)
CONTEXT_COLUMNS = ("cell_type", "condition")


class InputError(ValueError):
    """An input cannot be used by the component (one-line message, exit 1)."""


# --------------------------------------------------------------------------------------------------
# Perturbations, contexts, averaging
# --------------------------------------------------------------------------------------------------

def targets_of(perturbation: str) -> tuple[str, ...]:
    """Target symbols of a perturbation string (`control` -> no targets)."""
    try:
        return vocabulary.targets(perturbation)
    except vocabulary.TargetLabelError as error:  # the methods' own kind of input error (exit 1 with its message)
        raise InputError(str(error)) from None


def contexts_of(obs: pd.DataFrame) -> list[tuple[str, str]]:
    """(cell_type, condition) of every row."""
    return list(zip(obs["cell_type"].astype(str), obs["condition"].astype(str)))


_GENE_BLOCK = 1024


def group_mean(matrix, groups: list[np.ndarray]) -> np.ndarray:
    """Dense float64 matrix whose row g is the mean of `matrix` rows `groups[g]` (dense or sparse input)."""
    if not groups:
        return np.zeros((0, matrix.shape[1]), dtype=np.float64)
    sizes = np.array([len(g) for g in groups])
    if (sizes == 0).any():
        raise ValueError("empty group")
    indicator = sp.csr_matrix(
        (np.repeat(1.0 / sizes, sizes), (np.repeat(np.arange(len(groups)), sizes), np.concatenate(groups))),
        shape=(len(groups), matrix.shape[0]))
    if sp.issparse(matrix):
        result = indicator @ matrix
        return np.asarray(result.toarray() if sp.issparse(result) else result, dtype=np.float64)
    # dense: in float64, a block of genes at a time, so no float64 copy of the whole matrix is made
    result = np.empty((len(groups), matrix.shape[1]), dtype=np.float64)
    for start in range(0, matrix.shape[1], _GENE_BLOCK):
        block = np.asarray(matrix[:, start:start + _GENE_BLOCK], dtype=np.float64)
        result[:, start:start + _GENE_BLOCK] = indicator @ block
    return result


class TrainingProfiles:
    """Replicate-averaged training perturbation profiles and control means, per context.

    Attributes: `genes` (pd.Index), `obs` (one row per training condition: perturbation,
    perturbation_type, cell_type, condition, targets, context), `X` (conditions x genes, float64,
    replicate means), `controls` (context -> mean control profile over its control profiles),
    `overall_control` (mean of all control profiles), `contexts` (sorted contexts with conditions).
    """

    def __init__(self, train):
        obs = train.obs
        perturbation = obs["perturbation"].astype(str).to_numpy()
        is_control = obs["is_control"].to_numpy().astype(bool)
        wrong = np.flatnonzero(is_control != (perturbation == CONTROL))
        if len(wrong):
            raise InputError(f"obs['is_control'] is {bool(is_control[wrong[0]])} for perturbation "
                             f"{perturbation[wrong[0]]!r}, expected True exactly for '{CONTROL}'")
        self.genes = pd.Index(train.var_names.astype(str))
        contexts = contexts_of(obs)
        if not is_control.any():
            raise InputError("has no control profiles (obs['is_control'] is never True); the baselines need them")
        control_rows: dict[tuple[str, str], list[int]] = {}
        for r in np.flatnonzero(is_control):
            control_rows.setdefault(contexts[r], []).append(int(r))
        matrix = train.X
        keys = sorted(control_rows)
        means = group_mean(matrix, [np.array(control_rows[k]) for k in keys])
        self.controls = {k: means[i] for i, k in enumerate(keys)}
        self.overall_control = group_mean(matrix, [np.flatnonzero(is_control)])[0]

        keyframe = pd.DataFrame({
            "perturbation": perturbation, "perturbation_type": obs["perturbation_type"].astype(str).to_numpy(),
            "cell_type": obs["cell_type"].astype(str).to_numpy(), "condition": obs["condition"].astype(str).to_numpy(),
        })[~is_control]
        if keyframe.empty:
            raise InputError("has no perturbation profiles (only controls); the baselines need training perturbations")
        codes = keyframe.groupby(list(keyframe.columns), sort=True, observed=True).ngroup().to_numpy()
        perturbed_rows = np.flatnonzero(~is_control)
        order = np.argsort(codes, kind="stable")
        groups = np.split(perturbed_rows[order], np.cumsum(np.bincount(codes))[:-1])
        first = [int(g[0]) for g in groups]
        self.obs = pd.DataFrame({
            "perturbation": perturbation[first],
            "perturbation_type": obs["perturbation_type"].astype(str).to_numpy()[first],
            "cell_type": obs["cell_type"].astype(str).to_numpy()[first],
            "condition": obs["condition"].astype(str).to_numpy()[first],
            "n_replicates": [len(g) for g in groups],
        })
        self.obs["targets"] = [targets_of(p) for p in self.obs["perturbation"]]
        self.obs["context"] = list(zip(self.obs["cell_type"], self.obs["condition"]))
        self.X = group_mean(matrix, groups)
        self._rows: dict[tuple[str, str], np.ndarray] = {}
        for i, context in enumerate(self.obs["context"]):
            self._rows.setdefault(context, []).append(i)
        self._rows = {k: np.array(v, dtype=np.int64) for k, v in self._rows.items()}
        self.contexts = sorted(self._rows)

    @property
    def n_conditions(self) -> int:
        return self.X.shape[0]

    def rows_in(self, context) -> np.ndarray:
        """Indices of the training conditions of `context` (empty array if none)."""
        return self._rows.get(tuple(context), np.zeros(0, dtype=np.int64))

    def rows_or_all(self, context) -> tuple[np.ndarray, bool]:
        """Conditions of `context`, or of every context when it has none (second value: fell back)."""
        rows = self.rows_in(context)
        return (rows, False) if len(rows) else (np.arange(self.n_conditions), True)

    def control_of(self, context) -> np.ndarray:
        """Mean control profile of `context`; the mean of all controls when the context has none."""
        return self.controls.get(tuple(context), self.overall_control)

    def deltas(self) -> np.ndarray:
        """Every condition's profile minus its context's control (conditions x genes)."""
        out = np.empty_like(self.X)
        for context in self.contexts:
            rows = self.rows_in(context)
            out[rows] = self.X[rows] - self.control_of(context)
        return out


def test_contexts(test) -> list[tuple[str, str]]:
    return contexts_of(test.obs)


def test_targets(test) -> list[tuple[str, ...]]:
    return [targets_of(p) for p in test.obs["perturbation"].astype(str)]


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------

# uns key of the test conditions a method predicted with its training-mean fallback (src/api/file_prediction.yaml)
FALLBACK_CONDITIONS = "fallback_conditions"


def fallback_conditions(test, fell_back) -> np.ndarray:
    """The test obs names (condition ids) where `fell_back` (one bool per test row) is True, in row order, as a
    string array: h5ad writes it as a string array even when empty, so it reads back as a list of names."""
    fell_back = np.asarray(fell_back, dtype=bool)
    if fell_back.shape != (test.n_obs,):
        raise ValueError(f"fell_back has shape {fell_back.shape}, expected one value per test row ({test.n_obs})")
    return np.asarray([str(name) for name in test.obs_names[fell_back]], dtype=object)


def prediction(train, test, X, method_id: str, fell_back=None, prior=None):
    """The prediction AnnData: test rows (same order), training genes (same order), ids in uns.

    `prior` (the Prior the method used, if any): the prediction is the variant `<method>+<prior id>`
    (vocabulary.method_variant), so that results keep the method with and without each prior apart.

    `fell_back` (methods: one bool per test row, required of every method, all False when it never falls
    back): the rows the method could not predict from their perturbation and gave its training-mean fallback;
    their names go to `uns['fallback_conditions']` so that scoring can tell a fallback from a prediction.
    Controls leave it None (no such slot: they are what they are)."""
    import anndata as ad

    X = np.asarray(X, dtype=np.float64)
    if X.shape != (test.n_obs, train.n_vars):
        raise ValueError(f"prediction has shape {X.shape}, expected {(test.n_obs, train.n_vars)}")
    obs = test.obs[[c for c in ("perturbation", "cell_type", "condition", "stratum") if c in test.obs.columns]].copy()
    var = pd.DataFrame(index=pd.Index(train.var_names.astype(str), dtype=object))
    uns = {"dataset_id": str(test.uns.get("dataset_id", train.uns.get("dataset_id", "unknown"))),
           "task_id": str(test.uns.get("task_id", train.uns.get("task_id", "unknown"))),
           "method_id": vocabulary.method_variant(str(method_id), prior.uns["prior_id"] if prior is not None else None)}
    if prior is not None:
        uns["prior_id"] = prior.uns["prior_id"]
    if fell_back is not None:
        uns[FALLBACK_CONDITIONS] = fallback_conditions(test, fell_back)
    return ad.AnnData(X=X.astype(np.float32), obs=obs, var=var, uns=uns)


class MethodInputs(NamedTuple):
    train: object
    test: object
    profiles: TrainingProfiles
    contexts: list  # (cell_type, condition) of every test row
    targets: list   # target genes of every test row


PROFILE_FROM_CELLS = ("log_cp10k", "*_cell_mean")  # the normalisations profile_of_cells knows


def _check_cell_normalization(normalization_id: str) -> None:
    if normalization_id != "log_cp10k" and not normalization_id.endswith("_cell_mean"):
        raise InputError(f"uns['normalization_id'] is {normalization_id!r}: profiles cannot be made from cells for it "
                         f"(known: {', '.join(repr(n) for n in PROFILE_FROM_CELLS)})")


def cell_normalization(train) -> str:
    """`--input_train`'s uns['normalization_id'] when profiles can be made from cells for it (profile_of_cells);
    one-line error (exit 1) otherwise, before a cell model spends minutes training."""
    from component_io import fail

    normalization_id = str(train.uns["normalization_id"])
    try:
        _check_cell_normalization(normalization_id)
    except InputError as error:
        fail(f"--input_train: {error}")
    return normalization_id


def profile_of_cells(X, normalization_id: str) -> np.ndarray:
    """The profile the dataset's loader would make from these log-normalised cells (`normalization_id`):
    `log_cp10k` (count sources): profiles are log1p(cp10k) of summed counts, so the cells go back to the linear
    scale, are averaged and logged again, log1p(mean(expm1(X))); `*_cell_mean`: the mean of the cells' values.
    The two differ a lot on sparse cells (Datlinger: profile sums ~1,270 against ~100 for the mean of logs),
    so a cell model's mean of logs would be scored on the wrong scale."""
    _check_cell_normalization(str(normalization_id))
    dense = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
    return np.log1p(np.expm1(dense).mean(axis=0)) if normalization_id == "log_cp10k" else dense.mean(axis=0)


def profiles_from_predicted_cells(predicted: np.ndarray, cell_conditions, conditions, name: str,
                                  normalization_id: str):
    """(profiles, cells, share of cell values below 0, a log line or None) from a cell model's predicted cells.

    Each profile is made from the model's own cells of that condition as the dataset's profiles are made from
    observed cells (profile_of_cells). A decoder's output is unbounded, but below 0 it is no log-normalised
    expression (on Norman devel, 97% zeros, CPA and scGPT wrote 46-98% negative values and failed the format
    check): the profiles are clipped at 0 after averaging (clipping each cell first would bias every near-zero
    gene upwards), and the cells are clipped at 0 too."""
    cell_conditions = np.asarray(cell_conditions, dtype=object)
    profiles = np.vstack([profile_of_cells(predicted[cell_conditions == condition], normalization_id)
                          for condition in conditions])
    share = float((predicted < 0).mean())
    if not share:
        return profiles, predicted, share, None
    message = (f"{name}: {100 * share:.1f}% of the predicted cell values and {100 * float((profiles < 0).mean()):.1f}% "
               f"of the profiles' values were below 0 (most negative {float(predicted.min()):.3f}); both clipped "
               "at 0 (log-normalised expression), the profiles after averaging")
    return np.clip(profiles, 0.0, None), np.clip(predicted, 0.0, None), share, message


def read_method_inputs(io) -> MethodInputs:
    """`--input_train` and `--input_test` of a method or control, checked against their formats and
    against each other, with the replicate-averaged training profiles; one-line error (exit 1) otherwise."""
    from component_io import fail

    train, test = io.read("input_train"), io.read("input_test")
    try:
        check_same_split(train, test)
        check_genes_match(train, test)
        return MethodInputs(train, test, TrainingProfiles(train), test_contexts(test), test_targets(test))
    except InputError as error:
        fail(f"--input_train/--input_test: {error}")


def read_prior_argument(par: dict, need_embedding: bool = False) -> Prior | None:
    """The `--input_prior` file if one was given (see `read_prior`); one-line error (exit 1) if unusable."""
    from component_io import fail

    if not par.get("input_prior"):
        return None
    try:
        return read_prior(par["input_prior"], need_embedding=need_embedding)
    except InputError as error:
        fail(f"--input_prior file '{par['input_prior']}': {error}")


SPLIT_KEYS = ("dataset_id", "task_id", "split_seed", "fold")


def check_same_split(train, test, **others):
    """Train and test (and `others`, by argument name: input_solution=...) must come from one split: the
    same dataset, task, seed and fold (where both files say), else a method would be trained on one split
    and asked about another's conditions."""
    files = {"input_train": train, "input_test": test, **others}
    first_name, first = next(iter(files.items()))
    for name, adata in list(files.items())[1:]:
        for key in SPLIT_KEYS:
            if key in first.uns and key in adata.uns and str(first.uns[key]) != str(adata.uns[key]):
                raise InputError(f"uns['{key}'] is {str(first.uns[key])!r} in --{first_name} but "
                                 f"{str(adata.uns[key])!r} in --{name}; expected the files of one split")


def read_control_inputs(io):
    """A control's `--input_train`, `--input_test` and `--input_solution`, checked to be of one split;
    one-line error (exit 1) otherwise."""
    from component_io import fail

    train, test, solution = io.read("input_train"), io.read("input_test"), io.read("input_solution")
    try:
        check_same_split(train, test, input_solution=solution)
    except InputError as error:
        fail(f"--input_train/--input_test/--input_solution: {error}")
    return train, test, solution


def target_genes_of_dataset(par: dict, dataset) -> list[str]:
    """Every target gene named in `--input`'s perturbation labels, sorted (a prior's gene universe adds them
    to the measured genes); one-line error (exit 1) on a malformed label."""
    from component_io import fail

    try:
        return sorted({t for p in dataset.obs["perturbation"].astype(str).unique() for t in targets_of(p)})
    except InputError as error:
        fail(f"--input file '{par['input']}': {error}")


def check_genes_match(train, test):
    """Test genes must be the training genes in the same order (the format promises it)."""
    if len(train.var_names) != len(test.var_names) or not (train.var_names == test.var_names).all():
        raise InputError("genes (var_names) of --input_test differ from --input_train; expected the same genes "
                         "in the same order")


# --------------------------------------------------------------------------------------------------
# Gene embeddings
# --------------------------------------------------------------------------------------------------

# Above this many conditions (and genes) the top components come from ARPACK instead of a dense
# eigendecomposition: same result to rounding, much faster for thousands of conditions.
DENSE_PCA_LIMIT = 500


def gene_pca(Y: np.ndarray, n_components: int) -> np.ndarray:
    """PCA scores of the rows of `Y` (genes as observations, conditions as variables).

    Each column is centred over the genes (as PCA centres its variables), then the top
    `n_components` principal directions are taken; the result is `U_K S_K` (genes x K), with the sign
    of each component fixed so that its largest-magnitude entry is positive. K is capped at the rank
    bound min(genes, conditions). Small problems use a dense eigendecomposition of the smaller Gram
    matrix; large ones a truncated SVD (ARPACK, seeded start vector, converged to machine precision).
    """
    Y = np.asarray(Y, dtype=np.float64)
    Z = Y - Y.mean(axis=0, keepdims=True)
    n_genes, n_cond = Z.shape
    k = int(max(0, min(n_components, n_genes, n_cond)))
    if k == 0:
        return np.zeros((n_genes, 0))
    if min(n_genes, n_cond) > DENSE_PCA_LIMIT and k < min(n_genes, n_cond) - 1:
        from scipy.sparse.linalg import svds

        start = np.random.default_rng(0).standard_normal(min(n_genes, n_cond))
        U, S, _ = svds(Z, k=k, v0=start, tol=0, solver="arpack")
        order = np.argsort(S)[::-1]
        scores = U[:, order] * S[order]
    elif n_cond <= n_genes:
        values, vectors = np.linalg.eigh(Z.T @ Z)          # conditions x conditions
        order = np.argsort(values)[::-1][:k]
        scores = Z @ vectors[:, order]                      # = U S
    else:
        values, vectors = np.linalg.eigh(Z @ Z.T)           # genes x genes
        order = np.argsort(values)[::-1][:k]
        scores = vectors[:, order] * np.sqrt(np.clip(values[order], 0.0, None))
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(k)])
    signs[signs == 0] = 1.0
    return scores * signs


def ridge_bilinear(G: np.ndarray, Y: np.ndarray, P: np.ndarray, ridge_penalty: float) -> np.ndarray:
    """W = (G'G + lambda I)^-1 G' Y P' (P P' + lambda I)^-1 (Ahlmann-Eltze et al. 2025).

    G: genes x K, Y: genes x conditions, P: L x conditions -> W: K x L. This is the exact minimiser of
    ||Y - G W P||^2 + lambda ||G W||^2 + lambda ||W P||^2 + lambda^2 ||W||^2 (set the gradient to zero).
    """
    lam = float(ridge_penalty)
    left = np.linalg.solve(G.T @ G + lam * np.eye(G.shape[1]), G.T @ Y @ P.T)        # K x L
    right = P @ P.T + lam * np.eye(P.shape[0])                                          # L x L, symmetric
    return np.linalg.solve(right, left.T).T


def embed_targets(targets, gene_position: dict, embedding: np.ndarray) -> tuple[np.ndarray | None, int]:
    """Sum of the embedding rows of the targets that have one; None when no target has one.

    Returns (vector or None, number of targets without an embedding).
    """
    rows = [gene_position[t] for t in targets if t in gene_position]
    missing = len(targets) - len(rows)
    if not rows:
        return None, missing
    return embedding[rows].sum(axis=0), missing


# --------------------------------------------------------------------------------------------------
# Prior knowledge (src/api/file_prior.yaml)
# --------------------------------------------------------------------------------------------------

class Prior:
    """Prior knowledge about genes: `genes` (pd.Index), `embedding` (genes x K or None),
    `is_regulator` (bool array or None), `network` (sparse regulator -> target or None)."""

    def __init__(self, genes, embedding=None, is_regulator=None, network=None, uns=None):
        self.genes = pd.Index(genes)
        self.embedding = embedding
        self.is_regulator = is_regulator
        self.network = network
        self.uns = dict(uns or {})
        self.position = {g: i for i, g in enumerate(self.genes)}


def read_prior(path: str, need_embedding: bool = False) -> Prior:
    """Read and check a prior file; raises InputError with a one-line reason (without the path)."""
    import os

    import anndata as ad

    if not os.path.isfile(path):
        raise InputError("file does not exist" if not os.path.exists(path) else "is not a file")
    with open(path, "rb") as handle:
        if handle.read(8) != b"\x89HDF\r\n\x1a\n":
            raise InputError("not an HDF5/h5ad file (no HDF5 signature); expected AnnData written by write_h5ad")
    try:
        adata = ad.read_h5ad(path)
    except Exception as error:  # anndata raises many types for damaged files
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"cannot be read as AnnData ({detail})") from None
    genes = pd.Index(adata.var_names.astype(str))
    if len(genes) == 0:
        raise InputError("has no genes (var_names is empty)")
    if not genes.is_unique:
        raise InputError(f"var_names are not unique (e.g. {genes[genes.duplicated()][:3].tolist()})")
    embedding = None
    if "gene_embedding" in adata.varm:
        embedding = adata.varm["gene_embedding"]
        embedding = embedding.to_numpy() if hasattr(embedding, "to_numpy") else embedding
        embedding = embedding.toarray() if sp.issparse(embedding) else np.asarray(embedding)
        if embedding.ndim != 2 or embedding.shape[0] != len(genes) or embedding.shape[1] == 0:
            raise InputError(f"varm['gene_embedding'] has shape {embedding.shape}, expected genes x K with K >= 1")
        if not np.issubdtype(embedding.dtype, np.number) or np.issubdtype(embedding.dtype, np.bool_):
            raise InputError(f"varm['gene_embedding'] has dtype {embedding.dtype}, expected numbers")
        embedding = embedding.astype(np.float64)
        if not np.isfinite(embedding).all():
            raise InputError(f"varm['gene_embedding'] has {int((~np.isfinite(embedding)).sum())} non-finite values, "
                             "expected finite numbers")
    elif need_embedding:
        raise InputError("has no varm['gene_embedding'] (genes x K), which this method needs; make one with "
                         "scripts/make_prior.py")
    is_regulator = None
    if "is_regulator" in adata.var.columns:
        column = adata.var["is_regulator"]
        if not pd.api.types.is_bool_dtype(column.dtype):
            raise InputError(f"var['is_regulator'] has dtype {column.dtype}, expected booleans")
        is_regulator = column.to_numpy().astype(bool)
    network = None
    if "network" in adata.varp:
        network = sp.csr_matrix(adata.varp["network"])
    # the prior's id names the method variant that uses it (its file name when the file has none)
    uns = dict(adata.uns)
    uns["prior_id"] = vocabulary.prior_id_of(uns.get("prior_id") or os.path.splitext(os.path.basename(path))[0])
    return Prior(genes, embedding, is_regulator, network, uns=uns)


def check_prior_overlap(prior: Prior, train_targets, test_targets, train_genes):
    """Fail clearly when the prior shares no gene with the perturbation targets or the training genes."""
    train_targets = {t for ts in train_targets for t in ts}
    test_targets = {t for ts in test_targets for t in ts}
    known = set(prior.genes)
    if known.isdisjoint(train_targets):
        example = ", ".join(sorted(train_targets)[:3]) or "none"
        overlap_genes = len(known & set(train_genes))
        raise InputError(
            f"none of its {len(known)} genes is a target of a training perturbation (e.g. {example}; "
            f"{overlap_genes} overlap the training genes); is it for another organism or gene naming?")
    return len(known & train_targets), len(known & test_targets), len(test_targets)
