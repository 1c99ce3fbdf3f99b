"""src/utils/download.py against a local HTTP server on 127.0.0.1 (no network): resume, retry, checksums,
atomic cache writes, published checksums (Zenodo, Dataverse), archives."""
import hashlib
import io
import json
import os
import socket
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "src" / "utils"))
import archives  # noqa: E402
import download  # noqa: E402
from archives import extract_member  # noqa: E402
from download import DownloadError, cache_path, fetch, read_record  # noqa: E402

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not all zeros, so a misplaced byte changes the hash
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()
FAST = {"retries": 2, "delay": 0.01, "backoff": 1.0, "timeout": 5.0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        server.if_range.append(self.headers.get("If-Range"))
        if self.path in server.json:
            return self._send(200, json.dumps(server.json[self.path]).encode(), {"Content-Type": "application/json"})
        if self.path in server.fail_once:
            return self._send(server.fail_once.pop(self.path), b"busy")
        body = server.files.get(self.path)
        if body is None:
            return self._send(404, b"not found")
        start, status, headers = 0, 200, {}
        etag = server.etags.get(self.path)
        if etag:
            headers["ETag"] = etag
        requested = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if requested and if_range is not None and if_range != etag:
            requested = None  # RFC 9110 If-Range: the file changed, send all of it
        if requested and server.ranges:
            start = int(requested.split("=")[1].split("-")[0])
            if start >= len(body):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        payload = body[start:]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if self.path in server.no_length:  # the body ends when the connection closes
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        cut = server.cut_once.pop(self.path, None)
        if cut is not None:  # send part of the body, then drop the connection
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(payload)


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.files, httpd.json, httpd.requests = {}, {}, []
    httpd.cut_once, httpd.fail_once, httpd.ranges = {}, {}, True
    httpd.etags, httpd.if_range, httpd.no_length = {}, [], set()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("PERTURBCAST_CACHE", str(root))
    return root


def quiet(messages):
    return messages.append


def test_cache_path_follows_the_url(cache):
    path = cache_path("https://zenodo.org/records/13350497/files/DatlingerBock2017.h5ad")
    assert path == str(cache / "zenodo.org" / "records" / "13350497" / "files" / "DatlingerBock2017.h5ad")
    assert cache_path("https://dataverse.harvard.edu/api/access/datafile/6154020").endswith(
        os.path.join("dataverse.harvard.edu", "api", "access", "datafile", "6154020"))
    with pytest.raises(DownloadError):
        cache_path("ftp://example.org/x")


def test_download_success_records_and_reuses(server, cache):
    server.files["/data/file.h5ad"] = PAYLOAD
    url = server.base + "/data/file.h5ad"
    messages = []
    path, sha = fetch(url, log=quiet(messages), **FAST)
    assert sha == SHA256 and Path(path).read_bytes() == PAYLOAD
    assert path == cache_path(url) and not os.path.exists(path + ".part")
    record = read_record(path)
    assert record["sha256"] == SHA256 and record["url"] == url and record["size"] == len(PAYLOAD)
    assert "first download" in record["verified_against"]
    # reuse: no request, the file is hashed against its record
    before = len(server.requests)
    assert fetch(url, log=quiet(messages), **FAST) == (path, SHA256)
    assert len(server.requests) == before
    assert any("using cached" in m for m in messages)


def test_resume_after_a_cut_connection(server, cache):
    server.files["/big.bin"] = PAYLOAD
    server.cut_once["/big.bin"] = 300_000
    messages = []
    path, sha = fetch(server.base + "/big.bin", sha256=SHA256, log=quiet(messages), **FAST)
    assert sha == SHA256 and Path(path).read_bytes() == PAYLOAD
    ranges = [r for p, r in server.requests if p == "/big.bin"]
    assert ranges[0] is None and ranges[1] == "bytes=300000-", ranges
    assert any("retrying" in m for m in messages)
    assert read_record(path)["verified_against"].startswith("sha256 " + SHA256)


def test_resume_a_part_left_by_an_earlier_run(server, cache):
    """Resumed with If-Range (the ETag kept beside the .part): the host sends only the tail."""
    url = server.base + "/partial.bin"
    server.files["/partial.bin"], server.etags["/partial.bin"] = PAYLOAD, '"v1"'
    part = Path(cache_path(url) + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:123_456])
    Path(cache_path(url) + ".part.json").write_text(json.dumps({"url": url, "etag": '"v1"'}))
    path, sha = fetch(url, log=quiet([]), **FAST)
    assert sha == SHA256 and Path(path).read_bytes() == PAYLOAD
    assert server.requests == [("/partial.bin", "bytes=123456-")] and server.if_range == ['"v1"']
    assert not os.path.exists(path + ".part.json")


