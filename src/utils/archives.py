"""One file out of a downloaded archive (zip, tar, tar.gz) into the perturbcast cache, kept like a download.

Included as a viash resource beside `download.py` by loaders whose sources are archives:

    from archives import archive_kind, extract_member
    path, sha256 = extract_member(archive, archive_sha256, "perturb_processed.h5ad", destination, log=log)

The extracted file gets a record naming the archive's sha256 and is reused while both still match. An
extracted file that differs from the archive's entry (placed by hand, another version) is moved aside to
`<file>.replaced-<sha256 prefix>` once the new one is complete, never deleted.
"""
from __future__ import annotations

import os
import tarfile
import zipfile

from download import (BLOCK_SIZE, PART_SUFFIX, DownloadError, _aside, _lock, _remove, _size, _stderr, read_record,
                      sha256_file, write_record)


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def archive_kind(path: str) -> str:
    """'hdf5', 'zip', 'tar' (plain or compressed) or 'unknown', from the file's first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00" or head[257:262] == b"ustar":
        return "tar"
    return "unknown"


def extract_member(archive: str, archive_sha256: str, member: str, destination: str, log=_stderr) -> tuple[str, str]:
    """Unpack the archive entry whose name is `member` (in any folder) to `destination`; return (path, sha256).

    The extracted file gets a record naming the archive's sha256; it is reused while both still match.
    Raises DownloadError if the archive is not a zip or tar file or holds no such entry.
    """
    destination = os.path.abspath(destination)
    try:
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        with _lock(destination, log):
            return _extract_locked(archive, archive_sha256, member, destination, log)
    except OSError as error:
        raise DownloadError(f"cannot unpack '{member}' from '{archive}' into the cache: {error.strerror or error} "
                            f"('{error.filename or destination}')") from None


def _extract_locked(archive: str, archive_sha256: str, member: str, destination: str, log) -> tuple[str, str]:
    record = read_record(destination)
    if os.path.exists(destination) and record and record.get("source_sha256") == archive_sha256:
        actual = sha256_file(destination)
        if actual == record["sha256"]:
            log(f"using {destination}, extracted earlier from {archive} (sha256 verified)")
            return destination, actual
    kind = archive_kind(archive)
    part = destination + PART_SUFFIX
    try:
        if kind == "zip":
            _extract_zip(archive, member, part)
        elif kind == "tar":
            _extract_tar(archive, member, part)
        else:
            raise DownloadError(f"file '{archive}' is neither a zip nor a tar archive (nor an h5ad file)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        _remove(part)
        raise DownloadError(f"file '{archive}': cannot unpack the {kind} archive ({error})") from None
    except BaseException:
        _remove(part)
        raise
    actual = sha256_file(part)
    if os.path.exists(destination):  # placed by hand or another version: kept, moved aside, never deleted
        previous = sha256_file(destination)
        if previous != actual:
            aside = _aside(destination, previous)
            os.replace(destination, aside)
            log(f"[warning] {destination} differs from '{member}' in {archive}; it was moved to {aside} (not deleted)")
    write_record(destination, sha256=actual, size=_size(part), verified_against="extracted from a verified archive",
                 source=archive, source_sha256=archive_sha256, member=member)
    os.replace(part, destination)
    log(f"extracted {member} from {archive} -> {destination}")
    return destination, actual


def _matching(names: list[str], member: str, archive: str) -> str:
    found = sorted((n for n in names if n == member or n.endswith("/" + member)), key=lambda n: (n.count("/"), n))
    if not found:
        shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        raise DownloadError(f"file '{archive}': the archive holds no '{member}' (entries: {shown or 'none'})")
    return found[0]


def _extract_zip(archive: str, member: str, part: str):
    with zipfile.ZipFile(archive) as bundle:
        name = _matching([i.filename for i in bundle.infolist() if not i.is_dir()], member, archive)
        with bundle.open(name) as source, open(part, "wb") as out:
            while True:
                block = source.read(BLOCK_SIZE * 8)
                if not block:
                    break
                out.write(block)


def _extract_tar(archive: str, member: str, part: str):
    with tarfile.open(archive, "r:*") as bundle:
        members = [m for m in bundle.getmembers() if m.isfile()]
        name = _matching([m.name for m in members], member, archive)
        source = bundle.extractfile(next(m for m in members if m.name == name))
        with source, open(part, "wb") as out:
            while True:
                block = source.read(BLOCK_SIZE * 8)
                if not block:
                    break
                out.write(block)
