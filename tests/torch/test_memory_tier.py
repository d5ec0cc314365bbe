"""The Checkpointer's memory tier: interval saves go to memory alone, a due durable save,
an explicit save or a drain reach the disk from the same snapshot, the tier keeps only the
newest, a snapshot that does not fit is refused, and a memory checkpoint restores bitwise."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from stalwart.checkpoint import CheckpointStore, VerifyLevel, scan, verify_checkpoint
from stalwart.client import Client
from stalwart.torch import Checkpointer, read_checkpoint
from tests.torch.helpers import Setup, state_equal


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _steps(root: Path) -> list[int]:
    return sorted(e.step for e in scan(root).managed if e.step is not None)


def _advise(path: Path, **advice: Any) -> None:
    base = {"interval_s": 100.0, "checkpoint_now": 0, "drain": False, "memory_interval_s": 1.0}
    path.write_text(json.dumps({**base, **advice}))


def _make(setup: Setup, tmp_path: Path, clock: FakeClock, **kwargs: Any) -> Checkpointer:
    env = {
        "STALWART_ADVICE_FILE": str(tmp_path / "advice.json"),
        "STALWART_MEMORY_DIR": str(tmp_path / "memory"),
    }
    kwargs.setdefault("snapshot", "overlap")
    return Checkpointer(
        setup.model,
        **setup.components(),
        store=CheckpointStore(tmp_path / "disk"),
        client=Client(env, clock=clock, dump_stacks=False),
        environ=env,
        save_signals=(),
        exit_signals=(),
        clock=clock,
        **kwargs,
    )


def test_interval_saves_go_to_memory_and_the_durable_interval_to_disk(tmp_path: Path) -> None:
    _advise(tmp_path / "advice.json")
    clock, setup = FakeClock(), Setup()
    with _make(setup, tmp_path, clock) as ckpt:
        for step in range(1, 6):
            setup.train(1)
            clock.now += 1.5  # past the memory interval, not the durable one
            assert not ckpt.step_end(step)
            ckpt.wait()
        assert _steps(tmp_path / "memory") == [5]  # only the newest is kept
        assert _steps(tmp_path / "disk") == []
        assert ckpt.last_in_memory is not None and ckpt.last_saved is None
        at_five = {k: v.clone() for k, v in setup.model.state_dict().items()}
        clock.now += 100.0  # the durable interval is due: both tiers, one snapshot
        setup.train(1)
        ckpt.step_end(6)
        outcome = ckpt.wait()
        assert outcome is not None and outcome.tier == "disk" and outcome.memory is not None
        assert _steps(tmp_path / "disk") == [6] and _steps(tmp_path / "memory") == [6]
        assert ckpt.save(6) is False  # that step is durable already
    loaded = read_checkpoint(tmp_path / "memory" / "step-000000006")
    on_disk = read_checkpoint(tmp_path / "disk" / "step-000000006")
    assert state_equal(loaded.model, on_disk.model)
    moments = loaded.state["optimizer"]["state"][0]
    assert state_equal(moments, on_disk.state["optimizer"]["state"][0])
    assert not state_equal(dict(loaded.model), at_five)
    assert verify_checkpoint(tmp_path / "memory" / "step-000000006", VerifyLevel.FULL).intact


def test_an_explicit_save_and_a_drain_reach_the_disk(tmp_path: Path) -> None:
    _advise(tmp_path / "advice.json")
    clock, setup = FakeClock(), Setup()
    with _make(setup, tmp_path, clock) as ckpt:
        setup.train(1)
        clock.now += 1.5
        ckpt.step_end(1)
        ckpt.wait()
        assert _steps(tmp_path / "disk") == []
        assert ckpt.save(1)  # the same step, asked for explicitly: now durable too
        ckpt.wait()
        assert _steps(tmp_path / "disk") == [1]
        setup.train(1)
        clock.now += 1.5
        ckpt.step_end(2)
        ckpt.wait()
        _advise(tmp_path / "advice.json", drain=True)
        assert ckpt.step_end(2)  # the drain saves step 2 to disk although memory has it
    assert _steps(tmp_path / "disk") == [1, 2]


def test_a_snapshot_that_does_not_fit_goes_to_disk_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _advise(tmp_path / "advice.json", interval_s=1.0)
    clock, setup = FakeClock(), Setup()
    env_fraction = 1e-12  # no snapshot fits in this share of memory
    with _make(setup, tmp_path, clock) as ckpt:
        assert ckpt.memory is not None
        ckpt.memory.fraction = env_fraction
        setup.train(1)
        clock.now += 1.5
        with caplog.at_level(logging.WARNING, logger="stalwart.torch"):
            ckpt.step_end(1)
            ckpt.wait()
        assert "memory tier off for this process" in caplog.text and "MiB" in caplog.text
        assert ckpt.client.memory_tier is False
    assert _steps(tmp_path / "disk") == [1]
    assert _steps(tmp_path / "memory") == []


def test_restores_bitwise_from_the_memory_tier(tmp_path: Path) -> None:
    _advise(tmp_path / "advice.json")
    clock, setup = FakeClock(), Setup()
    with _make(setup, tmp_path, clock) as ckpt:
        setup.train(3)
        clock.now += 1.5
        ckpt.step_end(3)
        ckpt.wait()
        expected = {k: v.clone() for k, v in setup.model.state_dict().items()}
    other = Setup(seed=1)
    restored = Checkpointer(
        other.model, **other.components(), store=CheckpointStore(tmp_path / "disk"),
        environ={}, save_signals=(), exit_signals=(),
    )  # fmt: skip
    with restored:
        assert restored.restore(tmp_path / "memory" / "step-000000003") == 3
    assert state_equal(dict(other.model.state_dict()), expected)


def test_memory_checkpoints_record_the_loss_too(tmp_path: Path) -> None:
    _advise(tmp_path / "advice.json")
    clock, setup = FakeClock(), Setup()
    with _make(setup, tmp_path, clock) as ckpt:
        setup.train(1)
        clock.now += 1.5
        ckpt.step_end(1, loss=0.75)
        ckpt.wait()
    manifest = json.loads((tmp_path / "memory" / "step-000000001" / "MANIFEST.json").read_text())
    assert manifest["meta"]["metrics"] == {"loss": 0.75}
