"""Choosing checkpoints by a recorded metric: `stalwart checkpoints best`, retention's keep-best,
and the place of a framework alias (no step in its name) in retention's order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stalwart.checkpoint import (
    CheckpointState,
    CheckpointStore,
    Keep,
    RetentionItem,
    RetentionPolicy,
    list_checkpoints,
    plan_retention,
    retention_items,
)
from stalwart.checkpoint.pruning import find_best
from stalwart.config import validate
from stalwart.errors import ConfigError
from stalwart.policy.retention import rank_by_metric, recorded_metrics
from tests.checkpoint.helpers import flip_byte
from tests.frameworks.helpers import cli


def _save(root: Path, step: int, **metrics: float) -> Path:
    meta = {"metrics": metrics} if metrics else None
    committed = CheckpointStore(root).save_bytes(step, {"w.bin": bytes([step]) * 4096}, meta=meta)
    return committed.path


def test_best_skips_a_corrupt_checkpoint_with_a_better_value(tmp_path: Path) -> None:
    _save(tmp_path, 1, val_loss=0.9, acc=0.50)
    best = _save(tmp_path, 2, val_loss=0.2, acc=0.70)
    runner_up = _save(tmp_path, 3, val_loss=0.3, acc=0.80)
    _save(tmp_path, 4)  # nothing recorded: never chosen
    found = find_best(tmp_path, "val_loss")
    assert found is not None and found[0].path == best and found[1] == 0.2

    flip_byte(best / "w.bin")
    result = cli("checkpoints", "best", "--dir", str(tmp_path), "--metric", "val_loss")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(runner_up)
    assert "not choosing step-000000002" in result.stderr

    highest = cli("checkpoints", "best", "--dir", str(tmp_path), "--metric", "acc", "--mode", "max")
    assert highest.stdout.strip() == str(runner_up)
    missing = cli("checkpoints", "best", "--dir", str(tmp_path), "--metric", "bleu")
    assert missing.returncode == 1 and "bleu" in missing.stderr
    listing = cli("checkpoints", "list", "--dir", str(tmp_path))
    assert "acc=0.8 val_loss=0.3" in listing.stdout


def test_prune_keeps_the_best_by_the_metric(tmp_path: Path) -> None:
    for step, loss in enumerate([0.1, 0.5, 0.2, 0.6, 0.7, 0.8], start=1):
        _save(tmp_path, step, val_loss=loss)
    result = cli(
        "checkpoints", "prune", "--dir", str(tmp_path),
        "--keep-last", "2", "--keep-best", "2", "--metric", "val_loss",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    left = sorted(p.name for p in tmp_path.glob("step-*"))
    assert left == ["step-000000001", "step-000000003", "step-000000005", "step-000000006"]
    assert "keep   step-000000001 (among the best by the metric)" in result.stdout
    needs_metric = cli("checkpoints", "prune", "--dir", str(tmp_path), "--keep-best", "1")
    assert needs_metric.returncode == 2


def _item(step: int | None, mtime_ns: int, **metrics: float) -> RetentionItem:
    name = f"step-{step:09d}" if step is not None else "last.ckpt"
    return RetentionItem(
        name, Path(name), step, 1, CheckpointState.INTACT, metrics=metrics, mtime_ns=mtime_ns
    )


def test_an_alias_without_a_step_is_as_new_as_its_mtime() -> None:
    """Lightning's last.ckpt, rewritten at every save: not the oldest, never pruned first."""
    items = [_item(s, s * 10) for s in (1, 2, 3)] + [_item(None, 35)]
    plan = plan_retention(items, RetentionPolicy(keep_last=2))
    kept = {item.name: why for item, why in plan.kept}
    assert kept["last.ckpt"] is Keep.NEWEST_VERIFIED
    assert [i.name for i in plan.delete] == ["step-000000001", "step-000000002"]
    unknown_time = [*items[:3], RetentionItem("x.ckpt", Path("x"), None, 1, CheckpointState.INTACT)]
    assert [i.name for i in plan_retention(unknown_time, RetentionPolicy(keep_last=1)).delete] == [
        "x.ckpt",
        "step-000000001",
        "step-000000002",
    ]


def test_rank_by_metric_breaks_ties_toward_the_newer() -> None:
    items = [_item(1, 10, loss=0.5), _item(2, 20, loss=0.5), _item(3, 30, loss=0.7), _item(4, 40)]
    assert [i.step for i, _ in rank_by_metric(items, "loss")] == [2, 1, 3]
    assert [i.step for i, _ in rank_by_metric(items, "loss", "max")] == [3, 2, 1]


def test_recorded_metrics_ignores_what_is_not_a_finite_number() -> None:
    meta: dict[str, Any] = {"metrics": {"a": 1, "b": True, "c": "x", "d": float("inf"), "e": 0.5}}
    assert recorded_metrics(meta) == {"a": 1.0, "e": 0.5}
    assert recorded_metrics({"metrics": [1, 2]}) == {} and recorded_metrics(None) == {}


def test_retention_items_carry_the_recorded_metrics(tmp_path: Path) -> None:
    _save(tmp_path, 1, val_loss=0.25)
    [item] = retention_items(list_checkpoints(tmp_path, full=True))
    assert item.metrics == {"val_loss": 0.25} and item.mtime_ns


metric_values = st.none() | st.floats(0, 10, allow_nan=False)


@given(
    st.lists(
        st.tuples(st.sampled_from(list(CheckpointState)), metric_values), min_size=1, max_size=12
    ),
    st.integers(0, 3),
    st.integers(0, 3),
    st.sampled_from(["min", "max"]),
)
def test_keep_best_keeps_the_best_intact_and_never_the_newest_rule_less(
    raw: list[tuple[CheckpointState, float | None]], keep_last: int, keep_best: int, mode: str
) -> None:
    items = [
        RetentionItem(
            f"step-{step:09d}",
            Path(str(step)),
            step,
            1,
            state,
            metrics={} if value is None else {"m": value},
            mtime_ns=step,
        )
        for step, (state, value) in enumerate(raw)
    ]
    policy = RetentionPolicy(
        keep_last=keep_last,
        keep_best=keep_best,
        best_metric="m",
        best_mode=mode,  # type: ignore[arg-type]
    )
    plan = plan_retention(items, policy)
    deleted = {i.name for i in plan.delete}
    intact = [i for i in items if i.state is CheckpointState.INTACT]
    if intact:
        assert max(intact, key=lambda i: i.step or 0).name not in deleted
    best = rank_by_metric(intact, "m", mode)[:keep_best]  # type: ignore[arg-type]
    assert not deleted & {i.name for i, _ in best}
    without = plan_retention(items, RetentionPolicy(keep_last=keep_last))
    assert deleted <= {i.name for i in without.delete}  # keep-best only ever keeps more


def test_keep_best_needs_a_metric() -> None:
    with pytest.raises(ValueError, match="best_metric"):
        RetentionPolicy(keep_best=1)
    with pytest.raises(ConfigError, match="best_metric"):
        validate({"command": ["x"], "checkpoint": {"keep_best": 2}}, "test")
    config = validate(
        {"command": ["x"], "checkpoint": {"keep_best": 2, "best_metric": "val_loss"}}, "test"
    )
    assert config.checkpoint.best_mode == "min"
