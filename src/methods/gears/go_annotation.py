"""GEARS' gene -> GO-terms map (`gene2go_all.pkl`: symbol -> set of GO ids), from GEARS' published file or
from a gene -> GO table. Standard library + pandas; included as a resource of the gears component."""
from __future__ import annotations

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
