"""Source files in the perturbcast cache: download with resume and retry, verify, write atomically, never lose data.

Included as a viash resource by every loader that downloads (standard library only):

    from download import DownloadError, fetch, zenodo_checksum
    path, sha256 = fetch(url, sha256=PINNED_OR_NONE, published=zenodo_checksum(13350497, "X.h5ad"), log=log)

Mirror: with `$PERTURBCAST_MIRROR` set (an http(s) prefix), files are requested from `<mirror>/<host>/<url path>`
(the cache's layout) instead of their host, and verified and cached as if they came from it (`source_url`).

Layout: a URL is cached at `$PERTURBCAST_CACHE/<host>/<url path>` (default cache `~/.cache/perturbcast`),
e.g. `zenodo.org/records/13350497/files/DatlingerBock2017.h5ad`. Beside every cached file lies a record
`<file>.checksum.json` (url, sha256, size, what the file was verified against).

Reuse of a cached file (the cache never deletes a complete file it finds):
- its sha256 equals the pinned sha256, or else the sha256 of a record that says it was verified: used;
- no record (copied in by hand, as for offline use), a record that does not match, or a record marked
  unverified: checked against the pinned sha256, else the checksum the host publishes. A match is recorded
  and used. A mismatch means the file is another version: a replacement is downloaded, and only once it is
  complete and verified is the old file moved aside to `<file>.replaced-<first 12 hex of its sha256>` (kept,
  never deleted; the log says where). When no checksum is pinned and the host's cannot be read (offline,
  or the host publishes none), the file is kept and used, with a `[warning]`, and recorded as
  `unverified`; later runs try to verify it again and warn again until they can.

A download (into `<file>.part`, never visible under the file's name before it is complete):
- a broken connection is retried with exponential backoff and resumed with an HTTP Range request. A
  resume sends `If-Range` with the ETag (else Last-Modified) of the response that started the `.part`
  (kept in `<file>.part.json`), so a host that now serves another version sends the whole new file
  instead of its tail. A `.part` with no known validator is resumed only when a checksum will verify the
  result; otherwise it is downloaded again from the start. A host that cannot be reached fails after
  `retries` attempts without progress.
- it is complete only when the host announced its length (Content-Length / Content-Range) and all of it
  arrived, or when a pinned or published checksum matches. A stream of unknown length with no checksum
  is refused (a cut connection would look complete). An HTML page where a data file was expected (an
  error or login page served with HTTP 200) is refused.
- the finished `.part` is checked against the pinned sha256, else against the published checksum (Zenodo's
  record API, Dataverse's file API: md5), else its sha256 is recorded. On a mismatch the `.part` (which this
  run wrote) is deleted and nothing is cached.
Concurrent processes fetching the same file wait for each other (a lock in `<cache>/.locks`, named after the
fully resolved path, so a symlinked cache folder shares the lock). Every OS error (disk full, read-only or
missing folder) becomes a one-line DownloadError naming the path; no temporary file is left behind.

`archives.extract_member` unpacks one file of a downloaded archive into the cache the same way.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass

CACHE_ENV = "PERTURBCAST_CACHE"
MIRROR_ENV = "PERTURBCAST_MIRROR"
RECORD_SUFFIX = ".checksum.json"
PART_SUFFIX = ".part"
USER_AGENT = "perturbcast-loader/1 (+https://github.com/openproblems-bio/task_expression_forecasting)"
BLOCK_SIZE = 1 << 20
# HTTP statuses worth retrying: the host is busy or briefly broken. Every other error status is final.
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
PROGRESS_EVERY_SECONDS = 30.0

ZENODO_API = "https://zenodo.org/api/records"
DATAVERSE_API = "https://dataverse.harvard.edu/api/files"


class DownloadError(Exception):
    """A source could not be fetched or verified; the message says which and why, in one line."""


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # a hashlib name: md5, sha1, sha256, ...
    value: str      # lower-case hex digest
    source: str     # where the value comes from, for messages and the record


def _stderr(message: str):
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ cache layout

def cache_root() -> str:
    """`$PERTURBCAST_CACHE`, else `~/.cache/perturbcast`."""
    return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "perturbcast")))


def source_url(url: str) -> str:
    """Where `url` is requested from: `$PERTURBCAST_MIRROR/<host>/<path>` when that is set (the cache's own
    layout, so a copy of a cache served over http(s), or a bucket's https endpoint, is a mirror), else `url`.
    What arrives is verified exactly as a download from `url` is (pinned sha256, else the host's checksum) and
    cached under `url`'s name."""
    mirror = os.environ.get(MIRROR_ENV, "").strip().rstrip("/")
    if not mirror:
        return url
    relative = os.path.relpath(cache_path(url, root=os.sep), os.sep).replace(os.sep, "/")
    return f"{mirror}/{urllib.parse.quote(relative)}"


def _safe_part(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._+=@-]", "_", text)
    return "_" if text in ("", ".", "..") else text


def cache_path(url: str, root: str | None = None) -> str:
    """Where `url` is cached: `<root>/<host>/<path segments>` (a query string is folded into the name)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise DownloadError(f"'{url}' is not an http(s) URL")
    parts = [_safe_part(parsed.netloc)]
    parts += [_safe_part(urllib.parse.unquote(p)) for p in parsed.path.split("/") if p]
    if len(parts) == 1:
        parts.append("index")
    if parsed.query:
        parts[-1] += "_" + _safe_part(parsed.query)
    return os.path.join(root or cache_root(), *parts)


def record_path(path: str) -> str:
    return path + RECORD_SUFFIX


def read_record(path: str) -> dict | None:
    """The checksum record of a cached file, or None if there is none (or it is unreadable)."""
    try:
        with open(record_path(path)) as handle:
            record = json.load(handle)
        return record if isinstance(record, dict) and isinstance(record.get("sha256"), str) else None
    except (OSError, ValueError):
        return None


def write_record(path: str, *, sha256: str, url: str | None = None, size: int | None = None,
                 verified_against: str = "recorded on first download", mtime_ns: int | None = None, **extra) -> str:
    """Write `<path>.checksum.json` atomically. Loaders never need this; tests use it to place files in the cache.
    Size and mtime are recorded so that a later use can tell, without hashing, that the file is unchanged."""
    record = {"url": url, "sha256": sha256.lower(), "size": size if size is not None else _size(path),
              "mtime_ns": mtime_ns if mtime_ns is not None else _mtime_ns(path),
              "verified_against": verified_against,
              "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    target = record_path(path)
    _write_json_atomic(target, record)
    return target


def _write_json_atomic(target: str, data: dict):
    tmp = f"{target}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=2)
        os.replace(tmp, target)
    except BaseException:  # a full disk must not leave the temporary file behind
        _remove(tmp)
        raise


def _mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def unchanged_since_recorded(path: str, record: dict | None) -> bool:
    """The fast check: size and mtime as the record has them (a file that was rewritten has another mtime)."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return (record is not None and record.get("size") == stat.st_size and record.get("mtime_ns") is not None
            and record.get("mtime_ns") == stat.st_mtime_ns)


def fix_command(url: str) -> str:
    """How a user puts a good copy of `url` back into the cache (the changed one is moved aside, not deleted)."""
    return f"`perturbcast cache add GOOD_COPY --url {url} --force`"


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def file_digests(path: str, algorithms=("sha256",)) -> dict:
    """Hex digests of a file for each hashlib algorithm, in one streaming pass."""
    hashers = {name: hashlib.new(name) for name in dict.fromkeys(algorithms)}
    with open(path, "rb") as handle:
        while True:
            block = handle.read(BLOCK_SIZE * 8)
            if not block:
                break
            for hasher in hashers.values():
                hasher.update(block)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def sha256_file(path: str) -> str:
    return file_digests(path, ("sha256",))["sha256"]


@contextmanager
def _lock(path: str, log):
    """An exclusive lock on `path` for this process (waits for another process fetching the same file)."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): proceed without
        yield
        return
    # Resolved paths: the same file reached through a symlinked cache folder must share the lock.
    root, resolved = os.path.realpath(cache_root()), os.path.realpath(path)
    inside = resolved.startswith(root + os.sep)
    lock_dir = os.path.join(root if inside else os.path.dirname(resolved), ".locks")
    os.makedirs(lock_dir, exist_ok=True)
    name = hashlib.sha1(resolved.encode()).hexdigest()[:16] + ".lock"
    with open(os.path.join(lock_dir, name), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log(f"waiting for another process that is fetching {path}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -------------------------------------------------------------------------------- published checksums

def _get_json(url: str, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def _split_checksum(text: str, default_algorithm: str = "md5") -> tuple[str, str]:
    algorithm, _, value = text.partition(":") if ":" in text else (default_algorithm, "", text)
    return algorithm.strip().lower().replace("-", ""), value.strip().lower()


def zenodo_checksum(record_id, filename: str, api: str = ZENODO_API, timeout: float = 30.0):
    """A lookup of the checksum Zenodo publishes for `filename` of record `record_id` (`checksum: md5:...`)."""
    def lookup() -> Checksum | None:
        record = _get_json(f"{api.rstrip('/')}/{record_id}", timeout)
        files = record.get("files") or []
        if isinstance(files, dict):  # newer API shape: {"entries": {name: {...}}} or {"entries": [...]}
            files = files.get("entries") or []
            files = list(files.values()) if isinstance(files, dict) else files
        for entry in files:
            if entry.get("key") == filename or entry.get("filename") == filename:
                if entry.get("checksum"):
                    algorithm, value = _split_checksum(str(entry["checksum"]))
                    return Checksum(algorithm, value, f"Zenodo record {record_id}")
        return None
    return lookup


def dataverse_checksum(file_id, api: str = DATAVERSE_API, timeout: float = 30.0):
    """A lookup of the checksum Harvard Dataverse publishes for datafile `file_id` (md5)."""
    def lookup() -> Checksum | None:
        data = (_get_json(f"{api.rstrip('/')}/{file_id}", timeout).get("data") or {})
        datafile = data.get("dataFile") or data
        checksum = datafile.get("checksum") or {}
        if isinstance(checksum, dict) and checksum.get("value"):
            algorithm = str(checksum.get("type") or "md5").lower().replace("-", "")
            return Checksum(algorithm, str(checksum["value"]).lower(), f"Dataverse file {file_id}")
        if datafile.get("md5"):
            return Checksum("md5", str(datafile["md5"]).lower(), f"Dataverse file {file_id}")
        return None
    return lookup


# ------------------------------------------------------------------------------------------ fetching

UNVERIFIED = "unverified"
VALIDATOR_SUFFIX = ".part.json"


def fetch(url: str, *, sha256: str | None = None, published=None, path: str | None = None, retries: int = 4,
          delay: float = 2.0, backoff: float = 2.0, timeout: float = 60.0, log=_stderr, sleep=time.sleep):
    """Return `(path, sha256)` of the local copy of `url`, downloading it if needed (see the module docstring).

    sha256: pinned checksum (wins over everything). published: a callable returning the host's `Checksum`
    (see `zenodo_checksum`, `dataverse_checksum`), called only when a file must be verified. retries: attempts
    without progress after the first one; delay * backoff**k seconds between them. Raises DownloadError.
    """
    path = os.path.abspath(path or cache_path(url))
    pinned = sha256.lower() if sha256 else None
    looked_up: list = []

    def expected() -> Checksum | None:  # the pinned sha256, else the published checksum (asked at most once)
        if not looked_up:
            looked_up.append(Checksum("sha256", pinned, "pinned sha256") if pinned else _published(published, url, log))
        return looked_up[0]

    options = dict(retries=retries, delay=delay, backoff=backoff, timeout=timeout, log=log, sleep=sleep)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _lock(path, log):
            refused = []
            if os.path.exists(path):
                cached = _reuse(path, url, pinned, expected, log, refused)
                if cached:
                    return path, cached
            try:
                return _download_verified(url, path, expected(), options, log)
            except DownloadError as error:
                if not refused:
                    raise
                # the reason the cached file was not used comes first: it is what the user can fix offline
                raise DownloadError(f"cached file {path} {refused[0]}, and no replacement could be downloaded "
                                    f"({error}); put a good copy in place with {fix_command(url)}") from None
    except OSError as error:
        raise DownloadError(_os_error_line(error, path, url)) from None


def _os_error_line(error: OSError, path: str, url: str) -> str:
    where = error.filename or path
    return (f"cannot write {url} into the cache: {error.strerror or error} ('{where}'); free some space or set "
            f"{CACHE_ENV} to a writable folder")


def _describe(checksum: Checksum) -> str:
    return f"{checksum.algorithm} {checksum.value} ({checksum.source})"


def _aside(path: str, sha256: str) -> str:
    return f"{path}.replaced-{sha256[:12]}"


def _reuse(path: str, url: str, pinned: str | None, expected, log, refused: list | None = None) -> str | None:
    """The sha256 of the cached file when it is to be used; None when a replacement must be downloaded (the
    reason is appended to `refused`). A file whose size and mtime are as its verified record has them is
    used without hashing; any other is hashed in full. A file that changed since it was recorded and that
    no checksum can verify is refused (DownloadError naming the file and the command that fixes it).

    Never removes the file: a file that is another version stays until its replacement is complete."""
    refused = [] if refused is None else refused
    record = read_record(path)
    trusted = record is not None and (record.get("verified_against") == "pinned sha256" if pinned
                                      else not str(record.get("verified_against", "")).startswith(UNVERIFIED))
    if trusted and (not pinned or record["sha256"] == pinned) and unchanged_since_recorded(path, record):
        log(f"using cached {path} (sha256 {record['sha256']} verified before; size and mtime unchanged since)")
        return record["sha256"]
    actual = sha256_file(path)
    if pinned and actual == pinned:
        if record is None or record.get("sha256") != actual or record.get("verified_against") != "pinned sha256":
            write_record(path, url=url, sha256=actual, verified_against="pinned sha256")
        log(f"using cached {path} (sha256 {actual} verified against the pinned checksum)")
        return actual
    recorded = record is not None and record["sha256"] == actual
    if not pinned and recorded and not str(record.get("verified_against", "")).startswith(UNVERIFIED):
        log(f"using cached {path} (sha256 {actual} verified against the recorded checksum)")
        return actual
    if record is None:
        why = "has no checksum record (placed in the cache by hand?)"
    elif not recorded:
        why = f"has sha256 {actual}, not the {record['sha256']} of its record"
    else:
        why = "was recorded as unverified"
    checksum = expected()
    if checksum is not None:
        if file_digests(path, [checksum.algorithm])[checksum.algorithm] == checksum.value:
            write_record(path, url=url, sha256=actual, verified_against=_describe(checksum))
            log(f"using cached {path}: it {why}, and matches the {checksum.source} {checksum.algorithm}")
            return actual
        log(f"[warning] cached file {path} {why} and does not match the {checksum.source} {checksum.algorithm}; "
            f"downloading a replacement (the cached file stays until it is complete, then moves to "
            f"{_aside(path, actual)})")
        refused.append(f"{why} and does not match the {checksum.source} {checksum.algorithm} {checksum.value}")
        return None
    if record is not None and not recorded:  # changed since recorded, and nothing can say which copy is right
        raise DownloadError(f"cached file {path} changed since it was recorded (sha256 {actual}, recorded "
                            f"{record['sha256']}) and no checksum is pinned or published to verify it: put a good "
                            f"copy in place with {fix_command(url)}, or move the file away to download it again")
    write_record(path, url=url, sha256=actual, verified_against=f"{UNVERIFIED}: no checksum pinned or published")
    log(f"[warning] using cached {path} UNVERIFIED: it {why}, and no checksum is pinned or could be read from the "
        f"host for {url}; its sha256 {actual} is recorded as unverified (delete the file to download it again)")
    return actual


def _download_verified(url: str, path: str, expected: Checksum | None, options: dict, log) -> tuple[str, str]:
    part = path + PART_SUFFIX
    validator = _read_validator(path, url)
    if _size(part) and not validator and expected is None:
        log(f"a partial download {part} from an earlier run cannot be matched to the host's current version "
            "(no ETag or Last-Modified was kept, no checksum is known); downloading it again from the start")
        _remove(part)
    resumed = (_size(part) or 0) > 0
    state = _download(url, part, path, **options)
    digests = _check(part, url, expected, state, restartable=resumed, log=log)
    if digests is None:  # a .part left by an earlier run did not belong to this file: start over once
        _clear_part(path)
        state = _download(url, part, path, **options)
        digests = _check(part, url, expected, state, restartable=False, log=log)
    if os.path.exists(path):  # another version, found by _reuse: kept, moved aside now its replacement is whole
        aside = _aside(path, sha256_file(path))
        os.replace(path, aside)
        log(f"[warning] the earlier cached file was moved to {aside} (not deleted)")
    write_record(path, url=url, sha256=digests["sha256"], size=_size(part), mtime_ns=_mtime_ns(part),
                 verified_against=_describe(expected) if expected else "recorded on first download")
    os.replace(part, path)
    _remove(path + VALIDATOR_SUFFIX)
    log(f"downloaded {url} -> {path} ({_size(path)} bytes, sha256 {digests['sha256']}; "
        f"{'verified against ' + expected.source if expected else 'sha256 recorded for later runs'})")
    return path, digests["sha256"]


def _published(published, url: str, log) -> Checksum | None:
    if published is None:
        return None
    try:
        checksum = published()
    except Exception as error:  # a metadata API that is down must not stop a download that works
        log(f"[warning] could not read the published checksum for {url} ({_reason(error)})")
        return None
    if checksum is None:
        log(f"[warning] the host publishes no checksum for {url}")
    elif checksum.algorithm not in hashlib.algorithms_available:
        log(f"[warning] unknown checksum type '{checksum.algorithm}' published for {url}; it cannot be checked")
        return None
    return checksum


def _looks_like_html(path: str) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def _check(part: str, url: str, expected: Checksum | None, state: dict, *, restartable: bool, log) -> dict | None:
    """Digests of a finished `.part` that may become the cached file; None when it must be fetched again."""
    algorithms = ["sha256"] + ([expected.algorithm] if expected else [])
    digests = file_digests(part, algorithms)
    if expected is not None and digests[expected.algorithm] == expected.value:
        return digests
    if not urllib.parse.urlsplit(url).path.lower().endswith((".html", ".htm")) and _looks_like_html(part):
        _clear_part(part[:-len(PART_SUFFIX)])
        raise DownloadError(f"{url} answered with an HTML page instead of the file (an error or login page served "
                            f"with HTTP {state.get('status')}?); nothing was cached")
    if expected is None:
        if state.get("length_known"):
            return digests
        _clear_part(part[:-len(PART_SUFFIX)])
        raise DownloadError(f"cannot tell whether the download of {url} is complete: the host sent no "
                            "Content-Length and no checksum is pinned or published; nothing was cached")
    _clear_part(part[:-len(PART_SUFFIX)])
    if restartable:
        log(f"the download of {url}, resumed from an earlier run, does not match the {expected.source} "
            f"{expected.algorithm}; downloading it again from the start")
        return None
    raise DownloadError(
        f"checksum mismatch for {url}: the {expected.source} {expected.algorithm} is {expected.value} but the "
        f"downloaded file has {digests[expected.algorithm]}; the partial file was removed and nothing was cached")


def _remove(path: str):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _clear_part(path: str):
    """Remove the `.part` this run downloaded for `path`, and its validator."""
    _remove(path + PART_SUFFIX)
    _remove(path + VALIDATOR_SUFFIX)


def _read_validator(path: str, url: str) -> dict:
    try:
        with open(path + VALIDATOR_SUFFIX) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("url") != url:
        return {}
    return {key: data[key] for key in ("etag", "last_modified") if isinstance(data.get(key), str)}


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


class _Retry(Exception):
    """An attempt ended early but a new attempt may succeed."""


class _LocalError(Exception):
    """Writing the `.part` failed (disk full, read-only): final, unlike network errors."""

    def __init__(self, error: OSError, path: str):
        super().__init__(str(error))
        error.filename = error.filename or path  # a failed write() names no file: say which
        self.error = error


def _download(url: str, part: str, path: str, *, retries: int, delay: float, backoff: float, timeout: float,
              log, sleep) -> dict:
    """Fill `part` with the whole file; return what is known about it (`length_known`, `status`)."""
    failures = 0
    state: dict = {}
    while True:
        offset = _size(part) or 0
        try:
            if _attempt(url, part, path, offset, timeout, state, log):
                return state
            reason = "the connection closed before the end of the file"
        except _LocalError as error:
            raise error.error from None
        except urllib.error.HTTPError as error:
            if error.code not in RETRY_STATUSES:
                raise DownloadError(f"cannot download {url}: the server answered HTTP {error.code} {error.reason}") from None
            reason = f"HTTP {error.code} {error.reason}"
        except urllib.error.URLError as error:
            if isinstance(error.reason, socket.gaierror):
                raise DownloadError(f"cannot download {url}: the host name does not resolve ({error.reason}); "
                                    "is there a network connection?") from None
            reason = _reason(error)
        except (_Retry, OSError, http.client.HTTPException) as error:
            reason = _reason(error)
        progressed = (_size(part) or 0) > offset
        failures = 0 if progressed else failures + 1
        if failures > retries:
            raise DownloadError(f"cannot download {url}: {reason} (gave up after {failures} attempts in a row "
                                "without progress)")
        wait = delay * backoff ** max(0, failures - 1)
        log(f"download of {url} interrupted ({reason}); retrying in {wait:g} s from byte {_size(part) or 0}")
        sleep(wait)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a `Content-Range: bytes a-b/total` header."""
    match = re.match(r"\s*bytes\s+(\d+|\*)(?:-(\d+))?/(\d+|\*)", value or "")
    if not match:
        return None, None
    start = None if match.group(1) == "*" else int(match.group(1))
    total = None if match.group(3) == "*" else int(match.group(3))
    return start, total


def _attempt(url: str, part: str, path: str, offset: int, timeout: float, state: dict, log) -> bool:
    """One request; True when the `.part` now holds the whole file (as far as the host says)."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = _read_validator(path, url)
        if validator:  # the host sends the whole file instead of the tail if it changed since the .part began
            headers["If-Range"] = validator.get("etag") or validator["last_modified"]
    try:
        response = urllib.request.urlopen(urllib.request.Request(source_url(url), headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to send: complete, or the .part is not this file
            _, total = _content_range(error.headers.get("Content-Range"))
            if total == offset:
                state.update(length_known=True, status=416)
                return True
            _clear_part(path)
            raise _Retry("the server refused to resume the partial file; starting over") from None
        raise
    with response:
        state["status"] = response.status
        if offset and response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                _clear_part(path)
                raise _Retry(f"the server resumed at byte {start} instead of {offset}; starting over")
            mode = "ab"
        else:
            if offset:
                log(f"the server of {url} does not resume this download (or the file changed); starting over")
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            validator = {"url": url, "etag": response.headers.get("ETag"),
                         "last_modified": response.headers.get("Last-Modified")}
            try:
                _write_json_atomic(path + VALIDATOR_SUFFIX, validator)
            except OSError as error:
                raise _LocalError(error, path + VALIDATOR_SUFFIX) from None
        if offset == 0:
            log(f"downloading {url}" + (f" ({total / 1e6:.1f} MB)" if total else ""))
        last_report = time.monotonic()
        try:
            out = open(part, mode)
        except OSError as error:
            raise _LocalError(error, part) from None
        with out:
            while True:
                block = response.read(BLOCK_SIZE)
                if not block:
                    break
                try:
                    out.write(block)
                    out.flush()
                except OSError as error:
                    raise _LocalError(error, part) from None
                if time.monotonic() - last_report > PROGRESS_EVERY_SECONDS:
                    last_report = time.monotonic()
                    log(f"  {out.tell() / 1e6:.0f} MB" + (f" of {total / 1e6:.0f} MB" if total else ""))
    size = _size(part) or 0
    state["length_known"] = total is not None
    if total is None:
        return True  # a clean end of a stream of unknown length: only a checksum can tell (see _check)
    if size > total:
        _clear_part(path)
        raise _Retry(f"received {size} bytes but the file has {total}; starting over")
    return size == total
