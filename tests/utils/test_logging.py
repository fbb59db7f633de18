"""Console output: library notices routed away, bar-safe log lines, and a failed config item's cause shown last."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import warnings

import pytest
from monai.bundle import ConfigParser

from monai_lessmore.utils import logging as console
from tests.conftest import REPO_ROOT

TRAIN = str(REPO_ROOT / "bundles" / "lessmore_classification" / "configs" / "train.json")


def _config_failure() -> BaseException:
    from monai_lessmore.classification.data import build_data

    parser = ConfigParser({"broken": "$build_data('nope')",
                           "net": {"_target_": "torch.nn.Identity", "unexpected": "@broken"}},
                          globals={"build_data": build_data})
    try:
        parser.get_parsed_content("net")
    except BaseException as exc:  # noqa: BLE001 - the test inspects what MONAI raised
        return exc
    raise AssertionError("the config did not fail")


def test_the_cause_of_a_failed_config_item_is_printed_last(capsys):
    exc = _config_failure()
    assert str(exc).startswith("Failed to")  # MONAI's wrapper is what reaches the top
    cause = console.config_error_cause(exc)
    assert isinstance(cause, ValueError) and "dataset must be one of" in str(cause)
    console._config_error_hook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err.rstrip().splitlines()
    assert err[-1] == f"ValueError: {cause}"
    assert any(line.startswith("RuntimeError: Failed to") for line in err[:-1])  # the traceback is still there
    plain = KeyError("x")
    assert console.config_error_cause(plain) is plain


@pytest.mark.slow
def test_bundle_run_ends_with_our_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--dataset", "folder",
         "--data_root", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0
    last = proc.stderr.rstrip().splitlines()[-1]
    assert str(tmp_path / "missing") in last and not last.startswith("RuntimeError: Failed to"), proc.stderr[-2000:]


def test_library_notices_are_quiet():
    from monai.transforms import LoadImage

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    keep = Keep()
    root = logging.getLogger()
    nv = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    engine = logging.getLogger("ignite.engine.engine.SupervisedTrainer")
    old = (nv.level, engine.level, nv.propagate, engine.propagate)
    root.addHandler(keep)
    engine.setLevel(logging.INFO)
    nv.propagate = engine.propagate = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            console.quiet_library_notices()
            console.quiet_library_notices()  # idempotent: one filter
            assert len(keep.filters) == 1
            LoadImage()  # builds MONAI's nvImageCodec DICOM reader, which logs and warns without the codec
            warnings.warn("parsing config_file x.json: any ... eval() ...", UserWarning)
            engine.info("Engine run resuming from iteration 0, epoch 0 until 2 epochs")
            engine.info("Epoch[1] Complete. Time taken: 00:00:13.498")
            engine.info("Epoch: 1/2, Iter: 1/4 -- loss: 6.5438")  # a StatsHandler line through the engine's logger
            engine.warning("a real warning")
    finally:
        root.removeHandler(keep)
        nv.setLevel(old[0])
        engine.setLevel(old[1])
        nv.propagate, engine.propagate = old[2], old[3]
    messages = [r.getMessage() for r in records] + [str(w.message) for w in caught]
    assert not [m for m in messages if "nvImageCodec" in m or "parsing config_file" in m or "resuming" in m
                or "Complete. Time taken" in m], messages
    assert "a real warning" in messages and "Epoch: 1/2, Iter: 1/4 -- loss: 6.5438" in messages


def test_log_lines_do_not_garble_a_progress_bar():
    from tqdm import tqdm

    stream = io.StringIO()
    logger = logging.getLogger("lessmore_test_bar_safe")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        console.bar_safe_console(logger)
        console.bar_safe_console(logger)  # idempotent
        assert isinstance(handler.stream, console._BarSafeStream) and handler.stream.stream is sys.stderr
        handler.stream.stream = stream  # write into a buffer the bar also draws on
        with tqdm(total=3, file=stream, ncols=40, mininterval=0, ascii=True) as bar:
            bar.update(1)
            logger.info("a log line")
            bar.update(1)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    # tqdm.write clears the bar first: the log line starts a line of its own and ends it
    assert "\ra log line\n" in text or "\na log line\n" in text or text.startswith("a log line\n")
    before = text[: text.index("a log line")]
    assert before.endswith(("\r", "\n")) and "1/3" in before
