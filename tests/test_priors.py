"""Prior components (src/priors/, src/api/comp_prior.yaml; issue 25): go_embedding and prior_file.

- go_embedding on a hand-made GO table: genes that share GO terms lie closer in the embedding than genes that
  share none; a gene without any term, and one whose only term no other gene has, get no row; a target that is
  not measured but annotated gets one; the output passes the prior contract (format checker and the methods'
  reader); the same inputs give the same embedding;
- go_embedding on the real GO table (../shared/data) and the real Norman devel subset covers every held-out
  target of the unseen_perturbation split;
- the payoff, measured: on that split linear_baseline and knn_perturbation fall back to the training mean for
  every test condition without a prior (the held-out targets are not among the 500 measured genes) and for
  none with the GO prior; the Pearson delta of both runs is printed (`pytest -s`);
- prior_file passes a good file on unchanged and stops in one line naming the file and field on a bad one.
"""
from __future__ import annotations

import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from perturbcast.formats import fallback_conditions

from conftest import ROOT, shared_file
from realdata import pseudobulk
from test_methods import make_split, pearson_delta, run, run_all

sys.path.insert(0, str(ROOT / "src" / "utils"))
import baselines  # noqa: E402
from formats import check_anndata  # noqa: E402

GO_EMBEDDING, PRIOR_FILE = "src/priors/go_embedding", "src/priors/prior_file"
GO = "human_gene2go_orgHsEgDb_3.16.0.tsv.gz"
PRIOR_FORMAT = yaml.safe_load((ROOT / "src" / "api" / "file_prior.yaml").read_text())["info"]["format"]

# Three functional groups with their own terms (one term shared by all of A and of B, so A and B are not
# disconnected cliques), a gene with no term and a gene whose only term no other gene has.
GROUPS = {"A": ["GA1", "GA2", "GA3", "GA4"], "B": ["GB1", "GB2", "GB3", "GB4"], "C": ["GC1", "GC2", "GC3"]}
TERMS = {**{g: ["GO:A1", "GO:A2", "GO:A3", "GO:AB"] for g in GROUPS["A"]},
         **{g: ["GO:B1", "GO:B2", "GO:B3", "GO:AB"] for g in GROUPS["B"]},
         **{g: ["GO:C1", "GO:C2"] for g in GROUPS["C"]}, "LONE": ["GO:ONLY"]}
MEASURED = ["GA1", "GA2", "GA3", "GA4", "GB1", "GB2", "GB3", "GC1", "GC2", "GC3", "NOGO", "LONE"]


def hand_made(folder):
    """The GO table (with an ND row, which must be ignored) and a common dataset whose targets include GB4,
    which is annotated but not measured."""
    rows = [(g, t, "IDA") for g, terms in TERMS.items() for t in terms] + [("NOGO", "GO:0008150", "ND")]
    table = pd.DataFrame(rows, columns=["symbol", "go_id", "evidence"])
    table.to_csv(folder / "go.tsv.gz", sep="\t", index=False)
    perturbations = ["control"] * 6 + ["GA1"] * 4 + ["GB4"] * 4 + ["GC1+GB4"] * 4
    rng = np.random.default_rng(0)
    n = len(perturbations)
    common = pseudobulk(rng.gamma(2.0, 1.0, size=(n, len(MEASURED))), perturbations, ["activation"] * n, ["K562"] * n,
                        ["none"] * n, MEASURED, uns={"dataset_id": "hand_made", "dataset_name": "hand-made",
                                                     "dataset_url": "https://example.org", "dataset_reference": "10.0000/none",
                                                     "normalization_id": "log_cp10k_cell_mean"})
    common.write_h5ad(folder / "common.h5ad")
    return folder / "go.tsv.gz", folder / "common.h5ad"


@pytest.fixture(scope="module")
def hand_made_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("go_embedding_hand_made")
    go, common = hand_made(out)
    base = {"input": common, "input_go": go, "n_components": 3}
    jobs = {name: (GO_EMBEDDING, {**base, "output": out / f"{name}.h5ad"}, out / f"{name}.log") for name in ("a", "b")}
    return out, run_all(jobs)


