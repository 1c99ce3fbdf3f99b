import sys

## VIASH START
par = {
    "input": "resources_test/simulated_grn/common_dataset.h5ad",
    "input_go": None,
    "output": "prior.h5ad",
    "n_components": 32,
    "n_neighbors": 20,
    "min_similarity": 0.1,
    "seed": 0,
}
meta = {"name": "go_embedding", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import baselines  # noqa: E402
import go_annotation  # noqa: E402
import go_graph  # noqa: E402
from component_io import ComponentIO, fail, log, not_applicable, number_argument  # noqa: E402

NAME = meta.get("name") or "go_embedding"
n_components = number_argument(par, "n_components", 32, int, low=1)
n_neighbors = number_argument(par, "n_neighbors", 20, int, low=1)
min_similarity = number_argument(par, "min_similarity", 0.1, float, low=0.0, high=1.0, high_open=True)
seed = number_argument(par, "seed", 0, int, low=0)

io = ComponentIO(par, meta)
dataset = io.read("input", required_obs=("perturbation",))
organism = str(dataset.uns.get("dataset_organism", "homo_sapiens"))
if organism not in ("homo_sapiens", "human"):
    # the annotation is human: synthetic or other organisms' genes cannot be looked up (and no download is
    # needed to know it)
    not_applicable(f"the dataset's organism is '{organism}'; the GO annotation used here is human")

# The gene universe: measured genes, then every target named in the perturbation labels (names only; the
# test file shows a method these names anyway), in a fixed order so the output is reproducible.
measured = [str(g) for g in dataset.var_names]
targets = baselines.target_genes_of_dataset(par, dataset)
known = set(measured)
universe = measured + [t for t in targets if t not in known]

try:
    gene2go, source = go_annotation.load(par.get("input_go"), NAME, "--input_go", log)
except go_annotation.AnnotationError as error:
    fail(str(error))

incidence, annotated = go_graph.term_incidence(universe, gene2go)
if len(annotated) < 3:
    not_applicable(f"{len(annotated)} of the {len(universe)} genes of the dataset have a GO term in {source}; "
                   "an embedding needs at least 3 (another organism or gene naming?)")
graph = go_graph.jaccard_graph(incidence, n_neighbors, min_similarity)
connected = np.diff(graph.indptr) > 0
# a gene whose terms are shared by no other gene above --min_similarity has no edge: the graph says nothing
# about it, so it gets no row rather than an arbitrary point
kept = annotated[connected]
graph = graph[connected][:, connected].tocsr()
if len(kept) < 3:
    not_applicable(f"only {len(kept)} genes have a GO neighbour with Jaccard > {min_similarity}; too few for an "
                   "embedding")
embedding, eigenvalues = go_graph.spectral_embedding(graph, n_components, seed=seed)
k = embedding.shape[1]
if k < n_components:
    log(f"{NAME}: [warning] --n_components {n_components} capped at {k} (the graph has {len(kept)} genes)")

genes = [universe[i] for i in kept]
covered = set(genes)
n_measured = sum(g in covered for g in measured)
n_targets = sum(t in covered for t in targets)
without_terms = [g for g in targets if not gene2go.get(g)]
log(f"{NAME}: universe of {len(universe)} genes ({len(measured)} measured + {len(universe) - len(measured)} "
    f"targets not measured); {len(universe) - len(annotated)} have no GO term and {len(annotated) - len(kept)} "
    f"no GO neighbour with Jaccard > {min_similarity}: they get no row (methods fall back for them)")
log(f"{NAME}: graph of {len(kept)} genes, {graph.nnz // 2} edges (<= {n_neighbors} neighbours per gene); "
    f"embedding K = {k}; covers {n_measured} of {len(measured)} measured genes and {n_targets} of "
    f"{len(targets)} perturbation targets"
    + (f" (without GO terms: {', '.join(without_terms[:5])}{', ...' if len(without_terms) > 5 else ''})"
       if without_terms else ""))

import anndata as ad  # noqa: E402

obs = pd.DataFrame({"eigenvalue": eigenvalues.astype(np.float64)},
                   index=pd.Index([f"SE{i + 1}" for i in range(k)], dtype=object))
# prior_id is the component name (the engine keys a method x prior pair on it); K has its own key
uns = {"prior_id": NAME, "n_components": int(k), "gene_universe_dataset_id": str(dataset.uns.get("dataset_id", "unknown")),
       "go_source": str(source), "n_universe_genes": int(len(universe)), "n_without_go": int(len(universe) - len(annotated)),
       "n_without_neighbour": int(len(annotated) - len(kept)), "n_targets": int(len(targets)),
       "n_targets_covered": int(n_targets), "n_neighbors": int(n_neighbors), "min_similarity": float(min_similarity),
       "method": "regularised spectral embedding of the GO-term Jaccard graph (GEARS' gene graph)"}
prior = ad.AnnData(X=embedding.T.astype(np.float32), obs=obs,
                   var=pd.DataFrame(index=pd.Index(genes, dtype=object)), uns=uns)
prior.varm["gene_embedding"] = embedding.astype(np.float64)
io.write("output", prior)
