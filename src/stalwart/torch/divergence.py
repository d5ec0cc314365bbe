"""The trainer's side of a divergence rollback: skip the data that made the loss diverge.

After the loss diverged (NaN, a spike that stayed), the supervisor resumes the job from a
checkpoint before the spike and sets $STALWART_DATA_SKIP (`Client.skip_batches`): that many
batches past the restored data position are not trained on. `Checkpointer.restore` moves
its `data` component there when it can (`skip_batches(n)`, e.g. `ResumableSampler`);
a trainer with its own loader reads `Client.skip_batches` and skips them itself.
"""

from __future__ import annotations

import logging

from stalwart.client import Client

logger = logging.getLogger(__name__)


def skip_ahead(data: object, client: Client, step: int) -> int:
    """Move `data` past the batches the supervisor asks to skip; returns `step` unchanged
    (the optimizer steps done: skipped batches are not steps)."""
    batches = client.skip_batches
    if batches <= 0:
        return step
    skip = getattr(data, "skip_batches", None)
    if callable(skip):
        skip(batches)
        logger.warning(
            "divergence rollback: skipping %d batches of data past step %d", batches, step
        )
    else:
        logger.warning(
            "divergence rollback: the supervisor asks to skip %d batches past step %d, but the "
            "Checkpointer's data component has no skip_batches(n); skip them in your loader "
            "(Client.skip_batches)",
            batches,
            step,
        )
    return step
