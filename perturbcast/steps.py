"""The plan's records: a `Step` to run, the `StepRecord` of what became of it, and the `Selection` a plan is for.

Plain data shared by the planner (perturbcast.engine), the executor (perturbcast.engine_run) and the
commands that print or serialise a plan; ids, folders and statuses come from perturbcast.layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import layout
from .config import ComponentConfig
from .layout import Status


@dataclass
class Step:
    id: str
    stage: str
    component: ComponentConfig
    directory: Path
    inputs: dict          # argument -> path (outputs of upstream steps)
    outputs: dict         # argument -> path
    arguments: dict       # other arguments (name -> value)
    depends: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)

    def argv(self) -> list[str]:
        argv = []
        for name, value in {**self.inputs, **self.outputs, **self.arguments}.items():
            argv += [f"--{name}", str(value)]
        return argv


@dataclass
class StepRecord:
    id: str
    stage: str
    component: str
    status: Status
    cache_key: str = ""
    exit_code: int | None = None
    wall_seconds: float = 0.0
    peak_rss_bytes: int = 0
    cached: bool = False
    reason: str = ""
    labels: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    output_digests: dict = field(default_factory=dict)  # name -> {size, sha256}: checked before reuse
    limits: dict = field(default_factory=dict)          # timeout_seconds, memory_bytes the step ran under
    blocked_by: dict = field(default_factory=dict)      # {step, status} of the upstream step that kept it from running

    def __post_init__(self):
        self.status = Status(self.status)  # a plain string from step.json or a caller becomes the enum


@dataclass
class Selection:
    datasets: list[str] | None = None
    tasks: list[str] | None = None
    methods: list[str] | None = None
    metrics: list[str] | None = None
    # prior components (src/priors) crossed with every method that reads what they write; None: no priors
    priors: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    n_folds: int = 5
    folds: list[int] | None = None   # None: every fold of each partition
    # a user's own datasets ({"id", "loader", "arguments"}, from --dataset-file or a spec's `file:` entries) and
    # argument overrides of known dataset ids (a spec's `{id, arguments}` entries)
    extra_datasets: list[dict] = field(default_factory=list)
    dataset_arguments: dict = field(default_factory=dict)

    def fold_list(self) -> list[int]:
        return list(range(self.n_folds)) if self.folds is None else list(self.folds)


def image_key(component: ComponentConfig) -> str:
    """What a component's image is built from (its config's engines): components with the same key run in one
    image, so main.nf can run them in one task."""
    import json

    return json.dumps(component.raw.get("engines") or [], sort_keys=True, default=str)


def score_units(steps) -> dict[str, list]:
    """The score steps of each prediction, by score unit id (layout.score_unit_id), in plan order: the unit of
    work both engines share (one engine worker job, one SCORE task of main.nf). The metrics of one unit share
    an image (image_key): a prediction whose metrics need two images (Python, R) has two units.

    Per prediction rather than per fold: a unit starts as soon as its prediction exists (a fold's slowest
    model does not hold the other methods' scores back), and a retry reruns one prediction's metrics."""
    units: dict[str, list] = {}
    environments: dict[tuple, str] = {}
    for step in steps:
        if step.stage != layout.SCORE or not step.depends:
            continue
        key = (step.depends[0], image_key(step.component))
        if key not in environments:
            environments[key] = layout.score_unit_id(step.depends[0], step.component.name)
        units.setdefault(environments[key], []).append(step)
    return units
