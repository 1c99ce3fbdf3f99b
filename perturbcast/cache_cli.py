"""`perturbcast cache add | list`: put already downloaded source files where the loaders look, offline.

A loader fetches its source with `src/utils/download.py` into `$PERTURBCAST_CACHE/<host>/<url path>` and
reuses a file there that its checksum record (`<file>.checksum.json`) vouches for. `cache add` places a
file the user downloaded elsewhere at that path, checked against the pinned sha256 (PerturBench) or the
checksum the host publishes (Zenodo, Dataverse: asked over the network unless --offline; or given with
--checksum), and writes the record. A file that cannot be verified is placed and recorded as unverified:
the loader then tries to verify it again on each run and warns until it can.

Which URL belongs to which dataset is read from the loaders' own scripts (their module-level constants:
URL templates, pinned sha256, study tables), so a loader's source and this command cannot disagree.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import layout

UNVERIFIED = "unverified"


class CacheError(Exception):
    """A file that cannot be placed; str() is one line."""


@dataclass
class Source:
    dataset_ids: list
    url: str
    sha256: str | None = None       # pinned
    published: tuple | None = None  # ("zenodo", record, file name) or ("dataverse", file id)


@lru_cache(maxsize=4)
def _download_module(root: str):
    """The loaders' own src/utils/download.py (cache layout and checksum records live there only)."""
    spec = importlib.util.spec_from_file_location("perturbcast_loader_download", Path(root) / "src/utils/download.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _constants(script: Path) -> dict:
    """Module-level `NAME = <literal>` assignments of a loader script."""
    values = {}
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return values


def _published_of(url: str) -> tuple | None:
    zenodo = re.match(r"^https://zenodo\.org/records?/(\d+)/files/([^/?]+)", url)
    if zenodo:
        return ("zenodo", int(zenodo.group(1)), zenodo.group(2))
    dataverse = re.match(r"^https://dataverse\.harvard\.edu/api/access/datafile/(\d+)", url)
    if dataverse:
        return ("dataverse", int(dataverse.group(1)))
    return None


def _source_of(loader: str, constants: dict, arguments: dict) -> tuple[str, str | None] | None:
    """(url, pinned sha256) the loader fetches for these arguments; None for loaders that download nothing."""
    if "URL" not in constants:
        return None
    template = constants["URL"]
    if "{study}" in template:
        study = str(arguments.get("study", "")).removesuffix(".h5ad")
        return template.format(record=constants.get("RECORD"), study=study), constants.get("SHA256")
    if "{file_id}" in template:
        entry = (constants.get("DATASETS") or {}).get(arguments.get("dataset"))
        return (template.format(file_id=entry["file_id"]), None) if entry else None
    return template, constants.get("SHA256")


def known_sources(root: Path) -> dict:
    """url -> Source for every dataset of every loader that downloads."""
    from .config import discover_components
    from .engine import dataset_instances

    sources: dict = {}
    for loader in discover_components(root):
        if loader.component_type != "dataset_loader":
            continue
        constants = _constants(loader.resolve_resource(loader.main_script))
        for instance in dataset_instances(loader):
            found = _source_of(loader.name, constants, instance["arguments"])
            if found is None:
                continue
            url, sha256 = found
            source = sources.setdefault(url, Source([], url, sha256, _published_of(url)))
            source.dataset_ids.append(instance["id"])
    return sources


def _dataset_source(root: Path, dataset_id: str) -> Source:
    from .config import discover_components
    from .engine import dataset_instances

    for url, source in known_sources(root).items():
        if dataset_id in source.dataset_ids:
            return source
    loaders = {i["id"]: c.name for c in discover_components(root) if c.component_type == "dataset_loader"
               for i in dataset_instances(c)}
    if dataset_id in loaders:
        raise CacheError(f"--dataset {dataset_id}: its loader {loaders[dataset_id]} downloads nothing (simulated or "
                         "your own file); nothing to cache")
    raise CacheError(f"--dataset {dataset_id}: not a dataset of any loader; known: {', '.join(sorted(loaders))}")


def _expected(download, source: Source, checksum: str | None, offline: bool):
    """The checksum to verify against: --checksum, else pinned, else published (None when unknowable)."""
    if checksum:
        algorithm, _, value = checksum.partition(":")
        digits = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}.get(algorithm.lower())
        if digits is None or not re.fullmatch(f"[0-9a-fA-F]{{{digits}}}", value.strip()):
            raise CacheError(f"--checksum '{checksum}': expected ALGORITHM:HEX with md5 (32 hex digits), sha1 (40), "
                             "sha256 (64) or sha512 (128)")
        return download.Checksum(algorithm.lower(), value.strip().lower(), "--checksum")
    if source.sha256:
        return download.Checksum("sha256", source.sha256, "pinned sha256")
    if offline or not source.published:
        return None
    lookup = (download.zenodo_checksum(*source.published[1:], timeout=15) if source.published[0] == "zenodo"
              else download.dataverse_checksum(source.published[1], timeout=15))
    try:
        published = lookup()
    except Exception as error:  # offline or the host's API is down: place the file unverified
        detail = str(getattr(error, "reason", "") or error).splitlines()[0] if str(error) else type(error).__name__
        print(f"[warning] could not read the checksum the host publishes for {source.url} ({detail}); "
              "the file is placed unverified", file=sys.stderr)
        return None
    if published is None:
        print(f"[warning] the host publishes no checksum for {source.url}; the file is placed unverified", file=sys.stderr)
    return published


