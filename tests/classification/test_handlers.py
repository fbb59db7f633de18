"""Freeze-then-unfreeze (section 2.3: only the linear layer trains for the first ten epochs) and the CSV writer."""

from __future__ import annotations

import csv

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer

from monai_lessmore.classification.handlers import FreezeThenUnfreeze, PredictionCSVWriter
from monai_lessmore.classification.network import ResNet50Classifier


def _snapshot(net):
    return {k: v.detach().clone() for k, v in net.named_parameters()}


@pytest.mark.slow
def test_encoder_frozen_in_phase_one_and_trained_after():
    torch.manual_seed(0)
    net = ResNet50Classifier(num_classes=2)
    data = [{"image": torch.rand(4, 3, 32, 32), "label": torch.tensor([0, 1, 0, 1])}]
    snapshots = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=3, train_data_loader=data, network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=5e-4),
        loss_function=torch.nn.CrossEntropyLoss(), train_handlers=[FreezeThenUnfreeze(freeze_epochs=2)],
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: snapshots.append(_snapshot(net)))
    before = _snapshot(net)
    trainer.run()
    encoder = [k for k in before if not k.startswith("fc.")]
    assert len(encoder) == 159
    for epoch in (0, 1):  # phase one: every encoder weight unchanged (even with weight decay), the head trained
        assert all(torch.equal(before[k], snapshots[epoch][k]) for k in encoder)
        assert not torch.equal(before["fc.weight"], snapshots[epoch]["fc.weight"])
    changed = [k for k in encoder if not torch.equal(snapshots[1][k], snapshots[2][k])]
    assert len(changed) == len(encoder), "phase two must train the whole network"
    assert all(p.requires_grad for p in net.parameters())


def test_state_dict_round_trip_and_plain_engine():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    handler = FreezeThenUnfreeze(freeze_epochs=1, trainable=["1."], network=net)
    with pytest.raises(ValueError, match=r"no parameter name starts with \('1\.',\)"):
        handler.set_frozen(True)
    handler = FreezeThenUnfreeze(freeze_epochs=1, trainable=["0.bias"], network=net)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    assert handler.frozen and not net[0].weight.requires_grad and net[0].bias.requires_grad
    other = FreezeThenUnfreeze(freeze_epochs=7)
    other.load_state_dict(handler.state_dict())
    assert other.state_dict() == {"freeze_epochs": 1, "trainable": ["0.bias"], "frozen": True}


@pytest.mark.parametrize("kwargs, match", [
    ({"freeze_epochs": -1}, "freeze_epochs must be an int >= 0, got -1"),
    ({"freeze_epochs": 2.5}, "freeze_epochs must be an int >= 0, got 2.5"),
    ({"trainable": "fc"}, "trainable must be a non-empty list"),
    ({"trainable": []}, "trainable must be a non-empty list"),
])
def test_arguments_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FreezeThenUnfreeze(**kwargs)


def test_prediction_csv_writer(tmp_path):
    writer = PredictionCSVWriter(str(tmp_path / "out" / "p.csv"), ["neg", "pos"])
    batches = [{"id": ["a", "b"], "label": torch.tensor([1, 0])}]
    engine = Engine(lambda e, b: {"pred": torch.tensor([[0.0, 2.0], [1.0, 0.0]])})
    writer.attach(engine)
    engine.run(batches)
    rows = list(csv.reader(open(tmp_path / "out" / "p.csv")))
    assert rows[0] == ["id", "prob_neg", "prob_pos", "pred", "label"]
    assert rows[1][0] == "a" and rows[1][3:] == ["pos", "pos"] and rows[2][3:] == ["neg", "neg"]
    assert abs(float(rows[1][2]) - torch.sigmoid(torch.tensor(2.0)).item()) < 1e-6
    with pytest.raises(ValueError, match="class_names must list the classes"):
        PredictionCSVWriter("x.csv", [])
