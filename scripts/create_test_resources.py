#!/usr/bin/env python3
"""Make the tiny test data in resources_test/ from the simulator, through the real components.

    python scripts/create_test_resources.py [--force]

resources_test/loaders/                   small sources for perturbench_devel, scperturb, gears
resources_test/simulated_grn/
  common_dataset.h5ad                     simulated_grn with its small `info.test_arguments`
  dataset_cells.h5ad                      its cells (--output_cells)
  unseen_perturbation/{train,test,solution}.h5ad
  unseen_perturbation/{train,solution}_cells.h5ad
  unseen_perturbation/prediction.h5ad     train_mean
  unseen_perturbation/score.h5ad          delta_error
  prior_file.h5ad                         scripts/make_prior.py on the common dataset without fold 0's test
                                          perturbations (the example input of src/priors/prior_file)
  reference_dataset.h5ad                  simulated_grn with seed 1 and dataset_id simulated_grn_reference: another
                                          dataset (the example --input_reference of src/priors/other_dataset_pca)
Nothing is downloaded. Component tests (`perturbcast test`) read these files.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perturbcast.config import load_config  # noqa: E402
from perturbcast.runner import run_component  # noqa: E402

OUT = ROOT / "resources_test" / "simulated_grn"
SPLIT = OUT / "unseen_perturbation"


def step(component: str, args: list[str]):
    print(f"create_test_resources: {component}", file=sys.stderr, flush=True)
    result = run_component(ROOT / component, [str(a) for a in args])
    if result.exit_code != 0:
        sys.exit(f"[error] {component} failed with exit code {result.exit_code}")


def make_prior_file(force: bool):
    """prior_file.h5ad: a gene-embedding prior for the prior_file component's test. Not named prior.h5ad (the
    example of every method's optional --input_prior): that would change what every method's test runs."""
    if (OUT / "prior_file.h5ad").exists() and not force:
        return
    import subprocess
    print("create_test_resources: scripts/make_prior.py", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_prior.py"), "--input", str(OUT / "common_dataset.h5ad"),
                    "--exclude_test", str(SPLIT / "test.h5ad"), "--output", str(OUT / "prior_file.h5ad"),
                    "--n_components", "5"], check=True)


def make_reference_dataset(force: bool):
    """reference_dataset.h5ad: a second simulated screen (another seed, hence another network and other effects;
    its own dataset_id), the "other dataset" that src/priors/other_dataset_pca's test decomposes."""
    if (OUT / "reference_dataset.h5ad").exists() and not force:
        return
    loader = load_config(ROOT / "src/datasets/simulated_grn")
    small = [x for key, value in (loader.info.get("test_arguments") or {}).items() for x in (f"--{key}", value)]
    step("src/datasets/simulated_grn", ["--output", OUT / "reference_dataset.h5ad", *small, "--seed", 1,
                                        "--dataset_id", "simulated_grn_reference"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="remake files that already exist")
    args = parser.parse_args()
    loaders = ROOT / "resources_test" / "loaders"
    if not loaders.exists() or args.force:
        # small source files in the layouts the real loaders download (for their component tests)
        import subprocess
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pseudobulk.py"), "test-sources",
                        "--output", str(loaders)], check=True)
    if (SPLIT / "score.h5ad").exists() and (SPLIT / "solution_cells.h5ad").exists() and not args.force:
        make_prior_file(args.force)  # added later than the rest: made in a folder that is otherwise complete
        make_reference_dataset(args.force)
        print(f"create_test_resources: {OUT} is complete (use --force to remake)", file=sys.stderr)
        return 0
    SPLIT.mkdir(parents=True, exist_ok=True)
    loader = load_config(ROOT / "src/datasets/simulated_grn")
    small = [x for key, value in (loader.info.get("test_arguments") or {}).items() for x in (f"--{key}", value)]
    step("src/datasets/simulated_grn", ["--output", OUT / "common_dataset.h5ad", "--output_cells",
                                        OUT / "dataset_cells.h5ad", *small])
    step("src/tasks/unseen_perturbation", ["--input", OUT / "common_dataset.h5ad", "--seed", 0,
                                           "--input_cells", OUT / "dataset_cells.h5ad",
                                           "--output_train_cells", SPLIT / "train_cells.h5ad",
                                           "--output_solution_cells", SPLIT / "solution_cells.h5ad",
                                           "--output_train", SPLIT / "train.h5ad", "--output_test", SPLIT / "test.h5ad",
                                           "--output_solution", SPLIT / "solution.h5ad"])
    step("src/control_methods/train_mean", ["--input_train", SPLIT / "train.h5ad", "--input_test", SPLIT / "test.h5ad",
                                            "--input_solution", SPLIT / "solution.h5ad",
                                            "--output", SPLIT / "prediction.h5ad"])
    step("src/metrics/delta_error", ["--input_solution", SPLIT / "solution.h5ad",
                                     "--input_prediction", SPLIT / "prediction.h5ad", "--output", SPLIT / "score.h5ad"])
    if (SPLIT / "train_cells.h5ad").exists():
        # unseen_perturbation/prediction_cells.h5ad (train_mean's shifted control cells), read by the component
        # tests of cell metrics; made when the task wrote cells (the cells contract)
        step("src/control_methods/train_mean", ["--input_train", SPLIT / "train.h5ad", "--input_test", SPLIT / "test.h5ad",
                                                "--input_solution", SPLIT / "solution.h5ad",
                                                "--input_train_cells", SPLIT / "train_cells.h5ad",
                                                "--output", SPLIT / "prediction.h5ad",
                                                "--output_cells", SPLIT / "prediction_cells.h5ad"])
    make_prior_file(True)
    make_reference_dataset(True)
    print(f"create_test_resources: wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
