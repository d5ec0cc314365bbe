"""Whether a checkpoint's state fits the objects it is restored into, checked before
anything is loaded: the model's keys and shapes, the components' presence, the optimizer's
parameter groups."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from stalwart.torch.errors import StateMismatch
from stalwart.torch.files import LoadedCheckpoint

if TYPE_CHECKING:
    from stalwart.torch.checkpointer import Stateful


def state_mismatch(
    loaded: LoadedCheckpoint,
    model: torch.nn.Module,
    components: Mapping[str, Stateful],
    *,
    strict: bool,
) -> StateMismatch | None:
    """What does not fit (None: it all does); with `strict`, model keys missing from, or
    unexpected in, the checkpoint count too."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in loaded.model]
    unexpected = [key for key in loaded.model if key not in expected]
    mismatched = []
    for key, want in expected.items():
        got = loaded.model.get(key)
        if (
            isinstance(want, torch.Tensor)
            and isinstance(got, torch.Tensor)
            and got.shape != want.shape
        ):
            mismatched.append(f"{key}: checkpoint {list(got.shape)} vs model {list(want.shape)}")
    problems = [f"{name}: not in the checkpoint" for name in components if name not in loaded.state]
    if "rng" not in loaded.state:
        problems.append("rng: not in the checkpoint")
    optimizer = components.get("optimizer")
    saved_optimizer = loaded.state.get("optimizer")
    if isinstance(optimizer, torch.optim.Optimizer) and isinstance(saved_optimizer, dict):
        problems.extend(_optimizer_problems(optimizer, saved_optimizer))
    if mismatched or problems or (strict and (missing or unexpected)):
        return StateMismatch(
            loaded.path.name,
            missing=missing if strict else (),
            unexpected=unexpected if strict else (),
            mismatched=mismatched,
            components=problems,
        )
    return None


def _optimizer_problems(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> list[str]:
    groups = saved.get("param_groups")
    if not isinstance(groups, list):
        return ["optimizer: the saved state has no param_groups"]
    if len(groups) != len(optimizer.param_groups):
        return [
            f"optimizer: {len(groups)} parameter groups saved, {len(optimizer.param_groups)} now"
        ]
    problems = []
    for index, (was, now) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
        saved_params = was.get("params", []) if isinstance(was, dict) else []
        if len(saved_params) != len(now["params"]):
            problems.append(
                f"optimizer group {index}: {len(saved_params)} parameters saved, "
                f"{len(now['params'])} now"
            )
    return problems
