"""Overlapped snapshots: parameters and optimizer state copied while training goes on, the
optimizer step (or the next step_end) waiting for the copy, the guard against a tensor
changed in place during the copy, and the snapshot buffers kept between saves."""

from __future__ import annotations

import copy
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from stalwart.torch import Checkpointer, read_checkpoint
from stalwart.torch import overlap as overlap_mod
from stalwart.torch.strategies import LocalSaves
from tests.torch.helpers import Setup, state_equal
from tests.torch.test_checkpointer import WAIT_S, committed_steps, make

SLOW_COPY_S = 0.3
"""A copy made this slow is surely still running when training reaches the next step."""


class HeldCopy:
    """The background copy of parameters and optimizer state waits for `gate`; `entered`
    is set when it is waiting, so whatever the test does meanwhile is inside the window."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, slow_s: float = 0.0) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.copies = 0
        real = overlap_mod.copy_into

        def held(buffer: torch.Tensor, tensor: torch.Tensor) -> None:
            if self.copies == 0:
                self.entered.set()
                if not self.gate.wait(WAIT_S):
                    raise TimeoutError("the test never opened the gate")
                time.sleep(slow_s)  # a slow copy, not a synchronisation
            self.copies += 1
            real(buffer, tensor)

        monkeypatch.setattr(overlap_mod, "copy_into", held)


def moment(setup: Setup) -> dict[str, Any]:
    """The model's and the optimizer's state now, copied."""
    return {
        "model": {k: v.clone() for k, v in setup.model.state_dict().items()},
        "optimizer": copy.deepcopy(setup.optimizer.state_dict()["state"]),
    }


def saved(root: Path, step: int) -> dict[str, Any]:
    loaded = read_checkpoint(root / f"step-{step:09d}")
    model = loaded.model
    return {
        "model": {k: model[k] for k in sorted(model)},
        "optimizer": loaded.state["optimizer"]["state"],
    }


def saves(ckpt: Checkpointer) -> LocalSaves:
    strategy = ckpt._saves
    assert isinstance(strategy, LocalSaves)
    return strategy


def test_step_waits_for_the_copy_small_state_copied_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldCopy(monkeypatch, slow_s=SLOW_COPY_S)
    setup = Setup()
    setup.optimizer.register_step_pre_hook(lambda *_: held.gate.set())  # runs before ours
    with make(setup, tmp_path) as ckpt:
        setup.train(2)
        at_save = moment(setup)
        seen = setup.model.seen.clone()
        assert ckpt.save(2)  # returns while the parameters are not copied yet
        assert held.entered.wait(WAIT_S) and held.copies == 0
        # The forward updates the `seen` buffer (copied at once); the optimizer step waits.
        setup.train(1)
        outcome = ckpt.wait()
    assert ckpt.torn_snapshots == 0
    assert outcome is not None and outcome.step == 2
    assert committed_steps(tmp_path) == [2]
    want = {**at_save, "model": dict(sorted(at_save["model"].items()))}
    assert state_equal(saved(tmp_path, 2), want)
    assert int(read_checkpoint(tmp_path / "step-000000002").model["seen"]) == int(seen)
    assert not torch.equal(setup.model.seen, seen)


def test_edit_inside_the_window_retakes_the_snapshot_at_one_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    held = HeldCopy(monkeypatch)
    setup = Setup()
    with make(setup, tmp_path) as ckpt, caplog.at_level(logging.WARNING, "stalwart.torch"):
        setup.train(2)
        assert ckpt.save(2)
        assert held.entered.wait(WAIT_S)
        with torch.no_grad():  # an EMA-like edit while the parameters are being copied
            setup.model.hidden.weight.mul_(0.5)
        held.gate.set()
        setup.train(1)  # the optimizer step's pre-hook finds the version moved
        at_three = moment(setup)
        assert not ckpt.step_end(3)  # the torn save is collected and retaken here, at once
        ckpt.wait()
    assert ckpt.torn_snapshots == 1
    assert "checkpoint of step 2 discarded: model/hidden.weight changed in place" in caplog.text
    assert committed_steps(tmp_path) == [3]
    want = {**at_three, "model": dict(sorted(at_three["model"].items()))}
    assert state_equal(saved(tmp_path, 3), want)


def test_without_optimizer_the_next_step_end_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldCopy(monkeypatch, slow_s=SLOW_COPY_S)
    model = torch.nn.Linear(64, 64)
    with Checkpointer(model, ckpt_dir=tmp_path, environ={}, exit_signals=()) as ckpt:
        at_save = {k: v.clone() for k, v in model.state_dict().items()}
        assert ckpt.save(1)
        assert held.entered.wait(WAIT_S)
        held.gate.set()
        ckpt.step_end(2)  # waits for the copy: nothing else guards the parameters
        with torch.no_grad():
            model.weight.add_(1.0)
        ckpt.wait()
    assert ckpt.torn_snapshots == 0
    assert committed_steps(tmp_path) == [1]
    assert state_equal(read_checkpoint(tmp_path / "step-000000001").model, at_save)


def test_buffers_allocated_once_reused_one_snapshot_hooks_removed(tmp_path: Path) -> None:
    setup = Setup()
    ckpt = make(setup, tmp_path)
    try:
        assert len(setup.optimizer._optimizer_step_pre_hooks) == 1
        setup.train(1)
        ckpt.save(1)
        outcome = ckpt.wait()
        first = saves(ckpt).buffer_allocations
        held_bytes = saves(ckpt).buffer_bytes
        for step in (2, 3):
            setup.train(1)
            ckpt.save(step)
            ckpt.wait()
        assert saves(ckpt).buffer_allocations == first  # later saves reuse
        assert saves(ckpt).buffer_bytes == held_bytes
        # One snapshot: no more than the tensors of one checkpoint.
        assert outcome is not None and 0 < held_bytes <= outcome.size_bytes
    finally:
        ckpt.close()
    assert len(setup.optimizer._optimizer_step_pre_hooks) == 0
    assert committed_steps(tmp_path) == [1, 2, 3]


def test_save_copies_only_the_small_state_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parameters and optimizer moments are left to the background copy: save() itself
    copies none of them (it did copy everything, twice, until the deferred keys matched)."""
    from stalwart.torch import strategies

    at_once: list[int] = []
    real = strategies.copy_into

    def spy(buffer: torch.Tensor, tensor: torch.Tensor) -> None:
        at_once.append(tensor.data_ptr())
        real(buffer, tensor)

    setup = Setup()
    with make(setup, tmp_path) as ckpt:
        setup.train(2)
        monkeypatch.setattr(strategies, "copy_into", spy)
        ckpt.save(2)
        monkeypatch.setattr(strategies, "copy_into", real)
        ckpt.wait()
    live = {p.data_ptr() for p in setup.model.parameters()}
    live |= {
        t.data_ptr()
        for state in setup.optimizer.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor) and t.numel() > 1
    }
    assert at_once, "the small state (RNGs, scheduler, step counts) is copied at once"
    assert not live & set(at_once)