def add(root: Path, file: str, *, dataset: str | None = None, url: str | None = None, checksum: str | None = None,
        offline: bool = False, move: bool = False, force: bool = False) -> str:
    """Place `file` in the cache; returns the one-line summary. Raises CacheError."""
    download = _download_module(str(root))
    source_file = Path(file).expanduser()
    problem = layout.not_a_file(source_file)
    if problem:
        raise CacheError(f"file '{file}': {problem}")
    if (dataset is None) == (url is None):
        raise CacheError("give exactly one of --dataset ID or --url URL")
    if dataset is not None:
        source = _dataset_source(root, dataset)
    else:
        known = known_sources(root).get(url)
        source = known or Source([], url, None, _published_of(url))
    try:
        target = download.cache_path(source.url)
    except download.DownloadError as error:
        raise CacheError(f"--url: {error}") from None
    expected = _expected(download, source, checksum, offline)
    digests = download.file_digests(str(source_file), ["sha256"] + ([expected.algorithm] if expected else []))
    if expected is not None and digests[expected.algorithm] != expected.value:
        raise CacheError(f"file '{file}' has {expected.algorithm} {digests[expected.algorithm]}, but the {expected.source} "
                         f"for {source.url} is {expected.value}: another version or a damaged download; not placed")
    sha256 = digests["sha256"]
    if os.path.exists(target):
        existing = download.sha256_file(target)
        if existing != sha256 and not force:
            raise CacheError(f"{target} already holds another file (sha256 {existing}); --force moves it aside "
                             "and places this one")
        if existing != sha256:  # never delete a cached file: it may be the only copy
            aside = f"{target}.replaced-{existing[:12]}"
            os.replace(target, aside)
            print(f"moved the earlier cached file to {aside}", file=sys.stderr)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if not os.path.exists(target):
        partial = f"{target}.adding{os.getpid()}"
        try:
            if move:
                shutil.move(str(source_file), partial)
            else:
                shutil.copyfile(source_file, partial)
            os.replace(partial, target)
        except OSError as error:
            if os.path.exists(partial):
                os.remove(partial)
            raise CacheError(f"cannot write {target}: {error.strerror or error}; free some space or set "
                             f"{download.CACHE_ENV} to a writable folder") from None
    verified = (f"{expected.algorithm} {expected.value} ({expected.source})" if expected
                else f"{UNVERIFIED}: no checksum pinned or published could be read (perturbcast cache add"
                     f"{' --offline' if offline else ''})")
    download.write_record(target, url=source.url, sha256=sha256, verified_against=verified)
    who = ", ".join(source.dataset_ids) or "no known dataset"
    state = f"verified against the {expected.source}" if expected else "UNVERIFIED (the loader re-checks it when online)"
    return f"cached {target} for {who}: sha256 {sha256}, {state}"