def test_a_part_of_an_older_version_is_not_resumed_onto_the_new_one(server, cache):
    url = server.base + "/versioned.bin"
    new = PAYLOAD[::-1]
    server.files["/versioned.bin"], server.etags["/versioned.bin"] = new, '"v2"'
    part = Path(cache_path(url) + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:300_000])  # the old version's head
    Path(str(part) + ".json").write_text(json.dumps({"url": url, "etag": '"v1"'}))
    messages = []
    path, sha = fetch(url, log=quiet(messages), **FAST)
    assert Path(path).read_bytes() == new and sha == hashlib.sha256(new).hexdigest()
    assert server.if_range == ['"v1"'] and any("starting over" in m for m in messages)
    # a .part with no validator and no checksum to verify it: downloaded again from the start
    os.remove(path)
    os.remove(path + download.RECORD_SUFFIX)
    part.write_bytes(PAYLOAD[:300_000])
    server.requests.clear()
    assert fetch(url, log=quiet(messages), **FAST)[1] == hashlib.sha256(new).hexdigest()
    assert server.requests == [("/versioned.bin", None)]


def test_server_without_range_support_starts_over(server, cache):
    server.ranges = False
    server.files["/norange.bin"] = PAYLOAD
    server.cut_once["/norange.bin"] = 100_000
    messages = []
    path, sha = fetch(server.base + "/norange.bin", sha256=SHA256, log=quiet(messages), **FAST)
    assert sha == SHA256 and Path(path).read_bytes() == PAYLOAD
    assert any("does not resume" in m for m in messages)


def test_checksum_mismatch_caches_nothing(server, cache):
    server.files["/bad.h5ad"] = PAYLOAD
    url = server.base + "/bad.h5ad"
    with pytest.raises(DownloadError, match="checksum mismatch") as error:
        fetch(url, sha256="0" * 64, log=quiet([]), **FAST)
    assert url in str(error.value) and "nothing was cached" in str(error.value)
    path = cache_path(url)
    assert not os.path.exists(path) and not os.path.exists(path + ".part") and read_record(path) is None


def test_published_md5_is_checked(server, cache):
    server.files["/records/7/files/good.h5ad"] = PAYLOAD
    server.files["/records/7/files/bad.h5ad"] = PAYLOAD
    server.json["/api/records/7"] = {"files": [{"key": "good.h5ad", "checksum": f"md5:{MD5}"},
                                              {"key": "bad.h5ad", "checksum": "md5:" + "f" * 32}]}
    api = server.base + "/api/records"
    path, sha = fetch(server.base + "/records/7/files/good.h5ad", published=download.zenodo_checksum(7, "good.h5ad", api=api),
                      log=quiet([]), **FAST)
    assert sha == SHA256 and "Zenodo record 7" in read_record(path)["verified_against"]
    with pytest.raises(DownloadError, match="Zenodo record 7 md5"):
        fetch(server.base + "/records/7/files/bad.h5ad", published=download.zenodo_checksum(7, "bad.h5ad", api=api),
              log=quiet([]), **FAST)
    assert not os.path.exists(cache_path(server.base + "/records/7/files/bad.h5ad"))


