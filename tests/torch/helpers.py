"""Small models and states for the Checkpointer tests."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from stalwart.torch import ResumableSampler


class TiedNet(nn.Module):
    """An embedding tied to the output layer, a buffer, and dropout (draws from the RNG)."""

    def __init__(self, vocab: int = 11, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(width, width)
        self.out = nn.Linear(width, vocab, bias=False)
        self.out.weight = self.embed.weight
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.seen += idx.numel()
        hidden = nn.functional.dropout(torch.tanh(self.hidden(self.embed(idx))), 0.3)
        return self.out(hidden)


class Setup:
    """Model, optimizer, scheduler, scaler, sampler, seeded the same every time."""

    def __init__(self, seed: int = 0, vocab: int = 11, width: int = 8) -> None:
        torch.manual_seed(seed)
        self.model = TiedNet(vocab, width)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2, gamma=0.5)
        self.scaler = torch.amp.GradScaler("cpu")
        self.sampler = ResumableSampler(37, seed=seed)
        self.vocab = vocab
        self._indices = iter(self.sampler)

    def components(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "data": self.sampler,
        }

    def train(self, steps: int) -> list[float]:
        """Steps whose results depend on every piece of state, including all three RNGs."""
        losses = []
        for _ in range(steps):
            batch = []
            while len(batch) < 5:
                index = next(self._indices, None)
                if index is None:
                    self._indices = iter(self.sampler)
                    continue
                batch.append(index % self.vocab)
            idx = torch.tensor(batch)
            loss = nn.functional.cross_entropy(self.model(idx), idx)
            self.optimizer.zero_grad()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            losses.append(loss.item() + random.random() + float(np.random.rand()))
        return losses

    def fresh_iterator(self) -> None:
        """After a restore, continue from the restored sampler position."""
        self._indices = iter(self.sampler)


def state_equal(a: Any, b: Any) -> bool:
    """Bitwise equality of nested states (tensors compared by dtype, shape and bytes)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(state_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(state_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
