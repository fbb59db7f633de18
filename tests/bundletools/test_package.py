"""package-bundle -> local HTTP server -> monai.bundle.download / fetch_bundle -> load + inference; bad downloads."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import monai.bundle
import monai.bundle.scripts
from monai.bundle import ConfigParser
from monai_lessmore.bundletools.fetch import BundleDownloadError, fetch_bundle
from monai_lessmore.bundletools.package import package_bundle
from tests.conftest import REPO_ROOT
from tests.bundletools.conftest import BUNDLE, BUNDLE_NAME, copy_bundle


@pytest.fixture(scope="module")
def packaged(converted_bundle, tmp_path_factory):
    (converted_bundle / "models" / "swav_petct_hash6.ckpt").write_bytes(b"source checkpoint, never packaged")
    (converted_bundle / "eval").mkdir(exist_ok=True)
    (converted_bundle / "eval" / "features.npy").write_bytes(b"run output, never packaged")
    try:
        return package_bundle(converted_bundle, tmp_path_factory.mktemp("dist") / f"{BUNDLE_NAME}_v0.1.0.zip")
    finally:
        (converted_bundle / "models" / "swav_petct_hash6.ckpt").unlink()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files; ``/truncated/<file>`` announces the full length but sends half and hangs up."""

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        if self.path.startswith("/truncated/"):
            data = (Path(self.directory) / self.path[len("/truncated/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def server(packaged):
    """An HTTP server on 127.0.0.1 (ephemeral port) serving the zip's folder; yields the base URL."""
    root = packaged.zip_path.parent
    corrupted = bytearray(packaged.zip_path.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF  # one flipped byte inside model.pt
    (root / "corrupted.zip").write_bytes(bytes(corrupted))
    (root / "half.zip").write_bytes(packaged.zip_path.read_bytes()[: packaged.zip_path.stat().st_size // 2])

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_zip_layout_and_hash(packaged):
    with zipfile.ZipFile(packaged.zip_path) as zf:
        names = zf.namelist()
    assert all(n.startswith(f"{BUNDLE_NAME}/") for n in names)
    for f in ("configs/metadata.json", "configs/inference.json", "large_files.yml", "docs/README.md", "LICENSE",
              "models/model.pt", "models/conversion.json"):
        assert f"{BUNDLE_NAME}/{f}" in names, f
    assert not any(n.endswith(".ckpt") or "/eval/" in n for n in names)
    assert packaged.skipped == ["models/swav_petct_hash6.ckpt"]
    digest = hashlib.sha256(packaged.zip_path.read_bytes()).hexdigest()
    assert packaged.hash_val == digest
    assert packaged.hash_path.read_text() == f"{digest}  {packaged.zip_path.name}\n"  # sha256sum -c format


def test_package_is_reproducible_and_refuses_overwrite(tmp_path):
    bundle = copy_bundle(tmp_path)
    first = package_bundle(bundle, tmp_path / "a.zip", require_weights=False, hash_type="md5")
    second = package_bundle(bundle, tmp_path / "b.zip", require_weights=False, hash_type="md5")
    assert first.hash_val == second.hash_val and first.hash_path.name == "a.zip.md5"
    with pytest.raises(FileExistsError, match="a.zip already exists; refusing to overwrite it"):
        package_bundle(bundle, tmp_path / "a.zip", require_weights=False)
    with pytest.raises(ValueError, match=r"model\.pt is absent.*import-checkpoint"):
        package_bundle(bundle, tmp_path / "c.zip")
    torch.save({"net": torch.nn.Linear(1, 1)}, bundle / "models" / "model.pt")
    with pytest.raises(ValueError, match=r"does not load with torch.load\(weights_only=True\)"):
        package_bundle(bundle, tmp_path / "c.zip")
    with pytest.raises(ValueError, match="hash_type must be one of"):
        package_bundle(bundle, tmp_path / "c.zip", require_weights=False, hash_type="crc32")
    with pytest.raises(ValueError, match="is not a MONAI bundle"):
        package_bundle(tmp_path, tmp_path / "c.zip")


def _features_of_first_slice(bundle: Path, net: torch.nn.Module, files: list[str]) -> np.ndarray:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), "input_files": files, "image_size": 64})
    image = parser.get_parsed_content("dataset")[0]["image"]
    with torch.no_grad():
        return net.eval()(image[None]).numpy()[0]


def test_download_load_and_infer_round_trip(server, packaged, encoder_state, slice_files, tmp_path):
    """Done-when: monai.bundle.download(url=...) from a local server, then load and `run inferring` on the copy."""
    root = tmp_path / "downloaded"
    monai.bundle.download(name=BUNDLE_NAME, url=f"{server}/{packaged.zip_path.name}", bundle_dir=str(root),
                          progress=False)
    bundle = root / BUNDLE_NAME
    net = monai.bundle.load(name=BUNDLE_NAME, bundle_dir=str(root), workflow_type="inference", device="cpu")
    for k, v in encoder_state.items():
        assert torch.equal(net.state_dict()[k], v), k
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", str(bundle / "configs" / "inference.json"),
           "--bundle_root", str(bundle), "--input_files", repr(slice_files), "--image_size", "64", "--output_dir", str(out),
           "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    features = np.load(out / "features.npy")
    assert features.shape == (3, 2048) and np.isfinite(features).all()
    assert (out / "features_ids.txt").read_text().split() == slice_files
    expected = _features_of_first_slice(bundle, net, slice_files)  # batch of 1 vs 3: float rounding only
    np.testing.assert_allclose(features[0], expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())
    rows = (out / "features.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("id,f0,f1") and rows[1].startswith(slice_files[0])


def test_github_release_download(server, packaged, monkeypatch, tmp_path):
    """The default zip name <name>_v<version>.zip is what `--source github --repo owner/repo/tag` fetches."""
    asked = []

    def release_url(repo_owner, repo_name, tag_name, filename):
        asked.append((repo_owner, repo_name, tag_name, filename))
        return f"{server}/{filename}"

    monkeypatch.setattr(monai.bundle.scripts, "_get_git_release_url", release_url)
    monai.bundle.download(name=BUNDLE_NAME, version="0.1.0", source="github", repo="owner/repo/v0.1.0",
                          bundle_dir=str(tmp_path), progress=False)
    assert asked == [("owner", "repo", "v0.1.0", packaged.zip_path.name)]
    assert (tmp_path / BUNDLE_NAME / "models" / "model.pt").is_file()


def test_fetch_bundle_verifies_the_hash(server, packaged, encoder_state, tmp_path):
    url = f"{server}/{packaged.zip_path.name}"
    target = fetch_bundle(url, name=BUNDLE_NAME, bundle_dir=tmp_path, hash_val=packaged.hash_val)
    assert target == tmp_path / BUNDLE_NAME
    assert torch.equal(torch.load(target / "models" / "model.pt", weights_only=True)["conv1.weight"],
                       encoder_state["conv1.weight"])
    with pytest.raises(FileExistsError, match="already exists; refusing to overwrite it"):
        fetch_bundle(url, name=BUNDLE_NAME, bundle_dir=tmp_path, hash_val=packaged.hash_val)
    fetch_bundle(url, name=BUNDLE_NAME, bundle_dir=tmp_path, hash_val=packaged.hash_val, force=True)


def test_corrupted_download_is_rejected(server, packaged, tmp_path):
    with pytest.raises(BundleDownloadError, match=rf"hash mismatch for .*corrupted\.zip: expected sha256 {packaged.hash_val}, got [0-9a-f]{{64}}"):
        fetch_bundle(f"{server}/corrupted.zip", name=BUNDLE_NAME, bundle_dir=tmp_path, hash_val=packaged.hash_val)
    assert list(tmp_path.iterdir()) == []  # nothing extracted, no temporary left behind


def test_truncated_download_is_rejected(server, packaged, tmp_path):
    with pytest.raises(BundleDownloadError, match="was truncated"):
        fetch_bundle(f"{server}/truncated/{packaged.zip_path.name}", name=BUNDLE_NAME, bundle_dir=tmp_path,
                     hash_val=packaged.hash_val)
    half = packaged.zip_path.parent / "half.zip"  # a server that sends a short file with a matching length
    with pytest.raises(BundleDownloadError, match="hash mismatch"):
        fetch_bundle(f"{server}/half.zip", name=BUNDLE_NAME, bundle_dir=tmp_path, hash_val=packaged.hash_val)
    half_hash = hashlib.sha256(half.read_bytes()).hexdigest()
    with pytest.raises(BundleDownloadError, match="is not a zip archive"):
        fetch_bundle(f"{server}/half.zip", name=BUNDLE_NAME, bundle_dir=tmp_path, hash_val=half_hash)
    with pytest.raises(BundleDownloadError, match="could not download"):
        fetch_bundle(f"{server}/missing.zip", name=BUNDLE_NAME, bundle_dir=tmp_path, hash_val=half_hash)
    assert list(tmp_path.iterdir()) == []


def test_wrong_layout_is_rejected(server, packaged, tmp_path):
    with pytest.raises(BundleDownloadError, match=r"exactly one top-level folder 'other'/.*\['lessmore_hash6_resnet50'\]"):
        fetch_bundle(f"{server}/{packaged.zip_path.name}", name="other", bundle_dir=tmp_path, hash_val=packaged.hash_val)
    with pytest.raises(ValueError, match="hex sha256 digest"):
        fetch_bundle("http://127.0.0.1:1/x.zip", name=BUNDLE_NAME, bundle_dir=tmp_path, hash_val="not-a-hash")


def test_repository_bundle_has_no_weights():
    assert sorted(p.name for p in (BUNDLE / "models").iterdir()) == [".gitkeep"]
