"""``python -m camkit.zoo.train`` writes where it is told, never into the package by default."""

from __future__ import annotations

import hashlib

import pytest
import torch

from camkit.zoo import ShapesCNN
from camkit.zoo.train import WEIGHTS, main


def _digest() -> str:
    return hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()


def test_default_output_is_the_working_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # Training itself is what `python -m camkit.zoo.train` runs for minutes; here only where
    # its result goes matters.
    monkeypatch.setattr("camkit.zoo.train.train", lambda count, epochs: (ShapesCNN(), 0.5))
    shipped = _digest()
    main(["--threads", "1"])
    assert _digest() == shipped
    state = torch.load(tmp_path / "shapes_cnn.pt", weights_only=True)
    assert state.keys() == ShapesCNN().state_dict().keys()
    assert "wrote shapes_cnn.pt" in capsys.readouterr().out


def test_into_package_and_output_exclude_each_other(tmp_path):
    with pytest.raises(SystemExit):
        main(["--into-package", "--output", str(tmp_path / "w.pt")])