def test_dataverse_checksum_and_pinned_sha256_wins(server, cache):
    server.json["/api/files/42"] = {"status": "OK", "data": {"dataFile": {"id": 42, "md5": MD5,
                                                                          "checksum": {"type": "MD5", "value": MD5}}}}
    lookup = download.dataverse_checksum(42, api=server.base + "/api/files")
    assert lookup() == download.Checksum("md5", MD5, "Dataverse file 42")
    # a pinned sha256 is used without asking the host
    server.files["/file/42"] = PAYLOAD
    calls = []
    path, sha = fetch(server.base + "/file/42", sha256=SHA256, published=lambda: calls.append(1),
                      log=quiet([]), **FAST)
    assert sha == SHA256 and calls == []


def test_unreachable_metadata_api_falls_back_to_recording(server, cache):
    server.files["/x.bin"] = PAYLOAD
    messages = []
    path, sha = fetch(server.base + "/x.bin", published=download.zenodo_checksum(9, "x.bin", api=server.base + "/nope"),
                      log=quiet(messages), **FAST)
    assert sha == SHA256 and any("could not read the published checksum" in m for m in messages)


def test_host_down_fails_fast_after_bounded_retries(cache):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/file.h5ad"
    messages, sleeps = [], []
    started = time.monotonic()
    with pytest.raises(DownloadError) as error:
        fetch(url, log=quiet(messages), sleep=sleeps.append, retries=3, delay=1.0, backoff=2.0, timeout=2.0)
    assert time.monotonic() - started < 5
    assert "cannot download" in str(error.value) and url in str(error.value) and "refused" in str(error.value).lower()
    assert sleeps == [1.0, 2.0, 4.0]  # exponential backoff, 3 retries after the first attempt
    assert not os.path.exists(cache_path(url)) and not os.path.exists(cache_path(url) + ".part")


def test_http_errors(server, cache):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.base + "/missing", log=quiet([]), **FAST)
    assert len(server.requests) == 1  # not retried
    server.files["/flaky"] = PAYLOAD
    server.fail_once["/flaky"] = 503
    assert fetch(server.base + "/flaky", log=quiet([]), **FAST)[1] == SHA256


def test_changed_cache_with_a_pin_is_downloaded_again(server, cache):
    server.files["/c.bin"] = PAYLOAD
    url = server.base + "/c.bin"
    path, _ = fetch(url, log=quiet([]), **FAST)
    Path(path).write_bytes(b"corrupted")
    messages = []
    assert fetch(url, sha256=SHA256, log=quiet(messages), **FAST)[1] == SHA256 and Path(path).read_bytes() == PAYLOAD
    assert any("downloading a replacement" in m for m in messages)
    assert Path(f"{path}.replaced-{hashlib.sha256(b'corrupted').hexdigest()[:12]}").read_bytes() == b"corrupted"


def unreachable_url(path="/file.h5ad") -> str:
    with socket.socket() as probe:  # a port nobody listens on: offline
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}{path}"


def place_by_hand(url: str, data: bytes) -> Path:
    path = Path(cache_path(url))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_file_placed_by_hand_survives_an_offline_run_and_is_used(cache):
    url = unreachable_url()
    path = place_by_hand(url, PAYLOAD)
    offline_lookup = download.zenodo_checksum(1, "file.h5ad", api=unreachable_url("/api/records"))
    for attempt in range(2):  # warned and recorded as unverified, and again on the next run
        messages = []
        assert fetch(url, published=offline_lookup, log=quiet(messages), **FAST) == (str(path), SHA256)
        assert path.read_bytes() == PAYLOAD
        assert any(m.startswith("[warning] using cached") and "UNVERIFIED" in m for m in messages), messages
        assert read_record(str(path))["verified_against"].startswith("unverified")
    # with the loader's pinned sha256 it is verified offline, no warning
    messages = []
    assert fetch(url, sha256=SHA256, log=quiet(messages), **FAST) == (str(path), SHA256)
    assert not any("warning" in m for m in messages) and read_record(str(path))["verified_against"] == "pinned sha256"