def entries(root: Path, check: bool = False) -> list[dict]:
    """Every file in the cache: path, size, datasets, status (verified / unverified / no record / changed)."""
    download = _download_module(str(root))
    cache = download.cache_root()
    by_url = known_sources(root)
    rows = []
    if not os.path.isdir(cache):
        return rows
    skip_suffixes = (download.RECORD_SUFFIX, ".part", ".part.json", ".tmp")
    for directory, folders, files in os.walk(cache):
        folders[:] = sorted(f for f in folders if not f.startswith(".") and not (directory == cache and f == "extracted"))
        for name in sorted(files):
            path = os.path.join(directory, name)
            if name.endswith(skip_suffixes) or ".replaced-" in name or ".adding" in name or name.startswith("."):
                continue
            record = download.read_record(path)
            size = os.path.getsize(path)
            url = (record or {}).get("url")
            if url is None:  # a file placed by hand: find its URL from the layout
                url = next((u for u in by_url if download.cache_path(u) == path), None)
            changed = None
            if record is not None and (check or not download.unchanged_since_recorded(path, record)):
                # what the file is now: a size or mtime other than recorded means hashing it again
                actual = download.sha256_file(path)
                changed = actual if actual != record["sha256"] else None
            if record is None:
                status = "no record (placed by hand; verified on first use)"
            elif changed:
                status = (f"CHANGED since recorded (sha256 {changed}, recorded {record['sha256']}): not used; put a good "
                          f"copy in place with {download.fix_command(url or record.get('url') or 'URL')}")
            elif str(record.get("verified_against", "")).startswith(UNVERIFIED):
                status = "unverified"
            else:
                against = str(record.get("verified_against"))
                status = "verified (" + (against[against.rfind("(") + 1:-1] if against.endswith(")") else against) + ")"
            source = by_url.get(url)
            rows.append({"path": os.path.relpath(path, cache), "size": size, "url": url,
                         "datasets": source.dataset_ids if source else [], "status": status})
    return rows


def add_commands(commands):
    cache = commands.add_parser(
        "cache", help="place already downloaded source files where the loaders look (offline use)",
        description="Manage the download cache ($PERTURBCAST_CACHE, default ~/.cache/perturbcast) that the dataset "
                    "loaders read. `cache add FILE --dataset ID` puts a file you downloaded elsewhere where the "
                    "dataset's loader looks, verified against the pinned or published checksum; `cache list` shows "
                    "what is cached.")
    sub = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    add_parser = sub.add_parser("add", help="place a downloaded file in the cache",
                                description="Place FILE where the loader of --dataset (or the download of --url) "
                                            "looks for it, verified against the pinned sha256 or the checksum the "
                                            "host publishes (Zenodo, Dataverse; asked over the network unless "
                                            "--offline). An unverifiable file is placed and marked unverified.")
    add_parser.add_argument("file", help="the downloaded file")
    which = add_parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--dataset", metavar="ID", help="dataset id whose source this file is (see `perturbcast list`)")
    which.add_argument("--url", help="the URL this file was downloaded from (any loader source)")
    add_parser.add_argument("--checksum", metavar="ALG:HEX",
                            help="verify against this checksum (e.g. md5:... from the Zenodo page) instead of asking the host")
    add_parser.add_argument("--offline", action="store_true",
                            help="do not ask the host for its checksum (the file is marked unverified unless pinned)")
    add_parser.add_argument("--move", action="store_true", help="move the file instead of copying it")
    add_parser.add_argument("--force", action="store_true",
                            help="replace another file at the same place (it is moved aside, never deleted)")
    add_parser.set_defaults(handler=_add)
    list_parser = sub.add_parser("list", help="show the cached files, their datasets and whether they are verified",
                                 description="List every file in the cache with its size, the datasets it serves "
                                             "and its verification status.")
    list_parser.add_argument("--check", action="store_true", help="re-hash every file against its record (slow for large files)")
    list_parser.set_defaults(handler=_list)
    for parser in (add_parser, list_parser):
        parser.add_argument("--project", default=".", help="project root (holding _viash.yaml); default: current directory")


def _root(args) -> Path:
    from .config import NO_PROJECT, ConfigError, project_root

    root = project_root(args.project)
    if root is None:
        raise ConfigError(NO_PROJECT.format(args.project))
    return root


def _add(args) -> int:
    try:
        print(add(_root(args), args.file, dataset=args.dataset, url=args.url, checksum=args.checksum,
                  offline=args.offline, move=args.move, force=args.force))
    except CacheError as error:
        print(f"[error] {error}", file=sys.stderr)
        return 1
    return 0


def _list(args) -> int:
    root = _root(args)
    rows = entries(root, check=args.check)
    print(f"cache: {_download_module(str(root)).cache_root()}")
    if not rows:
        print("  (empty)")
    for row in rows:
        datasets = ", ".join(row["datasets"]) or "-"
        print(f"  {row['path']}  {row['size'] / 1e6:.1f} MB  datasets: {datasets}  {row['status']}")
    return 0