def test_the_first_step_end_prepares_the_buffers_so_the_first_save_allocates_nothing(
    tmp_path: Path,
) -> None:
    setup = Setup()
    with make(setup, tmp_path) as ckpt:
        setup.train(1)
        assert saves(ckpt).buffer_allocations == 0
        assert not ckpt.step_end(1)  # not due: only prepares (and touches) the buffers
        prepared = saves(ckpt).buffer_allocations
        assert prepared > 0
        setup.train(1)
        at_save = {k: v.clone() for k, v in setup.model.state_dict().items()}
        ckpt.save(2)
        ckpt.wait()
        assert saves(ckpt).buffer_allocations == prepared  # the prepared ones were used
    # The touched (zeroed) buffers hold the state as of the save, not zeros.
    assert state_equal(read_checkpoint(tmp_path / "step-000000002").model, at_save)


def test_block_copies_everything_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldCopy(monkeypatch)  # never opened: "block" does not use the background copy
    setup = Setup()
    with pytest.raises(ValueError, match="snapshot='later'"):
        make(setup, tmp_path, snapshot="later")
    with make(setup, tmp_path, snapshot="block") as ckpt:
        setup.train(2)
        at_save = moment(setup)
        ckpt.save(2)
        setup.train(1)
        ckpt.wait()
    assert not held.entered.is_set()
    want = {**at_save, "model": dict(sorted(at_save["model"].items()))}
    assert state_equal(saved(tmp_path, 2), want)
