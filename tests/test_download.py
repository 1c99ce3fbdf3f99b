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
import download  # noqa: E402
from download import DownloadError, cache_path, extract_member, fetch, read_record  # noqa: E402

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
        if self.path in server.json:
            return self._send(200, json.dumps(server.json[self.path]).encode(), {"Content-Type": "application/json"})
        if self.path in server.fail_once:
            return self._send(server.fail_once.pop(self.path), b"busy")
        body = server.files.get(self.path)
        if body is None:
            return self._send(404, b"not found")
        start, status, headers = 0, 200, {}
        requested = self.headers.get("Range")
        if requested and server.ranges:
            start = int(requested.split("=")[1].split("-")[0])
            if start >= len(body):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
            status, headers = 206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
        payload = body[start:]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
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
    url = server.base + "/partial.bin"
    server.files["/partial.bin"] = PAYLOAD
    part = Path(cache_path(url) + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:123_456])
    path, sha = fetch(url, log=quiet([]), **FAST)
    assert sha == SHA256 and Path(path).read_bytes() == PAYLOAD
    assert server.requests == [("/partial.bin", "bytes=123456-")]


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


def test_changed_or_unrecorded_cache_is_downloaded_again(server, cache):
    server.files["/c.bin"] = PAYLOAD
    url = server.base + "/c.bin"
    path, _ = fetch(url, log=quiet([]), **FAST)
    Path(path).write_bytes(b"corrupted")
    messages = []
    assert fetch(url, log=quiet(messages), **FAST)[1] == SHA256
    assert any("downloading it again" in m for m in messages) and Path(path).read_bytes() == PAYLOAD
    os.remove(path + download.RECORD_SUFFIX)  # a file without record (copied in by hand, interrupted)
    requests = len(server.requests)
    assert fetch(url, log=quiet([]), **FAST)[1] == SHA256 and len(server.requests) == requests + 1
    # ... unless the loader pins its sha256: then the file is verified and kept
    os.remove(path + download.RECORD_SUFFIX)
    assert fetch(url, sha256=SHA256, log=quiet([]), **FAST)[1] == SHA256 and len(server.requests) == requests + 1


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
    assert download.archive_kind(str(zipped)) == "zip" and download.archive_kind(str(tarred)) == "tar"
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