def test_a_file_with_an_unreadable_record_is_kept_offline_but_a_changed_one_is_refused(cache):
    url = unreachable_url()
    path = place_by_hand(url, PAYLOAD)
    Path(str(path) + download.RECORD_SUFFIX).write_text("{not json")
    messages = []
    assert fetch(url, log=quiet(messages), **FAST)[1] == SHA256 and path.read_bytes() == PAYLOAD
    assert any("no checksum record" in m for m in messages)
    # a record of another version (its own size and time): the file changed since, and nothing can verify it
    download.write_record(str(path), sha256="a" * 64, url=url, size=3, mtime_ns=1)
    with pytest.raises(DownloadError) as error:
        fetch(url, log=quiet([]), **FAST)
    assert str(error.value) == (
        f"cached file {path} changed since it was recorded (sha256 {SHA256}, recorded {'a' * 64}) and no checksum is "
        f"pinned or published to verify it: put a good copy in place with `perturbcast cache add GOOD_COPY --url "
        f"{url} --force`, or move the file away to download it again")
    assert path.read_bytes() == PAYLOAD and read_record(str(path))["sha256"] == "a" * 64


def test_an_unchanged_verified_file_is_used_without_hashing_and_a_changed_one_is_hashed(cache, monkeypatch):
    url = unreachable_url()
    path = place_by_hand(url, PAYLOAD)
    download.write_record(str(path), sha256=SHA256, url=url, verified_against="pinned sha256")
    hashed = []
    original = download.file_digests
    monkeypatch.setattr(download, "file_digests", lambda p, a=("sha256",): hashed.append(p) or original(p, a))
    assert fetch(url, sha256=SHA256, log=quiet([]), **FAST)[1] == SHA256 and hashed == []
    os.utime(path, ns=(1, 1))  # touched: the size and time no longer vouch for it
    assert fetch(url, sha256=SHA256, log=quiet([]), **FAST)[1] == SHA256 and hashed == [str(path)]


def test_a_cached_file_verified_by_the_published_checksum_is_used_without_download(server, cache):
    url = server.base + "/records/3/files/hand.h5ad"
    server.json["/api/records/3"] = {"files": [{"key": "hand.h5ad", "checksum": f"md5:{MD5}"}]}
    path = place_by_hand(url, PAYLOAD)
    messages = []
    lookup = download.zenodo_checksum(3, "hand.h5ad", api=server.base + "/api/records")
    assert fetch(url, published=lookup, log=quiet(messages), **FAST)[1] == SHA256
    assert [p for p, _ in server.requests] == ["/api/records/3"]  # the checksum only, no download
    assert "Zenodo record 3" in read_record(str(path))["verified_against"]


def test_another_version_is_moved_aside_only_once_its_replacement_is_complete(server, cache):
    url = server.base + "/records/4/files/v.h5ad"
    server.json["/api/records/4"] = {"files": [{"key": "v.h5ad", "checksum": f"md5:{MD5}"}]}
    lookup = download.zenodo_checksum(4, "v.h5ad", api=server.base + "/api/records")
    old = b"an older version of the file" * 100
    path = place_by_hand(url, old)
    # the download fails (HTTP 404): the old file is untouched
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(url, published=lookup, log=quiet([]), **FAST)
    assert path.read_bytes() == old
    # ... and with the pinned sha256 of the new version too
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(url, sha256=SHA256, log=quiet([]), **FAST)
    assert path.read_bytes() == old
    server.files["/records/4/files/v.h5ad"] = PAYLOAD
    messages = []
    assert fetch(url, published=lookup, log=quiet(messages), **FAST)[1] == SHA256 and path.read_bytes() == PAYLOAD
    aside = Path(f"{path}.replaced-{hashlib.sha256(old).hexdigest()[:12]}")
    assert aside.read_bytes() == old and any(str(aside) in m for m in messages)


