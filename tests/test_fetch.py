"""Downloads against a real local HTTP server (failure modes chosen by path) and safe archive extraction."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import random
import re
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from sclabel import datasets, fetch
from sclabel.errors import InputError
from sclabel.fetch import Limits
from sclabel.io import temp_sibling

DATA = random.Random(0).randbytes(300_000)
DATA_SHA = hashlib.sha256(DATA).hexdigest()
CUT = 100_000
FLOOD = 64 << 20  # bytes an 'endless' or 'overlong' answer sends at most unless the client hangs up


def trickled(data: bytes):
    """`data` in pieces of 100 bytes, one every 20 ms."""
    for start in range(0, len(data), 100):
        time.sleep(0.02)
        yield data[start:start + 100]


def chunked(pieces):
    """`pieces` in HTTP/1.1 chunked transfer coding."""
    for piece in pieces:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


class Handler(BaseHTTPRequestHandler):
    """Serves `server.files` at /<mode>/<name>; the mode picks a behaviour (see do_GET)."""

    def do_GET(self) -> None:
        srv = self.server
        with srv.lock:
            srv.requests.append((self.path, self.headers.get("Range")))
            nth = sum(1 for path, _ in srv.requests if path == self.path)
        mode, _, name = self.path.lstrip("/").partition("/")
        data = srv.files.get(name)
        if data is None:
            return self.send_status(404)
        if mode.startswith("status-"):  # always this status
            return self.send_status(int(mode[7:]))
        if mode.startswith("flaky-") and nth <= 2:  # this status twice, then the file
            return self.send_status(int(mode[6:]))
        if mode == "slow" and nth == 1:  # first answer comes too late for the client's timeout
            time.sleep(1.0)
        if mode == "corrupt":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if mode == "truncate":  # announces the whole file, sends half, closes
            return self.send_body(data, honour_range=False, send=len(data) // 2)
        if mode == "cut" and nth == 1:  # first answer stops at CUT bytes
            return self.send_body(data, honour_range=False, send=CUT)
        if mode == "stall" and nth == 1:  # first answer has no Content-Length and stalls after CUT bytes
            self.send_response(200)
            self.end_headers()
            self.wfile.write(data[:CUT])
            self.wfile.flush()
            return time.sleep(1.0)
        if mode == "trickle":  # announces the file, then sends 100 bytes every 20 ms (well within any read timeout)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.stream(trickled(data))
        if mode == "endless":  # no Content-Length: the body ends when the connection closes, after FLOOD bytes
            self.send_response(200)
            self.end_headers()
            return self.stream(bytes(1 << 16) for _ in range(FLOOD >> 16))
        if mode == "overlong":  # declares 1000 bytes but sends a chunked body of FLOOD bytes
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            return self.stream(chunked(bytes(1 << 16) for _ in range(FLOOD >> 16)))
        if mode == "badrange" and self.headers.get("Range"):  # 206, but from byte 0 whatever was asked
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)
        self.send_body(data, honour_range=mode != "norange")

    def send_status(self, code: int) -> None:
        """An empty answer with this status."""
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_body(self, data: bytes, honour_range: bool, send: int | None = None) -> None:
        """200 (or 206 for `Range: bytes=N-`) with the file; `send` stops after that many body bytes."""
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if honour_range and match else 0
        if start >= len(data) > 0:
            return self.send_status(416)
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:send])
        self.wfile.flush()

    def stream(self, pieces) -> None:
        """Write these pieces one by one; record in `server.hangups` when the client hangs up before the end."""
        try:
            for piece in pieces:
                self.wfile.write(piece)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.server.hangups.append(self.path)

    def log_message(self, *args) -> None:
        """Keep the test output quiet."""


class Server(ThreadingHTTPServer):
    """Threaded server that records (path, Range header) of every request."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that timed out leaves a broken pipe behind; that is expected here."""

    def url(self, path: str) -> str:
        """Full URL of a path on this server."""
        return f"http://127.0.0.1:{self.server_port}{path}"

    def paths(self) -> list[str]:
        """Paths of the requests seen so far."""
        return [path for path, _ in self.requests]


