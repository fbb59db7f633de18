"""The lessmore_ssl_pretrain bundle end to end through ``monai.bundle``: tiny CPU runs of SwAV (and MoCo, SparK),
export per method, resume after a kill, handlers / optimiser / network changed from JSON alone, warnings for
settings of another method, and the bad-input paths. Tiny settings: 64 px input, batch 4, 8 slices."""

from __future__ import annotations

import json
import logging
import math
import warnings
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_metadata

from tests.conftest import REPO_ROOT, shared_data_path

BUNDLE = REPO_ROOT / "bundles" / "lessmore_ssl_pretrain"
CONFIGS = BUNDLE / "configs"
SCHEMA = REPO_ROOT / "bundles" / "schemas" / "meta_schema_20220324.json"
FILES = {
    "swav": [str(CONFIGS / "train.json")],
    "moco": [str(CONFIGS / "train.json"), str(CONFIGS / "train_moco.json")],
    "spark": [str(CONFIGS / "train.json"), str(CONFIGS / "train_spark.json")],
}
# per-method tiny settings: small crops, no warm-up
TINY = {
    "swav": {"crop_sizes": [32, 16], "num_crops": [2, 2], "freeze_prototypes_niters": 1, "warmup_epochs": 0},
    "moco": {"crop_size": 32, "queue_length": 8, "base_lr": 0.03},
    "spark": {"decoder_width": 32, "base_lr": 0.001},
}


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    from monai_lessmore.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root, n_volumes=2, slices=(30, 40), size=64)
    return root


def _overrides(method: str, dataset_dir, out: Path, **extra) -> dict:
    kw = dict(
        dataset_dir=str(dataset_dir), output_dir=str(out), export_path=str(out / "model.pt"), batch_size=4,
        input_size=64, max_slices=8, num_workers=0, progress_bar=False, tensorboard=False, reduction_method="none",
        reduction_cache_dir=str(out / "cache"), max_epochs=1, log_every=100,
    )
    kw.update(TINY[method])
    kw.update(extra)
    return kw


def run_bundle(method: str, dataset_dir, out: Path, **extra):
    """Run ``training`` in-process as ``monai.bundle run`` does; return the trainer."""
    wf = ConfigWorkflow(config_file=FILES[method], run_id="training", logging_file=False, workflow_type=None,
                        **_overrides(method, dataset_dir, out, **extra))
    wf.initialize()
    wf.run()
    return wf.parser.get_parsed_content("trainer")


def _saved_epoch(ckpt) -> int:
    t = ckpt["trainer"]  # ignite's Engine.state_dict: iteration and epoch_length
    return int(t["iteration"]) // int(t["epoch_length"])


def raises_in_chain(pattern: str, fn, *args, **kwargs) -> BaseException:
    """Call ``fn``; assert it raises and that ``pattern`` is in the message of the exception or of one it wraps
    (MONAI's config parser wraps the original error in ``RuntimeError("Failed to evaluate ...")``)."""
    import re

    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        chain, e = [], exc
        while e is not None and e not in chain:
            chain.append(e)
            e = e.__cause__ or e.__context__
        assert any(re.search(pattern, str(x), re.S) for x in chain), [str(x)[:300] for x in chain]
        return exc
    raise AssertionError(f"no exception raised; expected {pattern!r}")


def _history(out: Path) -> list[float]:
    return json.loads((out / "loss_history.json").read_text())["epoch_loss"]


def test_metadata_valid_offline():
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))


def test_verify_net_in_out_on_exported_encoder():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="encoder_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "train.json"), device="cpu", n=1)


