"""The random number generators a training step draws from: python `random`, numpy's
global generator (if numpy is installed), torch's CPU generator and every CUDA device's.

Generators the training code owns (a `torch.Generator`, a `numpy.random.Generator`) are
not global: checkpoint them through an object with `state_dict()`/`load_state_dict()`.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import torch

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is optional
    np = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


def capture() -> dict[str, Any]:
    """The generators' states now (copies; later draws do not change them)."""
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "torch": torch.get_rng_state(),
    }
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        assert isinstance(keys, np.ndarray)  # legacy=True: the MT19937 tuple
        state["numpy"] = {
            "kind": str(kind),
            "keys": keys.astype(np.int64),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    # Only when CUDA is in use: asking for the states would start CUDA on every device.
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore(state: dict[str, Any]) -> None:
    """Set the generators to a captured state; ValueError if it is not one."""
    try:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(py["internal"]), py["gauss_next"]))
        torch.set_rng_state(state["torch"].cpu())
        saved_np = state.get("numpy")
        if saved_np is not None and np is not None:
            np.random.set_state(
                (
                    saved_np["kind"],
                    np.asarray(saved_np["keys"]).astype(np.uint32),
                    int(saved_np["pos"]),
                    int(saved_np["has_gauss"]),
                    float(saved_np["cached_gaussian"]),
                )
            )
        elif saved_np is not None:
            logger.warning("numpy's random state was saved but numpy is not installed")
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a random generator state: {exc!r}") from None
    cuda = state.get("cuda")
    if cuda:
        if not torch.cuda.is_available():
            logger.warning(
                "the checkpoint has CUDA random states but CUDA is not available; "
                "CUDA generators are not restored"
            )
            return
        count = torch.cuda.device_count()
        if count != len(cuda):
            logger.warning(
                "the checkpoint has random states for %d CUDA devices, this machine has %d; "
                "restoring the first %d",
                len(cuda),
                count,
                min(count, len(cuda)),
            )
        for index, device_state in enumerate(cuda[:count]):
            torch.cuda.set_rng_state(device_state.cpu(), index)
