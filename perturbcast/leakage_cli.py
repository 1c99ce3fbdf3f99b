"""`perturbcast check-split`: the leakage checks of perturbcast.leakage on a split (or a partition) on disk."""
from __future__ import annotations

import argparse
import os
import sys

from .layout import ERROR_TAG, output_paths, SPLIT
from .leakage import check_partition, check_split


def split_paths(paths: list[str]) -> tuple[str, str, str]:
    """One split directory (holding train.h5ad, test.h5ad, solution.h5ad) or the three files in that order."""
    if len(paths) == 1:
        directory = paths[0]
        if not os.path.isdir(directory):
            raise ValueError(f"'{directory}' is not a directory; give a split directory or the train, test and "
                             f"solution files")
        files = output_paths(directory, SPLIT, ("output_train", "output_test", "output_solution"))
        return tuple(str(path) for path in files.values())
    if len(paths) == 3:
        return tuple(paths)
    raise ValueError(f"got {len(paths)} paths; give a split directory or the train, test and solution files")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perturbcast check-split",
        description="Check a task split for leakage of held-out conditions into training or test. Exit 0 when "
                    "clean, 1 when a problem is found, 2 on bad arguments.")
    parser.add_argument("paths", nargs="+", metavar="SPLIT_DIR_or_TRAIN_TEST_SOLUTION",
                        help="a split directory with train.h5ad, test.h5ad, solution.h5ad, or the three files")
    parser.add_argument("--task_id", help="task whose promises to check (default: train.uns['task_id'])")
    parser.add_argument("--common", help="the common dataset, to check that every control is in training (with "
                                         "--partition: that every eligible condition is tested)")
    parser.add_argument("--cells", help="the dataset cells the split's cells files were made from (a split "
                                        "directory's train_cells.h5ad / solution_cells.h5ad are checked when present)")
    parser.add_argument("--partition", action="store_true",
                        help="check a complete partition instead: PATHS are the test files (or split directories) "
                             "of all its folds; every eligible condition must be tested in exactly one fold")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if args.partition:
        problems = check_partition(args.paths, common_path=args.common)
        return _report(problems, f"check-split --partition: {len(problems)} problem(s) in {len(args.paths)} folds",
                       f"check-split --partition: {len(args.paths)} folds: every condition tested exactly once")
    try:
        train, test, solution = split_paths(args.paths)
    except ValueError as error:
        print(f"{ERROR_TAG} {error}", file=sys.stderr)
        return 2
    directory = os.path.dirname(os.path.abspath(train))
    cell_files = {role: str(output_paths(directory, SPLIT, (f"output_{role}",))[f"output_{role}"])
                  for role in ("train_cells", "solution_cells")}
    cell_files = {role: path if len(args.paths) == 1 and os.path.isfile(path) else None
                  for role, path in cell_files.items()}
    problems = check_split(train, test, solution, task_id=args.task_id, common_path=args.common,
                           train_cells_path=cell_files["train_cells"], solution_cells_path=cell_files["solution_cells"],
                           cells_path=args.cells)
    where = args.paths[0] if len(args.paths) == 1 else os.path.dirname(os.path.abspath(train)) or "."
    return _report(problems, f"check-split: {len(problems)} problem(s) in {where}",
                   f"check-split: {where}: no leakage found")


def _report(problems: list, failed: str, passed: str) -> int:
    """One `[leak]` line per problem on stdout, the verdict on stderr (failed, exit 1) or stdout (passed, 0)."""
    for problem in problems:
        print(f"[leak] {problem}")
    if problems:
        print(failed, file=sys.stderr)
        return 1
    print(passed)
    return 0