def test_go_embedding_puts_genes_sharing_terms_together(hand_made_runs):
    out, results = hand_made_runs
    code, err = results["a"]
    assert code == 0, err
    prior = ad.read_h5ad(out / "a.h5ad")
    genes = list(prior.var_names)
    # NOGO (only an ND row) and LONE (a term no other gene has) have no row; GB4, a target that is not
    # measured, has one (measured genes first, then targets, as the universe is ordered)
    assert genes == [g for g in MEASURED if g not in ("NOGO", "LONE")] + ["GB4"]
    assert "1 have no GO term and 1 no GO neighbour" in err
    assert "covers 10 of 12 measured genes and 3 of 3 perturbation targets" in err
    embedding = prior.varm["gene_embedding"]
    assert embedding.shape == (len(genes), 3)
    distance = lambda a, b: float(np.linalg.norm(embedding[genes.index(a)] - embedding[genes.index(b)]))  # noqa: E731
    group_of = {g: k for k, members in GROUPS.items() for g in members}
    within = [distance(a, b) for a in genes for b in genes if a < b and group_of[a] == group_of[b]]
    between = [distance(a, b) for a in genes for b in genes if a < b and group_of[a] != group_of[b]]
    assert max(within) < min(between), (max(within), min(between))


def test_go_embedding_output_is_a_valid_prior_and_deterministic(hand_made_runs):
    out, results = hand_made_runs
    assert all(code == 0 for code, _ in results.values()), results
    first, second = ad.read_h5ad(out / "a.h5ad"), ad.read_h5ad(out / "b.h5ad")
    assert check_anndata(first, PRIOR_FORMAT) == []
    prior = baselines.read_prior(str(out / "a.h5ad"), need_embedding=True)  # what the methods read
    assert np.isfinite(prior.embedding).all() and prior.uns["prior_id"] == "go_embedding"
    assert prior.uns["n_components"] == 3
    assert np.allclose(np.linalg.norm(prior.embedding, axis=1), 1.0)
    assert list(first.var_names) == list(second.var_names)
    assert np.array_equal(first.varm["gene_embedding"], second.varm["gene_embedding"])


def test_go_embedding_bad_table_is_one_line(tmp_path):
    _go, common = hand_made(tmp_path)
    (tmp_path / "bad.tsv").write_text("gene\tterm\nGA1\tGO:1\n")
    code, err = run(GO_EMBEDDING, {"input": common, "input_go": tmp_path / "bad.tsv", "output": tmp_path / "p.h5ad"},
                    tmp_path / "log")
    errors = [line for line in err.splitlines() if line.startswith("[error]")]
    assert code == 1 and len(errors) == 1 and "--input_go file" in errors[0] and "'symbol'" in errors[0], err
    assert not (tmp_path / "p.h5ad").exists()


# ---------------------------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def norman19(tmp_path_factory):
    from realdata import norman19_common  # skips when ../shared/data is absent

    go = shared_file(GO)
    out = make_split(norman19_common(seed=0), tmp_path_factory.mktemp("norman19_priors"))
    code, err = run(GO_EMBEDDING, {"input": out / "common.h5ad", "input_go": go, "output": out / "go_prior.h5ad"},
                    out / "go_embedding.log")
    assert code == 0, err
    base = {"input_train": out / "train.h5ad", "input_test": out / "test.h5ad"}
    jobs = {f"{name}{variant}": (f"src/methods/{name}", {**base, **extra, "output": out / f"{name}{variant}.h5ad"},
                                 out / f"{name}{variant}.log")
            for name in ("linear_baseline", "knn_perturbation")
            for variant, extra in (("", {}), ("_go", {"input_prior": out / "go_prior.h5ad"}))}
    return out, err, run_all(jobs)