def test_swav_end_to_end_and_export(phantom_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="monai_lessmore.ssl.handlers"):
        trainer = run_bundle("swav", phantom_dir, tmp_path, max_epochs=1)
    assert any(r.getMessage().endswith(f"exported to {tmp_path / 'model.pt'}") for r in caplog.records)
    assert trainer.state.epoch == 1 and trainer.state.iteration == 2
    assert math.isfinite(_history(tmp_path)[0])
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["method"] == "swav" and _saved_epoch(ckpt) == 1
    sd = torch.load(tmp_path / "model.pt", weights_only=True)  # plain state dict, as MONAI's load() reads it
    from monai_lessmore.networks.resnet import ResNet50

    res = ResNet50().load_state_dict(sd, strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys
    # the classification bundle's network consumes it as its pretrained encoder
    from monai_lessmore.classification.network import ResNet50Classifier

    clf = dict(ResNet50Classifier(num_classes=2, pretrained_encoder=str(tmp_path / "model.pt")).named_parameters())
    assert torch.equal(clf["layer1.0.conv1.weight"].detach(), sd["layer1.0.conv1.weight"])


@pytest.mark.parametrize("method", ["moco", "spark"])
def test_moco_and_spark_end_to_end(method, phantom_dir, tmp_path):
    trainer = run_bundle(method, phantom_dir, tmp_path, max_epochs=1)
    assert trainer.state.iteration == 2 and math.isfinite(_history(tmp_path)[0])
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["method"] == method and ("queue" in ckpt) == (method == "moco")
    from monai_lessmore.networks.resnet import ResNet50

    res = ResNet50().load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys


def test_export_path_per_method():
    """SwAV exports to models/model.pt (model-zoo convention), MoCo and SparK beside it: no run overwrites another
    method's encoder."""
    from monai.bundle import ConfigParser

    for method, name in [("swav", "model.pt"), ("moco", "model_moco.pt"), ("spark", "model_spark.pt")]:
        parser = ConfigParser()
        parser.read_config(FILES[method])
        assert parser.get_parsed_content("export_path") == "bundles/lessmore_ssl_pretrain/models/" + name


def test_duplicate_volumes_switch():
    """One override turns the dataset-level duplicate filter on; the default keeps every volume."""
    from monai.bundle import ConfigParser

    for override, expected in [(None, None), ({}, {}), ("runs/dup/duplicates.csv", "runs/dup/duplicates.csv")]:
        parser = ConfigParser()
        parser.read_config(FILES["swav"])
        if override is not None:
            parser["reduction_duplicates"] = override
        assert parser.get_parsed_content("reduction").duplicates == expected


@pytest.mark.parametrize(
    "method, overrides, expected",
    [
        ("moco", {"crop_sizes": [32, 16], "num_crops": [2, 2]}, ["crop_sizes=[32, 16] is ignored by moco: MoCo makes two crops of one size: set crop_size",
                                                                  "num_crops=[2, 2] is ignored by moco"]),
        ("moco", {"input_size": 64}, ["moco crops of [224] px are larger than the 64 px input"]),
        ("swav", {"crop_size": 32}, ["crop_size=32 is ignored by swav: SwAV's crops are a list"]),
        ("spark", {"key_momentum": 0.99}, ["key_momentum=0.99 is ignored by spark: it is a moco setting"]),
        ("spark", {}, []),
        ("moco", {"crop_size": 32, "input_size": 64}, []),
    ],
)
def test_settings_of_another_method_warn(method, overrides, expected):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(FILES[method])
    parser.update(overrides)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser.get_parsed_content("initialize")
    got = [str(w.message) for w in caught if "ignored by" in str(w.message) or "larger than the" in str(w.message)]
    assert len(got) == len(expected), got
    for message, start in zip(got, expected):
        assert message.startswith(start), (message, start)


def test_handler_added_by_config_override_fires(phantom_dir, tmp_path, capsys):
    """A MONAI StatsHandler with another iteration_log, added through an override only."""
    extra = [{
        "_target_": "monai.handlers.StatsHandler", "name": "lessmore.test_extra_handler", "tag_name": "extra_loss",
        "iteration_log": True, "epoch_log": False, "output_transform": "$lambda output: output['loss']",
    }]
    trainer = run_bundle("swav", phantom_dir, tmp_path, max_epochs=1, extra_handlers=extra)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "extra_loss: " in ln]
    assert len(lines) == trainer.state.iteration == 2, lines  # every iteration, where the bundle's logs every 100


@pytest.mark.slow
def test_probe_switch_scores_the_encoder_during_pretraining(phantom_dir, tmp_path):
    """probe=true alone (plus where the labelled set is) turns the downstream probe on: scores and best_probe.pt."""
    from tests.ssl.test_probe import _class_folders

    labelled = _class_folders(tmp_path / "labelled")
    run_bundle("swav", phantom_dir, tmp_path / "run", max_epochs=2, probe=True, probe_dataset="folder",
               probe_data_root=str(labelled), probe_interval=1, probe_items=12, probe_image_size=32)
    scores = json.loads((tmp_path / "run" / "probe_metrics.json").read_text())
    assert [r["epoch"] for r in scores["probes"]] == [1, 2], scores
    assert (tmp_path / "run" / "best_probe.pt").is_file()
    run_bundle("swav", phantom_dir, tmp_path / "off", max_epochs=1, probe_data_root=str(labelled))
    assert not (tmp_path / "off" / "probe_metrics.json").exists()  # off by default


def test_optimizer_swapped_from_json(phantom_dir, tmp_path):
    sgd = {"_target_": "torch.optim.SGD", "params": "$@network.parameters()", "lr": 0.01, "momentum": 0.5}
    trainer = run_bundle("swav", phantom_dir, tmp_path, max_epochs=1, optimizer=sgd)
    assert type(trainer.optimizer) is torch.optim.SGD
    opt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["optimizer"]
    assert opt["param_groups"][0]["momentum"] == 0.5 and opt["state"]  # SGD state, after the LR schedule's steps


