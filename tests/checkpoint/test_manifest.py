"""MANIFEST.json format 1 and the names on disk: pure functions, tested exhaustively."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stalwart.checkpoint.layout import (
    Entry,
    EntryKind,
    QuarantineReason,
    checkpoint_name,
    foreign_step,
    newest_first,
    parse_staging,
    parse_step,
    quarantine_name,
    staging_name,
)
from stalwart.checkpoint.manifest import (
    MAX_MANIFEST_BYTES,
    FileEntry,
    HashAlgo,
    Manifest,
    ManifestError,
    parse_manifest,
    path_problem,
    render_manifest,
)

segment = st.text(
    alphabet=st.characters(
        min_codepoint=0x21,
        max_codepoint=0x2FF,
        exclude_characters="/\\",
        exclude_categories=("Cc", "Cs"),
    ),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
rel_paths = st.lists(segment, min_size=1, max_size=4).map("/".join)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    algo = draw(st.sampled_from(HashAlgo))
    paths = draw(st.lists(rel_paths, max_size=6, unique=True))
    # "a" and "a/b" cannot both be files.
    paths = [p for p in paths if not any(q.startswith(p + "/") for q in paths)]
    hexes = st.text(alphabet="0123456789abcdef", min_size=algo.hex_chars, max_size=algo.hex_chars)
    files = tuple(
        FileEntry(path=p, size_bytes=draw(st.integers(0, 2**50)), digest=draw(hexes)) for p in paths
    )
    return Manifest(
        step=draw(st.integers(0, 2**40)),
        created_unix=draw(st.floats(0, 2e9, allow_nan=False)),
        run_id=draw(st.text(max_size=20)),
        attempt=draw(st.integers(0, 1000)),
        hash=algo,
        files=files,
        meta=draw(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5))),
    )


@given(manifests())
def test_render_then_parse_is_identity(manifest: Manifest) -> None:
    assert parse_manifest(render_manifest(manifest)) == manifest


@given(st.binary(max_size=300))
def test_parse_never_fails_other_than_with_manifest_error(raw: bytes) -> None:
    with contextlib.suppress(ManifestError):
        parse_manifest(raw)


def _valid() -> dict[str, object]:
    return {
        "format": 1,
        "step": 3,
        "created_unix": 1.5,
        "run_id": "r",
        "attempt": 0,
        "hash": "xxh3_128",
        "files": [{"path": "a", "bytes": 1, "digest": "0" * 32}],
        "meta": {},
    }


def _with(**changes: object) -> bytes:
    document = _valid()
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_with(format=2), "format must be 1"),
        (_with(format=True), "format must be 1"),
        (_with(step=-1), "step"),
        (_with(step=True), "step"),
        (_with(hash="md5"), "hash must be one of"),
        (_with(extra=1), "unknown keys"),
        (_with(files=[{"path": "../x", "bytes": 1, "digest": "0" * 32}]), "'..'"),
        (_with(files=[{"path": "/etc/passwd", "bytes": 1, "digest": "0" * 32}]), "absolute"),
        (_with(files=[{"path": "a", "bytes": 1, "digest": "0" * 64}]), "32 lowercase hex"),
        (_with(files=[{"path": "a", "bytes": -1, "digest": "0" * 32}]), "bytes"),
        (_with(files=[{"path": "a", "bytes": 1, "digest": "0" * 32}] * 2), "listed twice"),
        (
            _with(
                files=[
                    {"path": "a", "bytes": 1, "digest": "0" * 32},
                    {"path": "a/b", "bytes": 1, "digest": "0" * 32},
                ]
            ),
            "as a file and as a directory",
        ),
        (_with(files=[{"path": "MANIFEST.json", "bytes": 1, "digest": "0" * 32}]), "reserved"),
        (b'{"format": 1, "format": 1}', "duplicate key"),
        (_with(created_unix=None).replace(b"null", b"NaN"), "NaN"),
        (b"[" * 100_000, "nested too deeply|not valid JSON"),
        (b"\xff", "UTF-8"),
        (b" " * (MAX_MANIFEST_BYTES + 1), "larger than"),
    ],
)
def test_invalid_manifests_say_why(raw: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(raw, reserved=("MANIFEST.json",))


@pytest.mark.parametrize(
    "path", ["", "/a", "a/../b", "..", "./a", "a//b", "a/", "a\\b", "a\nb", "x" * 5000]
)
def test_path_problems(path: str) -> None:
    assert path_problem(path) is not None


@given(st.integers(0, 10**12), st.integers(1, 2**22))
def test_names_round_trip(step: int, pid: int) -> None:
    assert parse_step(checkpoint_name(step)) == step
    assert parse_staging(staging_name(step, pid)) == (step, pid)
    assert parse_step(staging_name(step, pid)) is None


def test_names_are_as_designed() -> None:
    assert checkpoint_name(1234) == "step-000001234"
    assert staging_name(1234, 77) == ".staging-step-000001234-77"
    assert parse_step("step-1234") is None  # fewer than 9 digits: not ours
    assert parse_step("step-000001234.old") is None
    assert quarantine_name("step-000000001", QuarantineReason.CORRUPT) == "step-000000001-corrupt"
    assert quarantine_name("a", QuarantineReason.POISON, ["a-poison", "a-poison.2"]) == "a-poison.3"


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("epoch=3-step=1500.ckpt", 1500),
        ("checkpoint-500", 500),
        ("model_700.pt", 700),
        ("global_step42", 42),
        ("last.ckpt", None),
        ("model.safetensors", None),
    ],
)
def test_foreign_steps(name: str, step: int | None) -> None:
    assert foreign_step(name) == step


def _entry(name: str, step: int | None, mtime_ns: int) -> Entry:
    return Entry(name, Path("."), EntryKind.FOREIGN, step, False, False, mtime_ns)


def test_newest_first_places_stepless_names_by_mtime() -> None:
    entries = [
        _entry("epoch=0-step=100.ckpt", 100, 10),
        _entry("epoch=1-step=200.ckpt", 200, 20),
        _entry("last.ckpt", None, 25),
        _entry("old-manual.pt", None, 5),
    ]
    assert [e.name for e in newest_first(entries)] == [
        "last.ckpt",
        "epoch=1-step=200.ckpt",
        "epoch=0-step=100.ckpt",
        "old-manual.pt",
    ]


@given(st.lists(st.tuples(st.none() | st.integers(0, 50), st.integers(0, 100)), max_size=12))
def test_newest_first_is_a_permutation_ordered_by_step(items: list[tuple[int | None, int]]) -> None:
    entries = [_entry(f"e{i}", step, mtime) for i, (step, mtime) in enumerate(items)]
    ordered = newest_first(entries)
    assert sorted(e.name for e in ordered) == sorted(e.name for e in entries)
    steps = [e.step for e in ordered if e.step is not None]
    assert steps == sorted(steps, reverse=True)
