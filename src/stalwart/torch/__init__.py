"""Full integration for torch training loops (extra `stalwart[torch]`): complete state,
asynchronous saves at the advised interval, emergency saves, safe bitwise restore.

Importing `stalwart` never imports torch; only this package does.
"""

from stalwart.torch.checkpointer import Checkpointer, Stateful
from stalwart.torch.errors import NotATorchCheckpoint, StateMismatch, UnsafeCheckpoint
from stalwart.torch.files import LoadedCheckpoint, read_checkpoint
from stalwart.torch.outcome import Busy, SaveOutcome
from stalwart.torch.sampler import ResumableSampler

__all__ = [
    "Busy",
    "Checkpointer",
    "LoadedCheckpoint",
    "NotATorchCheckpoint",
    "ResumableSampler",
    "SaveOutcome",
    "StateMismatch",
    "Stateful",
    "UnsafeCheckpoint",
    "read_checkpoint",
]