@pytest.fixture
def server():
    """A fresh server per test on a free port of 127.0.0.1, serving DATA as data.bin."""
    srv = Server(("127.0.0.1", 0), Handler)
    srv.lock = threading.Lock()
    srv.requests = []
    srv.hangups = []
    srv.files = {"data.bin": DATA}
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def leftovers(folder: Path) -> list[str]:
    """Sorted names in a folder."""
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- download


def test_good_download_is_verified_and_atomic(server, tmp_path):
    dest = tmp_path / "dl" / "data.bin"
    assert fetch.download(server.url("/good/data.bin"), dest, DATA_SHA, backoff_s=0) == dest
    assert dest.read_bytes() == DATA
    assert fetch.sha256sum(dest) == DATA_SHA
    assert leftovers(dest.parent) == ["data.bin"]
    assert server.paths() == ["/good/data.bin"]


def test_upper_case_checksum_is_accepted(server, tmp_path):
    dest = tmp_path / "data.bin"
    fetch.download(server.url("/good/data.bin"), dest, DATA_SHA.upper(), backoff_s=0)
    assert dest.read_bytes() == DATA


def test_wrong_checksum_raises_and_leaves_nothing(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(InputError) as err:
        fetch.download(server.url("/corrupt/data.bin"), dest, DATA_SHA, backoff_s=0)
    assert err.value.field == "sha256"
    assert DATA_SHA in str(err.value) and "\n" not in str(err.value)
    assert leftovers(tmp_path) == []
    assert len(server.requests) == 1


def test_malformed_checksum_is_refused_before_any_request(server, tmp_path):
    with pytest.raises(InputError) as err:
        fetch.download(server.url("/good/data.bin"), tmp_path / "data.bin", "abc123", backoff_s=0)
    assert err.value.field == "sha256"
    assert server.requests == []


def test_truncated_transfer_fails_after_retries_and_cleans_up(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(InputError) as err:
        fetch.download(server.url("/truncate/data.bin"), dest, DATA_SHA, Limits(retries=2), backoff_s=0)
    assert err.value.field == "download"
    assert "truncated" in err.value.problem and "3 attempts" in err.value.problem
    assert len(server.requests) == 3
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("code", [404, 403, 400, 401])
def test_client_errors_fail_fast(server, tmp_path, code):
    url = server.url(f"/status-{code}/data.bin")
    with pytest.raises(InputError) as err:
        fetch.download(url, tmp_path / "data.bin", DATA_SHA, Limits(retries=3), backoff_s=0)
    assert err.value.file == url
    assert err.value.field == "source"
    assert err.value.problem.startswith(f"HTTP {code}")
    assert "datasets.<name>.source" in err.value.fix
    assert len(server.requests) == 1
    assert leftovers(tmp_path) == []


def test_missing_file_is_404_with_the_documented_message(server, tmp_path):
    url = server.url("/good/nope.bin")
    with pytest.raises(InputError, match=r"HTTP 404 Not Found\. Fix: check the URL in config datasets"):
        fetch.download(url, tmp_path / "nope.bin", DATA_SHA, backoff_s=0)
    assert len(server.requests) == 1


@pytest.mark.parametrize("code", [500, 503, 408, 429])
def test_transient_status_is_retried_until_success(server, tmp_path, caplog, code):
    dest = tmp_path / "data.bin"
    with caplog.at_level(logging.WARNING, logger="sclabel.fetch"):
        fetch.download(server.url(f"/flaky-{code}/data.bin"), dest, DATA_SHA, Limits(retries=3), backoff_s=0)
    assert dest.read_bytes() == DATA
    assert len(server.requests) == 3
    retries = [r for r in caplog.records if r.name == "sclabel.fetch"]
    assert len(retries) == 2 and f"HTTP {code}" in retries[0].getMessage()


def test_persistent_server_error_gives_up(server, tmp_path):
    with pytest.raises(InputError) as err:
        fetch.download(server.url("/status-502/data.bin"), tmp_path / "data.bin", DATA_SHA, Limits(retries=1),
                       backoff_s=0)
    assert err.value.field == "download" and "HTTP 502" in err.value.problem
    assert len(server.requests) == 2
    assert leftovers(tmp_path) == []


def test_backoff_grows_exponentially(server, tmp_path):
    start = time.monotonic()
    fetch.download(server.url("/flaky-500/data.bin"), tmp_path / "data.bin", DATA_SHA, Limits(retries=2),
                   backoff_s=0.1)
    assert time.monotonic() - start >= 0.1 + 0.2


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    dest = tmp_path / "data.bin"
    fetch.download(server.url("/cut/data.bin"), dest, DATA_SHA, Limits(retries=2), backoff_s=0)
    assert server.requests == [("/cut/data.bin", None), ("/cut/data.bin", f"bytes={CUT}-")]
    assert fetch.sha256sum(dest) == DATA_SHA
    assert leftovers(tmp_path) == ["data.bin"]


def test_stalled_body_times_out_and_resumes(server, tmp_path):
    dest = tmp_path / "data.bin"
    fetch.download(server.url("/stall/data.bin"), dest, DATA_SHA, Limits(retries=1, timeout_s=0.3), backoff_s=0)
    assert server.requests == [("/stall/data.bin", None), ("/stall/data.bin", f"bytes={CUT}-")]
    assert dest.read_bytes() == DATA


@pytest.mark.parametrize(("mode", "part_bytes"), [("good", DATA[:5000]), ("norange", b"\0" * 5000)])
def test_leftover_part_is_resumed_on_206_and_restarted_on_200(server, tmp_path, mode, part_bytes):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(part_bytes)
    fetch.download(server.url(f"/{mode}/data.bin"), dest, DATA_SHA, backoff_s=0)
    assert server.requests == [(f"/{mode}/data.bin", "bytes=5000-")]
    assert dest.read_bytes() == DATA
    assert leftovers(tmp_path) == ["data.bin"]


def test_part_from_a_different_file_is_restarted_on_416(server, tmp_path):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(b"\0" * (len(DATA) + 10))
    fetch.download(server.url("/good/data.bin"), dest, DATA_SHA, Limits(retries=1), backoff_s=0)
    assert server.requests == [("/good/data.bin", f"bytes={len(DATA) + 10}-"), ("/good/data.bin", None)]
    assert dest.read_bytes() == DATA


def test_206_for_the_wrong_range_is_restarted(server, tmp_path):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(DATA[:5000])
    fetch.download(server.url("/badrange/data.bin"), dest, DATA_SHA, Limits(retries=1), backoff_s=0)
    assert server.requests == [("/badrange/data.bin", "bytes=5000-"), ("/badrange/data.bin", None)]
    assert dest.read_bytes() == DATA


def test_timeout_is_retried(server, tmp_path):
    dest = tmp_path / "data.bin"
    fetch.download(server.url("/slow/data.bin"), dest, DATA_SHA, Limits(retries=1, timeout_s=0.3), backoff_s=0)
    assert dest.read_bytes() == DATA
    assert len(server.requests) == 2


def test_connection_refused_is_retried_then_reported(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(InputError) as err:
        fetch.download(f"http://127.0.0.1:{port}/x.bin", tmp_path / "x.bin", DATA_SHA, Limits(retries=2),
                       backoff_s=0)
    assert err.value.field == "download" and "3 attempts" in err.value.problem
    assert leftovers(tmp_path) == []


def test_present_dest_with_right_checksum_is_not_downloaded(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(DATA)
    assert fetch.download(server.url("/good/data.bin"), dest, DATA_SHA, backoff_s=0) == dest
    assert server.requests == []


def test_present_dest_with_wrong_checksum_is_replaced(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"stale")
    fetch.download(server.url("/good/data.bin"), dest, DATA_SHA, backoff_s=0)
    assert dest.read_bytes() == DATA
    assert len(server.requests) == 1


def test_present_dest_with_wrong_checksum_is_removed_when_the_download_fails(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"stale")
    with pytest.raises(InputError):
        fetch.download(server.url("/status-404/data.bin"), dest, DATA_SHA, backoff_s=0)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("as_url", [True, False])
def test_local_sources_are_copied_and_verified(tmp_path, as_url):
    src = tmp_path / "src" / "data.bin"
    src.parent.mkdir()
    src.write_bytes(DATA)
    out = tmp_path / "out"
    source = src.as_uri() if as_url else str(src)
    dest = fetch.download(source, out / "data.bin", DATA_SHA)
    assert dest.read_bytes() == DATA
    assert leftovers(out) == ["data.bin"]
    with pytest.raises(InputError) as err:
        fetch.download(source, out / "other.bin", hashlib.sha256(b"x").hexdigest())
    assert err.value.field == "sha256"
    assert leftovers(out) == ["data.bin"]


def test_missing_local_source_is_an_input_error(tmp_path):
    with pytest.raises(InputError) as err:
        fetch.download(str(tmp_path / "absent.h5ad"), tmp_path / "out" / "absent.h5ad")
    assert err.value.field == "source" and "not found" in err.value.problem
    assert leftovers(tmp_path / "out") == []


def hung_up(server, path: str) -> bool:
    """Whether the handler for `path` saw the client hang up before its body ended (waits up to 5 s)."""
    for _ in range(500):
        if path in server.hangups:
            return True
        time.sleep(0.01)
    return False


def test_trickling_server_is_cut_off_at_the_total_deadline(server, tmp_path):
    start = time.monotonic()
    with pytest.raises(InputError) as err:
        fetch.download(server.url("/trickle/data.bin"), tmp_path / "data.bin", DATA_SHA,
                       Limits(timeout_s=5, deadline_s=0.5), backoff_s=0)
    assert time.monotonic() - start < 3  # the whole body would take 60 s; each read is well within timeout_s
    assert err.value.field == "download.deadline_s" and "0.5 s" in err.value.problem and "\n" not in str(err.value)
    assert leftovers(tmp_path) == []


def test_retries_stop_at_the_total_deadline(server, tmp_path):
    start = time.monotonic()
    with pytest.raises(InputError) as err:
        fetch.download(server.url("/status-503/data.bin"), tmp_path / "data.bin", DATA_SHA,
                       Limits(retries=10, deadline_s=0.5), backoff_s=0.2)
    assert time.monotonic() - start < 0.6 and len(server.requests) == 2  # a third try would start after 0.6 s
    assert err.value.field == "download.deadline_s"


@pytest.mark.parametrize("mode", ["good", "endless"])
def test_body_over_max_bytes_is_refused_while_streaming(server, tmp_path, mode):
    with pytest.raises(InputError) as err:
        fetch.download(server.url(f"/{mode}/data.bin"), tmp_path / "data.bin", DATA_SHA, Limits(max_bytes=10_000),
                       backoff_s=0)
    assert err.value.field == "download.max_bytes" and "10000" in err.value.problem
    assert leftovers(tmp_path) == []
    if mode == "endless":  # refused from the stream, long before the server's FLOOD bytes were sent
        assert hung_up(server, "/endless/data.bin")


def test_body_longer_than_its_content_length_is_refused_while_streaming(server, tmp_path):
    with pytest.raises(InputError) as err:
        fetch.download(server.url("/overlong/data.bin"), tmp_path / "data.bin", DATA_SHA, backoff_s=0)
    assert err.value.field == "Content-Length" and "1000 bytes" in err.value.problem
    assert leftovers(tmp_path) == []
    assert hung_up(server, "/overlong/data.bin")


def test_download_limits_match_the_config_schema():
    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    block = schema["properties"]["download"]["properties"]
    assert {key: spec["default"] for key, spec in block.items()} == dataclasses.asdict(Limits())


# ---------------------------------------------------------------- archives

GOOD_FILES = {"data/a.txt": b"alpha\n", "data/sub/b.bin": DATA[:1000], "top.csv": b"x,y\n1,2\n"}


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """Write a tar (compressed by suffix) with these members; payload None for links, dirs and devices."""
    mode = {".gz": "w:gz", ".tgz": "w:gz", ".bz2": "w:bz2", ".xz": "w:xz"}.get(path.suffix, "w")
    with tarfile.open(path, mode) as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def tar_file(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
    """A regular-file tar member."""
    return tarfile.TarInfo(name), payload


def tar_special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    """A tar member of another type (dir, link, fifo, device)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    """Write a zip with these names, stored verbatim."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in files.items():
            zf.writestr(name, payload)
    return path


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, Path]:
    """An archive folder and an empty output folder that will hold the target."""
    (tmp_path / "src").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path / "src", tmp_path / "out"


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip"])
def test_good_archive_extracts(dirs, suffix):
    src, out = dirs
    archive = src / f"good{suffix}"
    if suffix == ".zip":
        make_zip(archive, GOOD_FILES)
    else:
        make_tar(archive, [tar_special("data", tarfile.DIRTYPE)] + [tar_file(n, p) for n, p in GOOD_FILES.items()])
    target = out / "good.d"
    files = fetch.extract_archive(archive, target)
    assert sorted(files) == sorted(target / name for name in GOOD_FILES)
    for name, payload in GOOD_FILES.items():
        assert (target / name).read_bytes() == payload
    assert leftovers(out) == ["good.d"]


def test_internal_links_are_allowed(dirs):
    src, out = dirs
    archive = make_tar(src / "links.tar.gz", [tar_file("data/a.txt", b"alpha"),
                                              tar_special("data/ln", tarfile.SYMTYPE, "a.txt"),
                                              tar_special("data/sub/up", tarfile.SYMTYPE, "../a.txt"),
                                              tar_special("data/hard", tarfile.LNKTYPE, "data/a.txt")])
    fetch.extract_archive(archive, out / "t")
    assert (out / "t" / "data" / "ln").is_symlink()
    assert (out / "t" / "data" / "ln").read_bytes() == b"alpha"
    assert (out / "t" / "data" / "sub" / "up").read_bytes() == b"alpha"
    assert (out / "t" / "data" / "hard").read_bytes() == b"alpha"


def test_reextraction_replaces_the_previous_target(dirs):
    src, out = dirs
    (out / "t").mkdir()
    (out / "t" / "stale.txt").write_text("old")
    files = fetch.extract_archive(make_zip(src / "a.zip", {"new.txt": b"new"}), out / "t")
    assert files == [out / "t" / "new.txt"]
    assert leftovers(out / "t") == ["new.txt"]
    assert leftovers(out) == ["t"]


def assert_refused(archive: Path, out: Path, field: str = "archive member") -> InputError:
    """Extraction raises a one-line InputError for `field` and leaves `out` empty."""
    with pytest.raises(InputError) as err:
        fetch.extract_archive(archive, out / "target")
    assert err.value.field == field
    assert "\n" not in str(err.value)
    assert leftovers(out) == []  # no target, no staging folder, nothing written beside them
    return err.value


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_dotdot_member_refuses_the_whole_archive(dirs, kind):
    src, out = dirs
    files = {"ok.txt": b"fine", "../evil": b"pwned"}
    archive = (make_zip(src / "evil.zip", files) if kind == "zip"
               else make_tar(src / "evil.tar.gz", [tar_file(n, p) for n, p in files.items()]))
    err = assert_refused(archive, out)
    assert "../evil" in err.problem
    assert not (out.parent / "evil").exists()


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_absolute_member_is_refused(dirs, kind, tmp_path):
    src, out = dirs
    victim = tmp_path / "victim.txt"
    files = {"ok.txt": b"fine", str(victim): b"pwned"}
    archive = (make_zip(src / "abs.zip", files) if kind == "zip"
               else make_tar(src / "abs.tar", [tar_file(n, p) for n, p in files.items()]))
    assert "absolute" in assert_refused(archive, out).problem
    assert not victim.exists()


def test_dotdot_that_stays_inside_is_allowed(dirs):
    src, out = dirs
    archive = make_tar(src / "ok.tar", [tar_file("a/x.txt", b"x"), tar_file("a/../b.txt", b"inside")])
    assert fetch.extract_archive(archive, out / "t") == [out / "t" / "a" / "x.txt", out / "t" / "b.txt"]
    assert (out / "t" / "b.txt").read_bytes() == b"inside"


@pytest.mark.parametrize(("kind", "linkname"), [(tarfile.SYMTYPE, "../../outside"), (tarfile.SYMTYPE, "/etc/passwd"),
                                                (tarfile.LNKTYPE, "../outside")])
def test_link_pointing_outside_is_refused(dirs, kind, linkname):
    src, out = dirs
    archive = make_tar(src / "link.tar.gz", [tar_file("ok.txt", b"fine"), tar_special("sub/ln", kind, linkname)])
    assert "points outside" in assert_refused(archive, out).problem


def test_symlink_chain_escape_is_refused(dirs):
    src, out = dirs
    # each link looks harmless on its own: q -> '.', p -> 'q/..' (which really is the target's parent)
    archive = make_tar(src / "chain.tar", [tar_special("q", tarfile.SYMTYPE, "."),
                                           tar_special("p", tarfile.SYMTYPE, "q/.."),
                                           tar_file("p/evil.txt", b"pwned")])
    assert_refused(archive, out)
    assert not (out / "evil.txt").exists()
    assert not (out.parent / "evil.txt").exists()


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_device_and_fifo_members_are_refused(dirs, kind):
    src, out = dirs
    archive = make_tar(src / "dev.tar", [tar_file("ok.txt", b"fine"), tar_special("dev", kind)])
    assert "device" in assert_refused(archive, out).problem


def test_corrupt_archive_is_an_input_error(dirs):
    src, out = dirs
    archive = src / "broken.tar.gz"
    archive.write_bytes(DATA[:5000])
    assert_refused(archive, out, field="archive")


def test_unknown_archive_type_is_an_input_error(dirs):
    src, out = dirs
    archive = src / "data.rar"
    archive.write_bytes(b"x")
    assert "unknown archive type" in assert_refused(archive, out, field="archive").problem


BOMB = bytes(1 << 20)  # 1 MiB of zeros: a few kB compressed


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_archive_expanding_beyond_the_cap_is_refused_and_leaves_nothing(dirs, kind):
    src, out = dirs
    archive = src / f"bomb.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("ok.txt", b"fine")
            zf.writestr("zeros.bin", BOMB)
    else:
        make_tar(archive, [tar_file("ok.txt", b"fine"), tar_file("zeros.bin", BOMB)])
    assert archive.stat().st_size < 10_000
    with pytest.raises(InputError) as err:
        fetch.extract_archive(archive, out / "target", Limits(max_extracted_bytes=500_000))
    assert err.value.field == "download.max_extracted_bytes" and "500000" in err.value.problem
    assert leftovers(out) == []
    assert fetch.extract_archive(archive, out / "target", Limits(max_extracted_bytes=2 << 20))  # a cap it fits


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_archive_with_too_many_members_is_refused_and_leaves_nothing(dirs, kind):
    src, out = dirs
    files = {f"f{i}.txt": b"x" for i in range(50)}
    archive = (make_zip(src / "many.zip", files) if kind == "zip"
               else make_tar(src / "many.tar", [tar_file(n, p) for n, p in files.items()]))
    with pytest.raises(InputError) as err:
        fetch.extract_archive(archive, out / "target", Limits(max_members=10))
    assert err.value.field == "download.max_members"
    assert leftovers(out) == []


def test_failure_midway_through_extraction_leaves_nothing(dirs):
    src, out = dirs
    archive = src / "crc.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.txt", b"first member, extracted before the failure")
        zf.writestr("b.txt", b"B" * 1000)
    payload = archive.read_bytes()
    archive.write_bytes(payload.replace(b"B" * 1000, b"C" + b"B" * 999))  # b.txt fails its CRC check
    assert "CRC" in assert_refused(archive, out, field="archive").problem


def test_staging_folder_left_by_a_killed_extraction_is_removed(dirs):
    src, out = dirs
    stale = temp_sibling(out / "t", folder=True)  # as a SIGKILL during extraction leaves it
    (stale / "partial.bin").write_bytes(DATA)
    fetch.extract_archive(make_zip(src / "a.zip", {"new.txt": b"new"}), out / "t")
    assert leftovers(out) == ["t"]


@pytest.mark.parametrize("member", ["../../outside.h5ad", "/etc/passwd", "data/../../../outside.h5ad"])
def test_path_in_archive_must_stay_inside_the_archive(dirs, member):
    src, out = dirs
    (src.parent / "outside.h5ad").write_bytes(b"not in the archive")
    spec = {"source": str(make_zip(src / "a.zip", GOOD_FILES)), "path_in_archive": member}
    with pytest.raises(InputError) as err:
        datasets.local_file("toy", spec, out / "dl", Limits(), "config")
    assert err.value.file == "config" and err.value.field == "datasets.toy.path_in_archive"
    assert "outside the archive" in err.value.problem and "\n" not in str(err.value)
    assert leftovers(out) == []  # refused before anything was extracted