def test_network_swapped_from_json(phantom_dir, tmp_path):
    net = {"_target_": "monai_lessmore.ssl.swav.SwAVModel", "hidden_dim": 64, "output_dim": 32, "num_prototypes": 16}
    trainer = run_bundle("swav", phantom_dir, tmp_path, max_epochs=1, network_def=net)
    assert trainer.network.prototypes.weight.shape == (16, 32)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]["prototypes.layers.weight"].shape == (16, 32)


def test_export_loads_into_torchvision(phantom_dir, tmp_path):
    from monai_lessmore.utils.torchvision_compat import import_torchvision

    try:
        tv = import_torchvision()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"torchvision does not import here ({type(exc).__name__}: {exc}); ResNet50 keys checked above")
    from monai_lessmore.ssl.export import encoder_state_dict
    from monai_lessmore.ssl.swav import SwAVModel

    res = tv.models.resnet50().load_state_dict(encoder_state_dict(SwAVModel()), strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys


def test_epoch_length_sets_the_iterations_and_the_schedule(phantom_dir, tmp_path):
    """epoch_length 3 on a 2-batch dataset: 3 iterations per epoch, the loader carrying on across epochs, and an LR
    schedule of max_epochs x 3 iterations (its last value reached on the last iteration)."""
    wf = ConfigWorkflow(config_file=FILES["swav"], run_id="training", logging_file=False, workflow_type=None,
                        **_overrides("swav", phantom_dir, tmp_path, max_epochs=2, epoch_length=3, warmup_epochs=1))
    wf.initialize()
    assert len(wf.parser.get_parsed_content("train_loader")) == 2
    schedule = wf.parser.get_parsed_content("lr_schedule")
    wf.run()
    trainer = wf.parser.get_parsed_content("trainer")
    assert trainer.state.epoch_length == 3 and trainer.state.iteration == 6 and len(schedule) == 6
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(schedule[-1])
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["trainer"]["epoch_length"] == 3


def test_a_resnet18_backbone_pretrains_and_exports_torchvisions_resnet18(phantom_dir, tmp_path):
    from monai_lessmore.classification.network import EncoderLoadError, ResNet50Classifier
    from monai_lessmore.utils.torchvision_compat import import_torchvision

    trainer = run_bundle("swav", phantom_dir, tmp_path, backbone="resnet18")
    assert trainer.network.projection_head.layers[0].in_features == 512
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    res = import_torchvision("models").resnet18().load_state_dict(state, strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys
    assert ResNet50Classifier(backbone="resnet18", pretrained_encoder=str(tmp_path / "model.pt")).load_report
    with pytest.raises(EncoderLoadError, match="does not fit torchvision's ResNet50"):
        ResNet50Classifier(pretrained_encoder=str(tmp_path / "model.pt"))
    moco = run_bundle("moco", phantom_dir, tmp_path / "moco", backbone="resnet18")
    assert moco.network.backbone.arch == moco.network.backbone_momentum.arch == "resnet18"
    raises_in_chain(r"backbone='resnet18': SparK's decoder is built on ResNet50's stage widths", run_bundle,
                    "spark", phantom_dir, tmp_path / "spark", backbone="resnet18")


def test_run_entry_point_and_cli(phantom_dir, tmp_path):
    """``python -m monai.bundle run`` (default run_id "run") from the command line."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", FILES["swav"][0]]
    for k, v in _overrides("swav", phantom_dir, tmp_path).items():
        cmd += [f"--{k}", json.dumps(v) if isinstance(v, (list, bool)) or v is None else str(v)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "model.pt").is_file()


def _real_ct_dir(tmp_path) -> Path:
    ct = shared_data_path("ct", "nifti", "totalseg_example_ct_sm.nii.gz")
    data = tmp_path / "ct"
    data.mkdir()
    (data / ct.name).symlink_to(ct)
    return data


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize(
    "method, settings",
    [
        ("swav", {"freeze_prototypes_niters": 0, "base_lr": 0.6}),
        ("spark", {"base_lr": 0.01, "warmup_epochs": 0}),
    ],
)
def test_loss_goes_down_on_real_ct(method, settings, tmp_path):
    """6 epochs on 8 real CT slices (HASH reduction off), fixed seed: the last epoch's mean loss is below the first's."""
    run_bundle(method, _real_ct_dir(tmp_path), tmp_path / "out", max_epochs=6, **settings)
    h = _history(tmp_path / "out")
    assert h[-1] < h[0], h


@pytest.mark.slow
@pytest.mark.realdata
def test_moco_loss_goes_down_on_real_ct(tmp_path):
    """MoCo v2 on 16 real CT slices, 64 px crops, batch 8, queue 8, fixed seed. MoCo initialises its queue with
    random unit vectors (easy negatives), so epoch 1's loss is not comparable; once the queue holds only real keys
    (from epoch 2), the loss goes down. (At 32 px crops and batch 4 the 1x1 deepest feature map makes train-mode BN
    normalise across 4 samples only, and MoCo does not learn in a few steps: use at least these settings.)"""
    run_bundle("moco", _real_ct_dir(tmp_path), tmp_path / "out", max_epochs=6, input_size=96, crop_size=64,
               base_lr=0.03, key_momentum=0.99, queue_length=8, max_slices=16, batch_size=8)
    h = _history(tmp_path / "out")
    assert h[-1] < h[1], h


@pytest.mark.slow
def test_kill_and_resume_continues_from_saved_epoch(phantom_dir, tmp_path):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", FILES["swav"][0]]
    for k, v in _overrides("swav", phantom_dir, tmp_path, max_epochs=100, save_interval=1).items():
        cmd += [f"--{k}", json.dumps(v) if isinstance(v, (list, bool)) or v is None else str(v)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    ckpt = tmp_path / "checkpoint.pt"
    try:
        deadline = time.time() + 240
        while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert ckpt.exists(), proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "no checkpoint in time"
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group this test started
        proc.wait()
    saved = _saved_epoch(torch.load(ckpt, weights_only=True))
    assert saved >= 1
    assert len(_history(tmp_path)) <= saved  # never an epoch beyond the checkpoint's
    trainer = run_bundle("swav", phantom_dir, tmp_path, max_epochs=saved + 1, save_interval=1)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    assert trainer.state.resumed_epoch == saved
    assert trainer.state.epoch == saved + 1 and trainer.state.iteration == 2 * (saved + 1)
    assert len(_history(tmp_path)) == saved + 1


def test_resume_refuses_other_method(phantom_dir, tmp_path):
    run_bundle("swav", phantom_dir, tmp_path, max_epochs=1)
    raises_in_chain("written by method 'swav', but this run trains 'moco'", run_bundle, "moco", phantom_dir, tmp_path, max_epochs=2)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(phantom_dir, tmp_path):
    run_bundle("swav", phantom_dir, tmp_path, max_epochs=1)
    before = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    raises_in_chain("loss became nan.*last good checkpoint is", run_bundle, "swav", phantom_dir, tmp_path, max_epochs=3,
                    base_lr="$float('nan')")
    after = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert _saved_epoch(after) == 1
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert all(torch.isfinite(v).all() for v in after["model"].values() if v.is_floating_point())


def test_batch_larger_than_dataset(phantom_dir, tmp_path):
    raises_in_chain("batch_size 16 is larger than the 8 slices", run_bundle, "swav", phantom_dir, tmp_path, batch_size=16)


def test_no_readable_volumes(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    raises_in_chain("no readable volumes", run_bundle, "swav", empty, tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["swav", "moco"])
def test_two_process_gloo_run(method, phantom_dir, tmp_path):
    """``torchrun --nproc_per_node 2 -m monai.bundle run training`` with multi_gpu_train.json, on CPU (gloo):
    distributed Sinkhorn (SwAV), keys gathered from both ranks into the queue (MoCo)."""
    from tests.ssl.test_distributed import _free_port

    files = "[" + ",".join(f"'{f}'" for f in FILES[method] + [str(CONFIGS / "multi_gpu_train.json")]) + "]"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "monai.bundle", "run", "training", "--config_file", files]
    extra = {"queue_start_epoch": 0} if method == "swav" else {}
    kw = _overrides(method, phantom_dir, tmp_path, max_epochs=2, batch_size=2, queue_length=8, **extra)
    for k, v in kw.items():
        cmd += [f"--{k}", json.dumps(v) if isinstance(v, (list, bool)) or v is None else str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert len(_history(tmp_path)) == 2
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert _saved_epoch(ckpt) == 2 and ckpt["trainer"]["epoch_length"] == 2  # 8 slices / 2 ranks / batch 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped
    if method == "moco":  # 2 iterations x 2 ranks x batch 2 keys gathered per epoch, 8 slots
        assert int(ckpt["queue"]["num_filled"]) == 8
    assert (tmp_path / "model.pt").is_file()


@pytest.mark.parametrize("method, expected", [("swav", True), ("moco", False)])
def test_multi_gpu_config_turns_sync_bn_off_for_moco(method, expected, monkeypatch):
    """multi_gpu_train.json: SyncBN on GPUs, except for MoCo (its shuffling BN needs per-GPU statistics)."""
    from monai.bundle import ConfigParser

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the expression is only read, nothing runs on CUDA
    parser = ConfigParser()
    parser.read_config([*FILES[method], str(CONFIGS / "multi_gpu_train.json")])
    assert parser.get_parsed_content("sync_bn") is expected