def test_a_cut_connection_without_content_length_is_not_complete(server, cache):
    server.files["/nolength.bin"] = PAYLOAD
    server.no_length.add("/nolength.bin")
    server.cut_once["/nolength.bin"] = 300_000
    url = server.base + "/nolength.bin"
    with pytest.raises(DownloadError, match="no Content-Length and no checksum"):
        fetch(url, log=quiet([]), **FAST)
    assert not os.path.exists(cache_path(url)) and not os.path.exists(cache_path(url) + ".part")
    assert [r for p, r in server.requests] == [None]
    # the same stream verified by a checksum is complete
    assert fetch(url, sha256=SHA256, log=quiet([]), **FAST)[1] == SHA256


def test_an_html_error_page_served_with_200_is_refused(server, cache):
    server.files["/records/5/files/data.h5ad"] = b"\n<!DOCTYPE html><html><body>Service unavailable</body></html>"
    url = server.base + "/records/5/files/data.h5ad"
    with pytest.raises(DownloadError, match="HTML page instead of the file"):
        fetch(url, log=quiet([]), **FAST)
    assert not os.path.exists(cache_path(url)) and not os.path.exists(cache_path(url) + ".part")


def test_a_symlinked_cache_folder_shares_the_lock(server, cache, tmp_path, monkeypatch):
    server.files["/locked.bin"] = PAYLOAD
    url = server.base + "/locked.bin"
    real = cache_path(url)
    link = tmp_path / "link"
    link.symlink_to(cache, target_is_directory=True)
    os.makedirs(os.path.dirname(real))
    messages, done = [], threading.Event()
    with download._lock(real, quiet([])):
        monkeypatch.setenv("PERTURBCAST_CACHE", str(link))
        worker = threading.Thread(target=lambda: (fetch(url, log=quiet(messages), **FAST), done.set()))
        worker.start()
        time.sleep(0.5)
        assert not done.is_set() and any("waiting for another process" in m for m in messages)
    worker.join(10)
    assert done.is_set() and Path(real).read_bytes() == PAYLOAD


def test_a_full_disk_while_writing_the_record_is_one_line(server, cache, monkeypatch):
    server.files["/full.bin"] = PAYLOAD
    url = server.base + "/full.bin"

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(download.json, "dump", no_space)
    with pytest.raises(DownloadError) as error:
        fetch(url, sha256=SHA256, log=quiet([]), **FAST)
    assert "No space left on device" in str(error.value) and "\n" not in str(error.value)
    folder = Path(cache_path(url)).parent
    assert not any(".tmp" in p.name for p in folder.iterdir()) and not os.path.exists(cache_path(url))


def test_a_file_size_limit_while_downloading_is_one_line(server, cache, tmp_path):
    """A real full disk, simulated with RLIMIT_FSIZE in a child process (SIGXFSZ ignored: write fails EFBIG)."""
    server.files["/huge.bin"] = PAYLOAD
    url = server.base + "/huge.bin"
    code = (
        "import resource, signal, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'src' / 'utils')!r})\n"
        "import download\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "try:\n"
        f"    download.fetch({url!r}, retries=1, delay=0.01, log=lambda m: None)\n"
        "except download.DownloadError as error:\n"
        "    print(error)\n"
        "    sys.exit(3)\n")
    import subprocess
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PERTURBCAST_CACHE": str(cache)})
    assert done.returncode == 3, done.stderr
    assert "File too large" in done.stdout and cache_path(url) + ".part" in done.stdout and "Traceback" not in done.stderr
    assert not os.path.exists(cache_path(url)) and os.path.getsize(cache_path(url) + ".part") <= 200_000