def test_go_embedding_covers_the_held_out_norman_targets(norman19):
    out, log, _ = norman19
    test = ad.read_h5ad(out / "test.h5ad")
    held_out = {t for p in test.obs["perturbation"].astype(str) for t in p.split("+")}
    genes = set(ad.read_h5ad(out / "train.h5ad", backed="r").var_names)
    assert held_out and not held_out & genes  # why the methods fall back without a prior
    prior = ad.read_h5ad(out / "go_prior.h5ad")
    assert held_out <= set(prior.var_names), held_out - set(prior.var_names)
    assert check_anndata(prior, PRIOR_FORMAT) == []
    # the one Norman target without GO annotation in org.Hs.eg.db 3.16 is not in fold 0's test set
    assert "30 of 31 perturbation targets (without GO terms: IER5L)" in log


def test_the_go_prior_ends_the_fallbacks_on_norman(norman19):
    out, _log, results = norman19
    for name, (code, err) in results.items():
        assert code == 0, (name, err)
    solution = ad.read_h5ad(out / "solution.h5ad")
    for method in ("linear_baseline", "knn_perturbation"):
        before = fallback_conditions(out / f"{method}.h5ad")
        after = fallback_conditions(out / f"{method}_go.h5ad")
        pearson = {v: pearson_delta(solution, ad.read_h5ad(out / f"{method}{v}.h5ad").X).mean() for v in ("", "_go")}
        print(f"{method}: {len(before)} of {solution.n_obs} test conditions fall back without a prior, {len(after)} "
              f"with go_embedding; mean Pearson delta {pearson['']:.3f} -> {pearson['_go']:.3f}")
        assert len(before) == solution.n_obs and after == [], (before, after)
        assert np.isfinite(pearson["_go"])


# ---------------------------------------------------------------------------------------------- prior_file

def _user_prior(path, genes, embedding=None, uns=None):
    prior = ad.AnnData(obs=pd.DataFrame(index=pd.Index([], dtype=object)),
                       var=pd.DataFrame(index=pd.Index(list(genes), dtype=object)), uns=uns or {})
    if embedding is not None:
        prior.varm["gene_embedding"] = embedding
    prior.write_h5ad(path)


def test_prior_file_passes_a_good_file_on_unchanged(tmp_path):
    _go, common = hand_made(tmp_path)
    embedding = np.arange(12.0).reshape(4, 3)
    _user_prior(tmp_path / "mine.h5ad", ["GA1", "GB4", "ELSEWHERE", "GC2"], embedding)  # empty obs: allowed
    code, err = run(PRIOR_FILE, {"input": common, "input_prior_file": tmp_path / "mine.h5ad",
                                 "output": tmp_path / "out.h5ad"}, tmp_path / "log")
    assert code == 0, err
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert list(out.var_names) == ["GA1", "GB4", "ELSEWHERE", "GC2"]  # nothing restricted
    assert np.array_equal(out.varm["gene_embedding"], embedding) and out.uns["prior_id"] == "mine"
    assert "covers 2 of 12 measured genes and 2 of 3 perturbation targets" in err


@pytest.mark.parametrize("case, make, field", [
    ("non_finite", lambda p: _user_prior(p, ["GA1", "GB1"], np.array([[1.0], [np.nan]])), "varm['gene_embedding']"),
    ("no_slot", lambda p: _user_prior(p, ["GA1", "GB1"]), "varm['gene_embedding']"),
    ("no_overlap", lambda p: _user_prior(p, ["X1", "X2"], np.ones((2, 2))), "none of its 2 genes"),
    ("bad_prior_id", lambda p: _user_prior(p, ["GA1"], np.ones((1, 2)), uns={"prior_id": 3}), "prior_id"),
    ("not_h5ad", lambda p: p.write_text("symbol,x\n"), "not an HDF5"),
])
def test_prior_file_bad_input_is_one_line(tmp_path, case, make, field):
    _go, common = hand_made(tmp_path)
    make(tmp_path / "bad.h5ad")
    code, err = run(PRIOR_FILE, {"input": common, "input_prior_file": tmp_path / "bad.h5ad",
                                 "output": tmp_path / "out.h5ad"}, tmp_path / "log")
    errors = [line for line in err.splitlines() if line.startswith("[error]")]
    assert code == 1 and len(errors) == 1, err
    assert str(tmp_path / "bad.h5ad") in errors[0] and field in errors[0], errors[0]
    assert not (tmp_path / "out.h5ad").exists()
