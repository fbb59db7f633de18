"""fetch-bundle against misbehaving servers on 127.0.0.1: a stall, a short body, a large bundle, a killed run."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading

import pytest

from monai_lessmore.bundletools.fetch import BundleDownloadError, fetch_bundle
from monai_lessmore.cli.main import main

STALL_S = 20  # the server gives up after this long: a client without a timeout would hang this long, no longer


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """``/stall``: announces 10000 bytes, sends 100, then goes silent; ``/short``: sends 100 and hangs up;
    ``/big``: 2 MiB of zeros."""

    release: threading.Event

    def log_message(self, *args):
        pass

    def do_GET(self):
        size = 2 << 20 if self.path == "/big" else 10_000
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.path == "/big":
            self.wfile.write(bytes(size))
            return
        self.wfile.write(b"P" * 100)
        self.wfile.flush()
        if self.path == "/stall":
            self.release.wait(STALL_S)
        self.close_connection = True


@pytest.fixture(scope="module")
def bad_server():
    release = threading.Event()
    handler = type("Handler", (_Misbehaving,), {"release": release})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    release.set()
    httpd.shutdown()
    httpd.server_close()


def _fetch_in_thread(**kwargs):
    """Run fetch_bundle in a thread; returns the exception it raised, or fails if it is still running at the bound."""
    box = {}

    def target():
        try:
            fetch_bundle(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(STALL_S / 2)
    assert not thread.is_alive(), "fetch_bundle hung on a stalled server (no read timeout)"
    return box.get("error")


def test_stalled_server_times_out_and_leaves_nothing(bad_server, tmp_path):
    err = _fetch_in_thread(url=f"{bad_server}/stall", name="b", bundle_dir=tmp_path, hash_val="0" * 64, timeout=0.5)
    assert isinstance(err, BundleDownloadError), err
    assert "stalled: no data for 0.5 s after 100 bytes of 10000" in str(err) and "--timeout" in str(err)
    assert list(tmp_path.iterdir()) == []  # no .b.XXXX/ folder, no partial zip


def test_truncated_body_reports_the_bytes_received(bad_server, tmp_path):
    err = _fetch_in_thread(url=f"{bad_server}/short", name="b", bundle_dir=tmp_path, hash_val="0" * 64, timeout=5)
    assert isinstance(err, BundleDownloadError)
    assert "was truncated (100 of 10000 bytes received)" in str(err)
    assert list(tmp_path.iterdir()) == []


def test_large_bundle_shows_progress(bad_server, tmp_path, capsys):
    with pytest.raises(BundleDownloadError, match="hash mismatch"):
        fetch_bundle(f"{bad_server}/big", name="b", bundle_dir=tmp_path, hash_val="0" * 64, progress=True, timeout=5)
    err = capsys.readouterr().err
    assert "b.zip" in err and "2.00M" in err  # tqdm's bar with the announced size
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_a_killed_fetch_are_removed(bad_server, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".b.{int(dead.stdout)}-abc123.tmp"
    stale.mkdir()
    (stale / "b.zip").write_bytes(b"partial")
    live = tmp_path / f".b.{os.getpid()}-keep.tmp"  # a fetch of this (living) process: left alone
    live.mkdir()
    _fetch_in_thread(url=f"{bad_server}/short", name="b", bundle_dir=tmp_path, hash_val="0" * 64, timeout=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]


def test_cli_timeout_option(bad_server, tmp_path, capsys):
    args = ["fetch-bundle", f"{bad_server}/stall", "--name", "b", "--sha256", "0" * 64, "--bundle-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--timeout", "0"])
    assert exit_.value.code == 2 and "must be a positive number of seconds" in capsys.readouterr().err
    assert main([*args, "--timeout", "0.5", "--no-progress"]) == 2
    assert "stalled: no data for 0.5 s after 100 bytes" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
