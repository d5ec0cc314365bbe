"""Checkpointer in one process: complete bitwise state, async isolation, busy policies,
background failures, mismatches, hostile checkpoints, signals, supervisor advice."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from stalwart.checkpoint import CheckpointStore, DiskFull, FsOps, scan
from stalwart.torch import (
    Checkpointer,
    NotATorchCheckpoint,
    StateMismatch,
    UnsafeCheckpoint,
    read_checkpoint,
)
from tests.conftest import wait_for
from tests.torch.helpers import Setup, TiedNet, state_equal

WAIT_S = 10.0


class GatedFsOps(FsOps):
    """fsync blocks while the gate is closed: a save stays in flight as long as a test wants."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def fsync(self, fd: int) -> None:
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("gate never opened")
        super().fsync(fd)


class GatedCreateFsOps(GatedFsOps):
    """Creating a file blocks while the gate is closed: not one byte of the save is written
    before the test lets it."""

    def create(self, path: Path) -> int:
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("gate never opened")
        return super().create(path)

    def fsync(self, fd: int) -> None:
        FsOps.fsync(self, fd)


class FullFsOps(FsOps):
    """fsync fails with ENOSPC once armed: a disk that filled up during a save."""

    def __init__(self) -> None:
        self.full = False

    def fsync(self, fd: int) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().fsync(fd)


def make(setup: Setup, root: Path, ops: FsOps | None = None, **kwargs: Any) -> Checkpointer:
    kwargs.setdefault("environ", {})
    kwargs.setdefault("save_signals", ())
    kwargs.setdefault("exit_signals", ())
    return Checkpointer(
        setup.model, **setup.components(), store=CheckpointStore(root, ops=ops), **kwargs
    )


def committed_steps(root: Path) -> list[int]:
    return sorted(e.step for e in scan(root).managed if e.step is not None)


@pytest.mark.parametrize("async_save", [True, False])
def test_restore_continues_bitwise(tmp_path: Path, async_save: bool) -> None:
    first = Setup(seed=0)
    with make(first, tmp_path, async_save=async_save) as ckpt:
        first.train(5)
        assert ckpt.save(5)
        expected = first.train(6)
    second = Setup(seed=99)  # different weights, data order and RNG until restored
    with make(second, tmp_path) as ckpt:
        assert ckpt.restore() == 5
        assert ckpt.restored_from == tmp_path / "step-000000005"
        second.fresh_iterator()
        assert second.train(6) == expected  # dropout, sampler, python and numpy RNGs
    assert state_equal(first.model.state_dict(), second.model.state_dict())
    assert state_equal(first.optimizer.state_dict(), second.optimizer.state_dict())
    assert state_equal(first.scheduler.state_dict(), second.scheduler.state_dict())
    assert state_equal(first.scaler.state_dict(), second.scaler.state_dict())
    assert first.sampler.state_dict() == second.sampler.state_dict()
    assert second.model.out.weight is second.model.embed.weight  # still tied


def test_tied_tensors_stored_once_and_tensors_in_safetensors(tmp_path: Path) -> None:
    setup = Setup()
    with make(setup, tmp_path, async_save=False) as ckpt:
        setup.train(2)
        ckpt.save(2)
    files = tmp_path / "step-000000002"
    model = safetensors.torch.load_file(files / "model.safetensors")
    assert set(model) == {"embed.weight", "hidden.weight", "hidden.bias", "seen"}
    state = safetensors.torch.load_file(files / "state.safetensors")
    assert "optimizer/state/0/exp_avg" in state
    assert "rng/torch" in state
    loaded = read_checkpoint(files)
    assert loaded.model["out.weight"] is loaded.model["embed.weight"]
    skeleton = torch.load(files / "state.pt", weights_only=True)
    assert skeleton["step"] == 2
    assert not any(isinstance(v, torch.Tensor) for v in skeleton["model"].values())


def test_async_save_captures_the_state_at_the_request(tmp_path: Path) -> None:
    ops = GatedCreateFsOps()
    setup = Setup()
    with make(setup, tmp_path, ops=ops) as ckpt:
        setup.train(3)
        at_save = {k: v.clone() for k, v in setup.model.state_dict().items()}
        moments = {k: v.clone() for k, v in setup.optimizer.state[setup.model.embed.weight].items()}
        ops.gate.clear()
        ckpt.save(3)
        assert ops.entered.wait(WAIT_S)
        assert ckpt.saving
        setup.train(4)  # training goes on, in place, while the save waits to be written
        ops.gate.set()
        outcome = ckpt.wait()
    assert outcome is not None and outcome.step == 3
    assert outcome.stall_s < outcome.persist_s
    loaded = read_checkpoint(tmp_path / "step-000000003")
    assert state_equal({k: loaded.model[k] for k in at_save}, at_save)
    assert state_equal(loaded.state["optimizer"]["state"][0], moments)
    assert not state_equal(dict(setup.model.state_dict()), at_save)


