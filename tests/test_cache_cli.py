"""`perturbcast cache add | list` (perturbcast/cache_cli.py) on generated files, offline."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pandas as pd
import pytest

from perturbcast import cache_cli

from conftest import ROOT, SHARED_DATA
from test_userdata import screen

REPLOGLE_URL = "https://zenodo.org/records/13350497/files/ReplogleWeissman2022_K562_essential.h5ad"
DEVEL_URL = "https://raw.githubusercontent.com/altoslabs/perturbench/d357dfae/src/perturbench/data/resources/devel.h5ad"
# every connection the loaders or `cache add` might try fails at once: the tests prove offline use
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": ""}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("PERTURBCAST_CACHE", str(root))
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    return root


def scperturb_file(path, seed=0):
    """A study file in scPerturb's layout: obs perturbation (controls `control`), cell_line, raw counts."""
    adata = screen(n_cells_per_condition=30, seed=seed)
    adata.obs["perturbation"] = adata.obs.pop("target_gene").replace("non-targeting", "control").str.replace("+", "_")
    adata.obs["cell_line"] = "K562"
    adata.write_h5ad(path)
    return path


def download():
    return cache_cli._download_module(str(ROOT))


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "perturbcast", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_add_offline_places_the_file_unverified_where_the_loader_looks(cache, tmp_path):
    source = scperturb_file(tmp_path / "downloaded.h5ad")
    result = cli("cache", "add", source, "--dataset", "replogle2022_k562_essential", "--offline")
    assert result.returncode == 0, result.stderr
    target = cache / "zenodo.org/records/13350497/files/ReplogleWeissman2022_K562_essential.h5ad"
    assert download().cache_path(REPLOGLE_URL) == str(target)
    assert target.read_bytes() == source.read_bytes() and source.exists()  # copied, not moved
    record = download().read_record(str(target))
    assert record["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest() and record["url"] == REPLOGLE_URL
    assert record["verified_against"].startswith("unverified")
    listing = cli("cache", "list")
    line = next(line for line in listing.stdout.splitlines() if "ReplogleWeissman2022_K562_essential" in line)
    assert "datasets: replogle2022_k562_essential" in line and line.endswith("unverified")


def test_pinned_checksum_accepts_the_right_file_and_refuses_another(cache, tmp_path):
    wrong = scperturb_file(tmp_path / "devel.h5ad")
    with pytest.raises(cache_cli.CacheError, match="pinned sha256 .* is 220998f5"):
        cache_cli.add(ROOT, str(wrong), dataset="norman2019_devel")
    assert not os.path.exists(download().cache_path(DEVEL_URL))
    real = SHARED_DATA / "perturbench_devel.h5ad"
    if real.exists():  # the real file verifies against the pinned sha256 and serves both of its datasets
        message = cache_cli.add(ROOT, str(real), dataset="mcfaline2023_devel")
        assert "norman2019_devel, mcfaline2023_devel" in message and "verified against the pinned sha256" in message


def test_published_and_given_checksums(cache, tmp_path, monkeypatch):
    source = scperturb_file(tmp_path / "norman.h5ad")
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    module = download()
    asked = []

    def zenodo(record, name, timeout=30.0):
        asked.append((record, name))
        return lambda: module.Checksum("md5", md5, f"Zenodo record {record}")
    monkeypatch.setattr(module, "zenodo_checksum", zenodo)
    message = cache_cli.add(ROOT, str(source), dataset="norman2019")
    assert asked == [(13350497, "NormanWeissman2019_filtered.h5ad")] and "verified against the Zenodo record" in message
    target = module.cache_path("https://zenodo.org/records/13350497/files/NormanWeissman2019_filtered.h5ad")
    assert module.read_record(target)["verified_against"] == f"md5 {md5} (Zenodo record 13350497)"
    with pytest.raises(cache_cli.CacheError, match="has md5"):
        cache_cli.add(ROOT, str(source), dataset="dixit2016", checksum="md5:" + "0" * 32)
    assert "verified against the --checksum" in cache_cli.add(ROOT, str(source), dataset="dixit2016",
                                                             checksum=f"md5:{md5}")


def test_another_file_in_place_is_kept(cache, tmp_path):
    first, second = scperturb_file(tmp_path / "a.h5ad", seed=0), scperturb_file(tmp_path / "b.h5ad", seed=1)
    cache_cli.add(ROOT, str(first), dataset="adamson2016", offline=True)
    with pytest.raises(cache_cli.CacheError, match="already holds another file"):
        cache_cli.add(ROOT, str(second), dataset="adamson2016", offline=True)
    cache_cli.add(ROOT, str(second), dataset="adamson2016", offline=True, force=True, move=True)
    target = download().cache_path("https://zenodo.org/records/13350497/files/AdamsonWeissman2016_GSM2406681_10X010.h5ad")
    aside = [p for p in os.listdir(os.path.dirname(target)) if ".replaced-" in p]
    assert len(aside) == 1 and not second.exists()
    assert open(os.path.join(os.path.dirname(target), aside[0]), "rb").read() == first.read_bytes()


def test_any_url_and_errors(cache, tmp_path):
    source = tmp_path / "file.bin"
    source.write_bytes(b"abc")
    message = cache_cli.add(ROOT, str(source), url="https://example.org/data/file.bin")
    assert "no known dataset" in message and "UNVERIFIED" in message
    rows = cache_cli.entries(ROOT)
    assert [(r["path"], r["datasets"], r["status"]) for r in rows] == [("example.org/data/file.bin", [], "unverified")]
    with pytest.raises(cache_cli.CacheError, match="downloads nothing"):
        cache_cli.add(ROOT, str(source), dataset="simulated_grn")
    with pytest.raises(cache_cli.CacheError, match="not a dataset of any loader"):
        cache_cli.add(ROOT, str(source), dataset="norman2091")
    with pytest.raises(cache_cli.CacheError, match="does not exist"):
        cache_cli.add(ROOT, str(tmp_path / "absent"), dataset="norman2019")
    result = cli("cache", "add", tmp_path / "absent", "--dataset", "norman2019")
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0 and result.stderr.startswith("[error]")


def test_cached_file_runs_an_offline_benchmark(cache, tmp_path):
    source = scperturb_file(tmp_path / "ReplogleWeissman2022_K562_essential.h5ad")
    assert cli("cache", "add", source, "--dataset", "replogle2022_k562_essential", "--offline").returncode == 0
    output = tmp_path / "bench"
    result = cli("benchmark", "--datasets", "replogle2022_k562_essential", "--tasks", "unseen_perturbation",
                 "--methods", "train_mean", "--metrics", "delta_error", "--folds", "0", "--jobs", "2",
                 "--n-resamples", "50", "--output", output)
    assert result.returncode == 0, result.stderr[-2000:]
    trace = pd.read_csv(output / "trace.tsv", sep="\t")
    dataset = trace[trace.iloc[:, 0] == "dataset/replogle2022_k562_essential"]
    assert list(dataset["status"]) == ["ok"], trace.to_string()
    log = (output / "datasets" / "replogle2022_k562_essential" / "log.txt").read_text()
    assert "downloading" not in log
    results = pd.read_parquet(output / "results.parquet")
    assert set(results["dataset_id"]) == {"replogle2022_k562_essential"}
    assert {"train_mean", "replicate_ceiling"} <= set(results["method_id"])
    assert set(results["metric_component"]) == {"delta_error"} and results["value"].notna().all()
