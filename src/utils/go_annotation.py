"""GEARS' gene -> GO-terms map (`gene2go_all.pkl`: symbol -> set of GO ids), from GEARS' published file or
from a gene -> GO table. Standard library + pandas (+ download.py for the published file); a resource of the
gears method and the go_embedding prior, which read the same annotation the same way (`load`)."""
from __future__ import annotations

import os
import pickle

# GEARS' published map on Harvard Dataverse (the file `PertData` downloads as gene2go_all.pkl)
GENE2GO_FILE_ID = 6153417
GENE2GO_URL = f"https://dataverse.harvard.edu/api/access/datafile/{GENE2GO_FILE_ID}"


class AnnotationError(ValueError):
    """The annotation cannot be used (one-line message)."""


def from_table(path: str) -> dict[str, set[str]]:
    """symbol -> set of GO ids from a tsv (gzip allowed) with `symbol` and `go_id` columns.

    Rows with evidence `ND` ("no biological data available") are annotations to the root terms that
    say nothing about a gene's function; they would join unrelated genes in the Jaccard graph.
    """
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t", dtype=str)
    except Exception as error:  # noqa: BLE001 - any unreadable file is one message
        raise AnnotationError(f"cannot be read as a tab-separated table ({type(error).__name__}: {error})")
    missing = [c for c in ("symbol", "go_id") if c not in table.columns]
    if missing:
        raise AnnotationError(f"has no column {missing[0]!r} (columns: {', '.join(table.columns[:6])}); "
                              "expected `symbol` and `go_id`")
    if "evidence" in table.columns:
        table = table[table["evidence"] != "ND"]
    table = table.dropna(subset=["symbol", "go_id"])
    if table.empty:
        raise AnnotationError("holds no gene -> GO rows")
    return {symbol: set(group) for symbol, group in table.groupby("symbol")["go_id"]}


def from_pickle(path: str) -> dict[str, set[str]]:
    """GEARS' own pickle; its values are turned into sets, which GEARS' graph code needs."""
    with open(path, "rb") as handle:
        mapping = pickle.load(handle)
    if not isinstance(mapping, dict) or not mapping:
        raise AnnotationError("is not a non-empty gene -> GO mapping")
    return {str(gene): set(terms) for gene, terms in mapping.items()}


def load(table: str | None, name: str, argument: str, log) -> tuple[dict[str, set[str]], str]:
    """The gene -> GO map a component uses, and where it came from: the table `table` (its `argument`, e.g.
    `--go_annotation`), else the table named by $PERTURBCAST_GO_ANNOTATION (the benchmark passes no component
    arguments, so an offline run names the shared table there), else GEARS' published `gene2go_all.pkl`,
    downloaded into the perturbcast cache and checked against Dataverse's md5. Raises AnnotationError with a
    one-line message naming the file (or the download) that could not be used."""
    from vocabulary import GO_ANNOTATION_VARIABLE

    if not table and os.environ.get(GO_ANNOTATION_VARIABLE):
        table = os.environ[GO_ANNOTATION_VARIABLE]
        log(f"{name}: {argument} from ${GO_ANNOTATION_VARIABLE}")
    if table:
        try:
            gene2go = from_table(table)
        except AnnotationError as error:
            raise AnnotationError(f"{argument} file '{table}': {error}") from None
        log(f"{name}: GO map from {table} ({len(gene2go)} genes)")
        return gene2go, str(table)
    from download import DownloadError, dataverse_checksum, fetch

    try:
        path, _sha = fetch(GENE2GO_URL, published=dataverse_checksum(GENE2GO_FILE_ID), log=log)
        return from_pickle(path), GENE2GO_URL
    except (DownloadError, AnnotationError) as error:
        raise AnnotationError(f"GEARS' GO map (gene2go_all.pkl) could not be downloaded ({error}); pass {argument} "
                              "with a gene -> GO table (columns symbol, go_id) to work offline") from None
