"""The domain vocabulary every component and the perturbcast package share: one definition each.

Shipped to components as a viash resource (`- path: /src/utils/vocabulary.py`, imported as `vocabulary`
after `sys.path.append(meta["resources_dir"])`); the perturbcast package loads this same file
(`perturbcast.layout.vocabulary`), so the engine's leakage check and the components cannot disagree on
what a control is or how a combination is spelled. Plain Python only: it is imported by every
component, whatever its environment.

Common perturbation labels (src/api/file_common_dataset.yaml): `control` for control cells, otherwise
the target gene symbols joined with `+` (sorted by the loaders, e.g. `CEBPA+KLF1`).
"""
from __future__ import annotations

# The label of control (unperturbed) conditions in the common format.
CONTROL = "control"
# Joins the targets of a combination perturbation.
TARGET_SEPARATOR = "+"

# Joins a method and the prior it was given into the id of that variant (`linear_baseline+go_embedding`): the
# method_id its predictions carry and the results key it on, so every table keeps one row per variant. A
# method run without a prior keeps its own name; a prior id never contains the separator (prior_id_of).
PRIOR_SEPARATOR = "+"
NO_PRIOR = "none"


def method_variant(method: str, prior_id=None) -> str:
    """The id of `method` given the prior `prior_id` (None or NO_PRIOR: the method alone)."""
    return f"{method}{PRIOR_SEPARATOR}{prior_id}" if prior_id and prior_id != NO_PRIOR else str(method)


def method_and_prior(method_id) -> tuple[str, str]:
    """(method, prior id or NO_PRIOR) of a method id made by method_variant."""
    method, _, prior = str(method_id).partition(PRIOR_SEPARATOR)
    return method, prior or NO_PRIOR


def prior_id_of(value) -> str:
    """A prior's id as method ids and folders can carry it (the separator and path characters become `_`)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(value)) or "prior"


# Exit codes a component answers with instead of a result (the engines record them as statuses of their
# own, not as failures; perturbcast.layout maps them to `Status`).
# The component cannot be applied to this input (e.g. a task on a dataset without combinations).
NOT_APPLICABLE_EXIT_CODE = 99
# The component's optional packages (an extra, its own environment) are not installed here.
NOT_INSTALLED_EXIT_CODE = 98
# A log line that advises the user (e.g. an obs column the loader should be told about); the benchmark prints
# these lines of its dataset steps' logs at the end of a run.
HINT_TAG = "[hint]"


class TargetLabelError(ValueError):
    """A perturbation label that is not `control` nor target symbols joined with `+`."""


def targets(perturbation) -> tuple[str, ...]:
    """The target symbols of a common perturbation label, in label order (`control` -> no targets).

    The one parser of labels: a malformed label (an empty or space-padded symbol, as in `A+` or
    `A + B`) raises TargetLabelError rather than being read as something else."""
    perturbation = str(perturbation)
    if perturbation == CONTROL:
        return ()
    parts = tuple(perturbation.split(TARGET_SEPARATOR))
    if any(not part or part != part.strip() for part in parts):
        raise TargetLabelError(f"obs['perturbation'] holds {perturbation!r}, expected target symbols joined "
                               f"with '{TARGET_SEPARATOR}' (no empty or space-padded symbols) or '{CONTROL}'")
    return parts


def label(targets_of_row) -> str:
    """The common label of some targets (any iterable): sorted and joined, `control` when there are none."""
    ordered = sorted(targets_of_row)
    return TARGET_SEPARATOR.join(ordered) if ordered else CONTROL


def settings_variable(component: str) -> str:
    """The environment variable that carries a component's own arguments into a benchmark run
    (component_io.settings_from_environment reads it; the engine keys its step cache on it)."""
    return f"PERTURBCAST_{component.upper()}_ARGS"


# Read by the GEARS component when --go_annotation is not given (the gene -> GO table, offline).
GO_ANNOTATION_VARIABLE = "PERTURBCAST_GO_ANNOTATION"
