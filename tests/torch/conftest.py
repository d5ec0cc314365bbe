"""torch writes a compiler cache directory under $TMPDIR the first time an optimizer is
made (torch._inductor's cache_dir); point it outside each test's private temp dir, which
must stay empty."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def torch_cache_outside_tmpdir(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = tmp_path_factory.getbasetemp() / "torchinductor"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