def test_a_read_only_cache_is_one_line(server, tmp_path, monkeypatch):
    server.files["/ro.bin"] = PAYLOAD
    if os.geteuid() == 0:
        root = "/sys/perturbcast-cache"  # sysfs refuses new files even to root
    else:
        root = str(tmp_path / "ro")
        os.makedirs(root)
        os.chmod(root, 0o555)
    monkeypatch.setenv("PERTURBCAST_CACHE", root)
    with pytest.raises(DownloadError, match="cannot write .* into the cache: .*(not permitted|denied)") as error:
        fetch(server.base + "/ro.bin", log=quiet([]), **FAST)
    assert root in str(error.value) and "PERTURBCAST_CACHE" in str(error.value)


def test_extract_member_keeps_a_file_placed_by_hand(tmp_path, cache):
    zipped = tmp_path / "bundle.zip"
    with zipfile.ZipFile(zipped, "w") as bundle:
        bundle.writestr("d/member.h5ad", PAYLOAD)
    destination = tmp_path / "out" / "member.h5ad"
    destination.parent.mkdir()
    destination.write_bytes(PAYLOAD)  # the same content, no record: recorded and kept
    messages = []
    assert extract_member(str(zipped), "z" * 64, "member.h5ad", str(destination), log=messages.append)[1] == SHA256
    assert not any("moved" in m for m in messages) and read_record(str(destination))["source_sha256"] == "z" * 64
    destination.write_bytes(b"edited by hand")
    os.remove(str(destination) + download.RECORD_SUFFIX)
    extract_member(str(zipped), "z" * 64, "member.h5ad", str(destination), log=messages.append)
    aside = Path(f"{destination}.replaced-{hashlib.sha256(b'edited by hand').hexdigest()[:12]}")
    assert destination.read_bytes() == PAYLOAD and aside.read_bytes() == b"edited by hand"


def test_concurrent_fetches_download_once(server, cache):
    server.files["/shared.bin"] = PAYLOAD
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetch(server.base + "/shared.bin", log=quiet([]), **FAST)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and {sha for _, sha in results} == {SHA256}
    assert len([p for p, _ in server.requests if p == "/shared.bin"]) == 1


def _tar_gz(members: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_extract_member_from_zip_and_tar(tmp_path, cache):
    zipped = tmp_path / "norman.zip"
    with zipfile.ZipFile(zipped, "w") as bundle:
        bundle.writestr("norman/go.csv", "a,b\n")
        bundle.writestr("norman/perturb_processed.h5ad", PAYLOAD)
    tarred = tmp_path / "replogle.tar.gz"
    tarred.write_bytes(_tar_gz({"replogle/perturb_processed.h5ad": PAYLOAD[::-1]}))
    assert archives.archive_kind(str(zipped)) == "zip" and archives.archive_kind(str(tarred)) == "tar"
    messages = []
    path, sha = extract_member(str(zipped), "z" * 64, "perturb_processed.h5ad", str(tmp_path / "out" / "a.h5ad"),
                               log=messages.append)
    assert Path(path).read_bytes() == PAYLOAD and sha == SHA256
    again = extract_member(str(zipped), "z" * 64, "perturb_processed.h5ad", str(tmp_path / "out" / "a.h5ad"),
                           log=messages.append)
    assert again == (path, sha) and any("extracted earlier" in m for m in messages)
    path, _ = extract_member(str(tarred), "t" * 64, "perturb_processed.h5ad", str(tmp_path / "out" / "b.h5ad"),
                             log=messages.append)
    assert Path(path).read_bytes() == PAYLOAD[::-1]
    with pytest.raises(DownloadError, match="holds no 'missing.h5ad'"):
        extract_member(str(zipped), "z" * 64, "missing.h5ad", str(tmp_path / "out" / "c.h5ad"), log=messages.append)
    not_archive = tmp_path / "plain.txt"
    not_archive.write_text("hello")
    with pytest.raises(DownloadError, match="neither a zip nor a tar"):
        extract_member(str(not_archive), "p" * 64, "x", str(tmp_path / "out" / "d"), log=messages.append)