def test_busy_skip_skips_and_busy_wait_waits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ops = GatedFsOps()
    setup = Setup()
    with make(setup, tmp_path / "skip", ops=ops, busy="skip") as ckpt:
        ops.gate.clear()
        assert ckpt.save(1)
        assert ops.entered.wait(WAIT_S)
        with caplog.at_level(logging.INFO, logger="stalwart.torch"):
            assert not ckpt.save(2)
        assert "checkpoint of step 2 skipped: step 1 is still being written" in caplog.text
        ops.gate.set()
    assert committed_steps(tmp_path / "skip") == [1]

    ops = GatedFsOps()
    with make(setup, tmp_path / "wait", ops=ops, busy="wait") as ckpt:
        ops.gate.clear()
        assert ckpt.save(1)
        assert ops.entered.wait(WAIT_S)
        opener = threading.Timer(0.2, ops.gate.set)
        opener.start()
        assert ckpt.save(2)  # blocks until step 1 is durable
        assert committed_steps(tmp_path / "wait") == [1]
        assert ckpt.last_saved is not None and ckpt.last_saved.step == 1
        opener.join()
    assert committed_steps(tmp_path / "wait") == [1, 2]


def test_background_failure_raised_at_next_call_previous_checkpoint_resumed(
    tmp_path: Path,
) -> None:
    ops = FullFsOps()
    setup = Setup()
    ckpt = make(setup, tmp_path, ops=ops, interval_s=3600.0)
    setup.train(2)
    ckpt.save(2, wait=True)
    setup.train(2)
    ops.full = True
    assert ckpt.save(4)  # returns at once; the write fails in the background
    wait_for(lambda: not ckpt.saving, WAIT_S, "the background save to fail")
    with pytest.raises(DiskFull, match="out of space") as raised:
        ckpt.step_end(4)
    assert "step-000000004" in str(raised.value)
    ops.full = False
    assert not ckpt.step_end(5)  # raised once, not again
    assert committed_steps(tmp_path) == [2]
    assert ckpt.save(4, wait=True)  # the failed step can be saved again
    ckpt.close()
    assert committed_steps(tmp_path) == [2, 4]
    shutil.rmtree(tmp_path / "step-000000004")
    assert not scan(tmp_path).staging
    resumed = Setup(seed=5)
    with make(resumed, tmp_path) as again:
        assert again.restore() == 2


def test_failure_in_flight_raised_by_close(tmp_path: Path) -> None:
    ops = FullFsOps()
    ops.full = True
    ckpt = make(Setup(), tmp_path, ops=ops)
    ckpt.save(1)
    with pytest.raises(DiskFull):
        ckpt.close()
    ckpt.close()  # closed: nothing more to raise


def test_shape_and_key_mismatch_listed_nothing_loaded(tmp_path: Path) -> None:
    with make(Setup(width=8), tmp_path) as ckpt:
        ckpt.save(1)
    other = Setup(seed=3, width=16)
    other.model.extra = torch.nn.Linear(2, 2)
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    with make(other, tmp_path) as ckpt, pytest.raises(StateMismatch) as raised:
        ckpt.restore()
    message = str(raised.value)
    assert "hidden.weight: checkpoint [8, 8] vs model [16, 16]" in message
    assert "embed.weight: checkpoint [11, 8] vs model [11, 16]" in message
    assert "model keys missing from the checkpoint (2): extra.weight, extra.bias" in message
    assert "nothing was loaded" in message
    assert raised.value.missing == ("extra.weight", "extra.bias")
    assert state_equal(dict(other.model.state_dict()), before)


def test_unexpected_keys_and_missing_component(tmp_path: Path) -> None:
    setup = Setup()
    with make(setup, tmp_path) as ckpt:
        ckpt.save(1)
    smaller = TiedNet()
    del smaller.hidden
    optimizer = torch.optim.SGD(smaller.parameters(), lr=0.1)
    extra = Setup().sampler
    with (
        Checkpointer(
            smaller,
            optimizer,
            extra={"mine": extra},
            ckpt_dir=tmp_path,
            environ={},
            save_signals=(),
            exit_signals=(),
        ) as ckpt,
        pytest.raises(StateMismatch) as raised,
    ):
        ckpt.restore()
    message = str(raised.value)
    assert "unexpected keys in the checkpoint (2): hidden.weight, hidden.bias" in message
    assert "mine: not in the checkpoint" in message
    assert "optimizer group 0: 3 parameters saved, 1 now" in message


