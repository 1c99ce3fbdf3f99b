"""Harmonised perturbation labels, perturbation types and cell types (standard library only).

Included as a viash resource by the dataset loaders.

Perturbation labels become the common format's: target symbols sorted and joined with `+`, controls are
`control`. Understood source conventions:
- `+`-joined combinations (PerturBench `A+B`, GEARS `A+B`, `A+ctrl`, `ctrl`);
- `_`-joined combinations (scPerturb `A_B`) when `_` is among the separators;
- control spellings (`control`, `ctrl`, `non-targeting`, `NT`, `negative_control`, ... case-insensitive),
  also as one part of a combination (`A+ctrl` is the single perturbation `A`);
- guide numbers and plasmid ids as parts (`ZAP70_2`, `SNAI1_pDS266`, `sgRNA1`) are dropped from the targets;
- missing or unassigned labels (`nan`, `None`, `*`, empty) are not a perturbation: those cells are left out.
"""
from __future__ import annotations

import re

import vocabulary
from vocabulary import CONTROL, TARGET_SEPARATOR as SEPARATOR

# Lower-case spellings of control cells (non-targeting guides, empty vectors, untreated).
CONTROL_LABELS = frozenset({
    "control", "controls", "ctrl", "non-targeting", "nontargeting", "non_targeting", "non targeting",
    "non-targeting control", "nt", "ntc", "neg_ctrl", "negctrl", "negative_control", "negative control",
    "negative-control", "safe-targeting", "safe_targeting", "safetargeting", "unperturbed", "no-guide",
    "noguide", "empty", "empty_vector", "gfp", "egfp", "lacz", "luciferase",
})
# Lower-case labels of cells without a perturbation assignment: not controls, left out.
UNASSIGNED_LABELS = frozenset({"", "nan", "none", "null", "na", "<na>", "n/a", "*", "unassigned", "unknown",
                               "multiplet", "doublet", "ambiguous"})
# Parts of a label that name a guide or a plasmid rather than a gene: guide numbers (`_2`), `sg1`, `gRNA2`,
# `guide3`, plasmid ids such as `pDS266` or `pBA581`.
# Case matters: plasmid ids start with a lower-case `p`, so gene symbols such as PSG11 are kept.
DEFAULT_DROP_PART = r"^(\d{1,3}|(?i:sg|g|sgrna|grna|guide|sgid)[-_]?\d{1,3}|p[A-Z]{2,3}\d{2,6})$"

PERTURBATION_TYPES = ("knockout", "knockdown", "activation", "overexpression")
_TYPE_SPELLINGS = {
    "knockout": {"knockout", "knock-out", "ko", "crispr", "crisprko", "crispr-ko", "crispr_ko", "crispr ko",
                 "crispr-cas9", "crisprcas9", "cas9", "crispr/cas9", "crispr knockout"},
    "knockdown": {"knockdown", "knock-down", "kd", "crispri", "crispr-i", "crispr_i", "crispr interference",
                  "dcas9-krab", "sirna", "shrna", "rnai"},
    "activation": {"activation", "crispra", "crispr-a", "crispr_a", "crispr activation", "dcas9-vp64",
                   "dcas9-vpr", "sam"},
    "overexpression": {"overexpression", "over-expression", "oe", "orf", "cdna"},
}
_TYPE_BY_SPELLING = {spelling: kind for kind, spellings in _TYPE_SPELLINGS.items() for spelling in spellings}

# Canonical spellings of common cell lines (keys: lower case without spaces, dashes or dots).
_CELL_LINES = {
    "k562": "K562", "rpe1": "RPE1", "htertrpe1": "RPE1", "jurkat": "Jurkat", "hek293t": "HEK293T",
    "hek293": "HEK293", "a172": "A172", "t98g": "T98G", "u87mg": "U87MG", "u87": "U87MG", "hepg2": "HepG2",
    "mcf7": "MCF7", "a549": "A549", "hela": "HeLa", "thp1": "THP-1", "ipsc": "iPSC", "wtc11": "WTC11",
    "hct116": "HCT116", "mcf10a": "MCF10A", "kolf21j": "KOLF2.1J",
}


def _key(text: str) -> str:
    return re.sub(r"[\s\-_.]", "", text.lower())


def control_set(extra=()) -> frozenset:
    """The default control spellings plus `extra` (lower-cased)."""
    return CONTROL_LABELS | {str(label).strip().lower() for label in extra if str(label).strip()}


def harmonize_perturbation(label, *, separators=(SEPARATOR,), controls=CONTROL_LABELS,
                           drop_part: str | None = None) -> str | None:
    """The common-format label of one source label, or None if the cell has no assigned perturbation.

    >>> harmonize_perturbation("KLF1_CEBPE", separators=("+", "_"))
    'CEBPE+KLF1'
    >>> harmonize_perturbation("MAPK1+ctrl"), harmonize_perturbation("non-targeting"), harmonize_perturbation("nan")
    ('MAPK1', 'control', None)
    """
    if label is None:
        return None
    text = str(label).strip()
    lowered = text.lower()
    if lowered in UNASSIGNED_LABELS:
        return None
    if lowered in controls:
        return CONTROL
    pattern = "|".join(re.escape(s) for s in separators)
    parts = [p.strip() for p in re.split(pattern, text)] if pattern else [text]
    drop = re.compile(drop_part) if drop_part else None
    targets = set()
    for part in parts:
        if not part or part.lower() in controls or (drop is not None and drop.match(part)):
            continue
        if part.lower() in UNASSIGNED_LABELS:
            return None
        targets.add(part)
    return vocabulary.label(targets)


def harmonize_labels(values, **options) -> dict:
    """{source label: common label or None} for the distinct values of a column (labels are few, cells many)."""
    return {value: harmonize_perturbation(value, **options) for value in dict.fromkeys(values)}


def harmonize_perturbation_type(value) -> str | None:
    """knockout | knockdown | activation | overexpression for a source spelling (CRISPRi, ORF, ...), else None."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in PERTURBATION_TYPES:
        return text
    return _TYPE_BY_SPELLING.get(text) or _TYPE_BY_SPELLING.get(text.replace(" ", ""))


def harmonize_cell_type(value) -> str:
    """Canonical spelling of known cell lines (`k562` -> `K562`, `Jurkat cells` -> `Jurkat`); others stripped."""
    text = re.sub(r"\s+", " ", str(value)).strip()
    key = _key(text)
    if key in _CELL_LINES:
        return _CELL_LINES[key]
    for suffix in ("cells", "cell", "cellline"):
        if key.endswith(suffix) and key[: -len(suffix)] in _CELL_LINES:
            return _CELL_LINES[key[: -len(suffix)]]
    return text
