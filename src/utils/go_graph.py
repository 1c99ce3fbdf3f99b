"""A gene embedding from a gene -> GO-terms map: the Jaccard similarity graph GEARS builds (Roohani et al.
2023, doi 10.1038/s41587-023-01905-6: genes linked by the Jaccard index of their GO-term sets, each gene's
strongest neighbours kept) and a spectral embedding of that graph. numpy + scipy only; sparse throughout, so
a universe of ~20,000 genes needs no dense genes x genes matrix (the similarity is computed a block of rows
at a time and only each gene's top neighbours are kept).

    incidence, annotated = term_incidence(genes, gene2go)      # sparse genes x terms (annotated genes only)
    graph = jaccard_graph(incidence, n_neighbors=20, min_similarity=0.1)
    embedding, eigenvalues = spectral_embedding(graph, n_components=32, seed=0)
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Rows of the gene x gene intersection computed at once: a dense block of this many rows x all genes
# (256 x 20,000 float32 = 20 MB) bounds the memory whatever the universe size.
BLOCK_ROWS = 256
# Up to this many genes the eigenproblem is solved densely (exact and fast); above, ARPACK (eigsh).
DENSE_EIGEN_LIMIT = 600


def term_incidence(genes, gene2go: dict) -> tuple[sp.csr_matrix, np.ndarray]:
    """Binary genes x GO-terms matrix (CSR, float32) of the genes of `genes` that have at least one term, and
    the positions (in `genes`) of those genes. Terms are numbered in sorted order, so the result does not
    depend on the order of the sets."""
    annotated = np.array([i for i, g in enumerate(genes) if gene2go.get(g)], dtype=np.int64)
    term_sets = [gene2go[genes[i]] for i in annotated]
    terms = sorted(set().union(*term_sets)) if term_sets else []
    column = {t: j for j, t in enumerate(terms)}
    indptr = np.cumsum([0] + [len(s) for s in term_sets])
    indices = np.array([column[t] for s in term_sets for t in sorted(s)], dtype=np.int64)
    matrix = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr),
                           shape=(len(annotated), len(terms)))
    return matrix, annotated


def jaccard_graph(incidence: sp.csr_matrix, n_neighbors: int, min_similarity: float) -> sp.csr_matrix:
    """Symmetric sparse gene x gene graph: each gene's `n_neighbors` most Jaccard-similar other genes with a
    similarity above `min_similarity` (GEARS keeps 20 above 0.1), an edge kept when either end chose it
    (weight = the Jaccard index). Ties at the k-th neighbour are broken by numpy's partition, the same on
    every run, so the graph is deterministic."""
    n = incidence.shape[0]
    sizes = np.asarray(incidence.sum(axis=1)).ravel()
    # terms held by one gene only add to that gene's size, never to an intersection: dropped from the product
    shared = np.asarray((incidence > 0).sum(axis=0)).ravel() >= 2
    reduced = incidence[:, shared].tocsr()
    transposed = reduced.T.tocsc()
    rows, cols, values = [], [], []
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        inter = (reduced[start:stop] @ transposed).toarray()                   # block x n shared-term counts
        union = sizes[start:stop, None] + sizes[None, :] - inter
        jaccard = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        jaccard[np.arange(stop - start), np.arange(start, stop)] = 0.0         # no self-loops
        jaccard[jaccard <= min_similarity] = 0.0
        k = min(n_neighbors, n - 1)
        if k <= 0:
            continue
        # the k largest per row without sorting the whole row (argpartition: linear, and deterministic)
        order = np.argpartition(-jaccard, k - 1, axis=1)[:, :k]
        chosen = np.take_along_axis(jaccard, order, axis=1)
        keep = chosen > 0
        rows.append(np.repeat(np.arange(start, stop), k)[keep.ravel()])
        cols.append(order[keep])
        values.append(chosen[keep])
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float64)
    graph = sp.csr_matrix((np.concatenate(values).astype(np.float64), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n, n))
    return graph.maximum(graph.T).tocsr()


def spectral_embedding(graph: sp.csr_matrix, n_components: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Genes x K embedding of a symmetric graph whose every node has an edge.

    Regularised spectral embedding (Qin and Rohe 2013): the leading eigenvectors of
    D_t^-1/2 (A + t/n 11') D_t^-1/2 with t = the mean degree and D_t = D + t. The regularisation keeps a graph
    with several components or low-degree genes from spending its leading eigenvectors on indicators of small
    cliques (what the plain normalised Laplacian does), without ever forming the dense t/n 11' term. The first
    eigenvector (proportional to sqrt(D_t), the same for every graph) carries no information and is dropped.
    Each kept eigenvector is scaled by its eigenvalue, signs are fixed (largest-magnitude entry positive) and
    each gene's row is scaled to unit length (Ng, Jordan and Weiss 2001), so that every gene has the same
    weight in a method's ridge fit whatever its degree. ARPACK starts from a vector drawn with `seed`:
    deterministic. Returns (embedding, eigenvalues of the kept vectors)."""
    n = graph.shape[0]
    k = min(int(n_components), n - 2)
    if k < 1:
        raise ValueError(f"the graph has {n} genes, too few for an embedding (at least 3 are needed)")
    degree = np.asarray(graph.sum(axis=1)).ravel()
    tau = float(degree.mean())
    scale = 1.0 / np.sqrt(degree + tau)

    def apply(x):
        x = np.asarray(x, dtype=np.float64)
        y = scale[:, None] * x if x.ndim == 2 else scale * x
        out = graph @ y + (tau / n) * (y.sum(axis=0, keepdims=True) if y.ndim == 2 else y.sum())
        return scale[:, None] * out if out.ndim == 2 else scale * out

    if n <= DENSE_EIGEN_LIMIT:
        values, vectors = np.linalg.eigh(apply(np.eye(n)))
    else:
        from scipy.sparse.linalg import LinearOperator, eigsh

        operator = LinearOperator((n, n), matvec=apply, matmat=apply, dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(n)
        values, vectors = eigsh(operator, k=k + 1, which="LA", v0=v0, tol=1e-8)
    order = np.argsort(-values, kind="stable")[1:k + 1]                       # drop the trivial top vector
    values, vectors = values[order], vectors[:, order]
    flip = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    embedding = vectors * np.where(flip == 0, 1.0, flip) * values
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    return embedding / np.where(norms > 0, norms, 1.0), values