class Payload:
    """Unpickling this calls os.mkdir(path): the marker appears if it ever runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def test_pickled_code_refused_never_executed(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    setup = Setup()
    with make(setup, root) as ckpt:
        ckpt.save(1)
    good = root / "step-000000001"
    marker = tmp_path / "payload-ran"
    document = torch.load(good / "state.pt", weights_only=True)
    document["state"]["data"] = Payload(marker)
    hostile = io.BytesIO()
    torch.save(document, hostile)
    store = CheckpointStore(root)
    committed = store.save_bytes(  # a valid manifest: only the content is hostile
        2,
        {
            "model.safetensors": (good / "model.safetensors").read_bytes(),
            "state.safetensors": (good / "state.safetensors").read_bytes(),
            "state.pt": hostile.getvalue(),
        },
    )
    restorers = [
        lambda c: c.restore(committed.path),
        lambda c: c.restore(),  # standalone: the newest intact checkpoint is the hostile one
    ]
    for restore in restorers:
        with make(Setup(), root) as ckpt, pytest.raises(UnsafeCheckpoint) as raised:
            restore(ckpt)
        assert "step-000000002, file state.pt: refused" in str(raised.value)
        assert "mkdir" in str(raised.value)
        assert not marker.exists()
    env = {"STALWART_RESUME_FROM": str(committed.path), "STALWART_CKPT_DIR": str(root)}
    with (
        Checkpointer(Setup().model, environ=env, save_signals=(), exit_signals=()) as ckpt,
        pytest.raises(UnsafeCheckpoint),
    ):
        ckpt.restore()
    assert not marker.exists()
    # The payload is live: the unsafe loader would have run it.
    torch.load(committed.path / "state.pt", weights_only=False)
    assert marker.exists()


def test_not_a_torch_checkpoint(tmp_path: Path) -> None:
    CheckpointStore(tmp_path).save_bytes(7, {"weights.bin": b"\0" * 16})
    with make(Setup(), tmp_path) as ckpt, pytest.raises(NotATorchCheckpoint, match=r"state\.pt"):
        ckpt.restore()


def test_unsupported_state_refused_when_saving(tmp_path: Path) -> None:
    class Odd:
        def state_dict(self) -> dict[str, Any]:
            return {"ok": np.arange(3), "callback": print}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            raise AssertionError("never loaded")

    setup = Setup()
    ckpt = Checkpointer(
        setup.model, extra={"odd": Odd()}, ckpt_dir=tmp_path, environ={}, exit_signals=()
    )
    with pytest.raises(TypeError, match="odd/callback: a builtin_function_or_method"):
        ckpt.save(1)
    ckpt.close()
    assert not scan(tmp_path).staging and not committed_steps(tmp_path)


def test_numpy_and_odd_tensors_round_trip(tmp_path: Path) -> None:
    class Holder:
        def __init__(self) -> None:
            self.state: dict[str, Any] = {}

        def state_dict(self) -> dict[str, Any]:
            return self.state

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.state = state

    holder = Holder()
    holder.state = {
        "array": np.arange(6, dtype=np.uint32).reshape(2, 3),
        "u32": torch.tensor([1, 2, 3], dtype=torch.uint32),
        "sparse": torch.eye(3).to_sparse(),
        "nested": [(1, "a", None, 2.5), {"k": b"bytes"}],
        "scalar": np.float64(1.5),
    }
    model = TiedNet()
    with Checkpointer(model, extra={"h": holder}, ckpt_dir=tmp_path, environ={}) as ckpt:
        ckpt.save(1)
    restored = Holder()
    with Checkpointer(model, extra={"h": restored}, ckpt_dir=tmp_path, environ={}) as ckpt:
        ckpt.restore()
    got = restored.state
    assert isinstance(got["array"], np.ndarray) and got["array"].dtype == np.uint32
    assert (got["array"] == holder.state["array"]).all()
    assert got["u32"].dtype == torch.uint32
    assert got["u32"].to(torch.int64).tolist() == [1, 2, 3]
    assert torch.equal(got["sparse"].to_dense(), torch.eye(3))
    assert got["nested"] == [(1, "a", None, 2.5), {"k": b"bytes"}]
    assert got["scalar"] == 1.5


def test_signals_save_and_drain(tmp_path: Path) -> None:
    setup = Setup()
    before = signal.getsignal(signal.SIGTERM)
    with Checkpointer(
        setup.model, **setup.components(), ckpt_dir=tmp_path, environ={}, interval_s=3600.0
    ) as ckpt:
        setup.train(1)
        assert not ckpt.step_end(1)
        os.kill(os.getpid(), signal.SIGUSR1)
        setup.train(1)
        assert not ckpt.step_end(2)  # saves step 2 in the background
        ckpt.wait()
        assert committed_steps(tmp_path) == [2]
        os.kill(os.getpid(), signal.SIGTERM)  # recorded only; the loop decides
        setup.train(1)
        assert ckpt.step_end(3)  # saved synchronously: durable when it returns
        assert ckpt.should_exit
        assert committed_steps(tmp_path) == [2, 3]
        assert ckpt.step_end(4)  # stays exiting, saves nothing more
    assert signal.getsignal(signal.SIGTERM) == before
    assert committed_steps(tmp_path) == [2, 3]


def test_standalone_interval(tmp_path: Path) -> None:
    now_s = [0.0]
    setup = Setup()
    with make(setup, tmp_path, interval_s=2.5, clock=lambda: now_s[0]) as ckpt:
        for step, at_s in enumerate([1.0, 3.0, 4.0, 6.0], start=1):
            now_s[0] = at_s
            ckpt.step_end(step)
            ckpt.wait()
    assert committed_steps(tmp_path) == [2, 4]


def _datagrams(sock: socket.socket) -> list[dict[str, str]]:
    found = []
    while True:
        try:
            payload = sock.recv(65536)
        except BlockingIOError:
            return found
        found.append(dict(line.split("=", 1) for line in payload.decode().splitlines()))


def test_under_supervisor_advice_and_reports(tmp_path: Path, runtime_dir: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(runtime_dir / "notify.sock"))
    notify.setblocking(False)
    advice = runtime_dir / "advice.json"

    def advise(**fields: Any) -> None:
        data = {"interval_s": 3600.0, "checkpoint_now": 0, "drain": False, **fields}
        (runtime_dir / "advice.tmp").write_text(json.dumps(data))
        os.replace(runtime_dir / "advice.tmp", advice)

    advise()
    root = tmp_path / "ck"
    CheckpointStore(root).save_bytes(9, {"other.bin": b"x"})  # not chosen by the supervisor
    env = {
        "STALWART_CKPT_DIR": str(root),
        "STALWART_RUN_ID": "run-1",
        "STALWART_ATTEMPT": "3",
        "STALWART_RESUME_FROM": "",
        "STALWART_NOTIFY_SOCKET": str(runtime_dir / "notify.sock"),
        "STALWART_ADVICE_FILE": str(advice),
    }
    setup = Setup()
    try:
        with Checkpointer(setup.model, setup.optimizer, environ=env, exit_signals=()) as ckpt:
            assert ckpt.restore() == 0  # the supervisor found nothing to resume from
            assert not ckpt.step_end(1)
            assert committed_steps(root) == [9]
            advise(checkpoint_now=1)
            assert not ckpt.step_end(2)
            ckpt.wait()
            advise(checkpoint_now=1, drain=True)
            assert ckpt.step_end(3)
        messages = _datagrams(notify)
    finally:
        notify.close()
    assert committed_steps(root) == [2, 3, 9]
    manifest = json.loads((root / "step-000000002" / "MANIFEST.json").read_text())
    assert manifest["run_id"] == "run-1" and manifest["attempt"] == 3
    assert {"STEP": "1"} in messages
    begins = [m["CKPT_BEGIN"] for m in messages if "CKPT_BEGIN" in m]
    done = [m for m in messages if "CKPT_DONE" in m]
    assert begins == ["2", "3"]
    assert [Path(m["CKPT_DONE"]).name for m in done] == ["step-000000002", "step-000000003"]
    for report in done:
        assert float(report["CKPT_STALL_S"]) <= float(report["CKPT_PERSIST_S"])
        assert int(report["CKPT_BYTES"]) > 0
    env["STALWART_RESUME_FROM"] = str(root / "step-000000002")
    again = Setup(seed=4)
    with Checkpointer(
        again.model, again.optimizer, environ=env, save_signals=(), exit_signals=()
    ) as ckpt:
        assert ckpt.restore() == 2


def test_import_stalwart_never_imports_torch() -> None:
    code = (
        "import sys, stalwart, stalwart.client, stalwart.checkpoint, stalwart.supervisor, "
        "stalwart.cli; assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_checkpoint_restores_on_cpu(tmp_path: Path) -> None:
    setup = Setup()
    setup.model.cuda()
    with make(setup, tmp_path) as ckpt:
        ckpt.save(1)
        ckpt.wait()
    cpu = Setup(seed=2)
    with make(cpu, tmp_path) as ckpt:
        assert ckpt.restore() == 1
    assert state_equal(
        {k: v.cpu() for k, v in setup.model.state_dict().items()}, dict(cpu.model.state_dict())
    )
