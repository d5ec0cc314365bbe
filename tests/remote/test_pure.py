"""The decisions, as pure functions: grouping a listing, judging a remote checkpoint,
remote retention, retry delays and the config."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from stalwart.checkpoint.layout import MANIFEST_NAME, checkpoint_name
from stalwart.checkpoint.manifest import FileEntry, HashAlgo, Manifest, render_manifest
from stalwart.remote import (
    RemoteCheckpoint,
    RemoteConfig,
    RemoteState,
    UploadOutcome,
    UploadResult,
    drain_message,
    group_objects,
    plan_remote_retention,
    pull_target,
    remote_rows,
    retry_delay_s,
    size_problem,
)
from stalwart.remote.listing import RemoteEntry, judge


def manifest(step: int, sizes: dict[str, int]) -> Manifest:
    files = tuple(FileEntry(path, size, "0" * 32) for path, size in sorted(sizes.items()))
    return Manifest(step, 1.7e9, "run", 0, HashAlgo.XXH3_128, files)


def test_group_objects_newest_first_ignoring_strangers() -> None:
    objects = {
        "step-000000002/a": 1,
        "step-000000002/MANIFEST.json": 5,
        "step-000000010/b/c": 2,
        ".staging-step-000000011-1/a": 3,  # not a checkpoint name
        "notes.txt": 4,
        "step-000000003": 9,  # an object, not a directory
    }
    entries = group_objects(objects)
    assert [e.name for e in entries] == ["step-000000010", "step-000000002"]
    assert entries[0].objects == {"b/c": 2}
    assert entries[1].has_manifest
    assert not entries[0].has_manifest


def test_judge() -> None:
    m = manifest(7, {"a": 3, "d/b": 4})
    raw = render_manifest(m)
    entry = RemoteEntry("step-000000007", 7, {"a": 3, "d/b": 4, MANIFEST_NAME: len(raw)})
    assert judge(entry, raw, "u").state is RemoteState.COMPLETE
    assert judge(entry, None, "u").state is RemoteState.INCOMPLETE
    short = RemoteEntry("step-000000007", 7, {"a": 3, "d/b": 3, MANIFEST_NAME: len(raw)})
    judged = judge(short, raw, "u")
    assert judged.state is RemoteState.INVALID
    assert "d/b: 3 bytes, manifest says 4" in judged.reason
    assert judge(entry, b"{not json", "u").state is RemoteState.INVALID
    other_step = RemoteEntry("step-000000008", 8, entry.objects)
    assert "step 7" in judge(other_step, raw, "u").reason


def test_size_problem_names_the_missing_file() -> None:
    assert size_problem(manifest(1, {"a": 1, "b": 2}), {"a": 1}) == "b: missing"
    assert size_problem(manifest(1, {"a": 1}), {"a": 1, "extra": 5}) is None


def remote(step: int, state: RemoteState) -> RemoteCheckpoint:
    return RemoteCheckpoint(checkpoint_name(step), step, "u", state, "", 10, {})


listings = st.lists(
    st.tuples(st.integers(0, 50), st.sampled_from(list(RemoteState))),
    unique_by=lambda pair: pair[0],
    max_size=12,
).map(lambda pairs: [remote(step, state) for step, state in pairs])


@given(listings, st.integers(1, 4), st.data())
def test_remote_retention_never_deletes_what_must_stay(
    checkpoints: list[RemoteCheckpoint], keep_last: int, data: st.DataObject
) -> None:
    names = [c.name for c in checkpoints]
    protect = data.draw(st.sets(st.sampled_from(names)) if names else st.just(set()))
    plan = plan_remote_retention(checkpoints, keep_last, protect=protect)
    deleted = {item.name for item in plan.delete}
    complete = sorted((c for c in checkpoints if c.complete), key=lambda c: -c.step)
    if complete:
        newest = complete[0]
        assert newest.name not in deleted
        assert not deleted & {c.name for c in complete[:keep_last]}
        newer = {c.name for c in checkpoints if c.step > newest.step}
        assert not deleted & newer, "an upload in progress may be newer than the newest"
        older_incomplete = {
            c.name
            for c in checkpoints
            if not c.complete and c.step < newest.step and c.name not in protect
        }
        assert older_incomplete <= deleted, "leftovers of interrupted uploads are cleaned"
    else:
        assert not deleted
    assert not deleted & protect


def test_remote_retention_keeps_last_n() -> None:
    checkpoints = [remote(step, RemoteState.COMPLETE) for step in (5, 4, 3, 2, 1)]
    plan = plan_remote_retention(checkpoints, 2)
    assert [i.name for i in plan.delete] == [checkpoint_name(s) for s in (1, 2, 3)]


def test_retry_delay_doubles_up_to_the_cap() -> None:
    assert [retry_delay_s(n, 1.0, 5.0) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert retry_delay_s(10_000, 1.0, 5.0) == 5.0


def test_config_checks_url_and_retry_bounds() -> None:
    assert not RemoteConfig().enabled
    assert RemoteConfig(url="  ").url is None
    assert RemoteConfig(url="s3://bucket/prefix").enabled
    with pytest.raises(ValidationError, match="not a URL with a protocol"):
        RemoteConfig(url="/mnt/ckpt")
    with pytest.raises(ValidationError, match="names no bucket"):
        RemoteConfig(url="s3://")
    with pytest.raises(ValidationError, match="retry_max_s"):
        RemoteConfig(url="s3://b", retry_initial_s=10, retry_max_s=1)
    with pytest.raises(ValidationError, match="extra"):
        RemoteConfig.model_validate({"url": "s3://b", "keep": 3})
    assert RemoteConfig.model_fields["keep_last"].description


def test_pull_target() -> None:
    assert pull_target(None) is None
    assert pull_target(" Latest ") is None
    assert pull_target("step-000000042") == "step-000000042"
    assert pull_target("42") == "step-000000042"
    with pytest.raises(ValueError, match="--latest"):
        pull_target("../etc")


def test_remote_rows_carry_the_manifest_fields() -> None:
    m = manifest(3, {"a": 5})
    raw = render_manifest(m)
    entry = RemoteEntry("step-000000003", 3, {"a": 5, MANIFEST_NAME: len(raw)})
    (row,) = remote_rows([judge(entry, raw, "u")])
    assert (row.name, row.state, row.files, row.run_id) == (
        "step-000000003",
        RemoteState.COMPLETE,
        1,
        "run",
    )
    assert row.size_bytes == 5 + len(raw)
    (bare,) = remote_rows([judge(entry, None, "u")])
    assert bare.files == 0 and bare.created_unix is None


def upload(outcome: UploadOutcome, error: str | None = None) -> UploadResult:
    persist_s = 12.5 if outcome is UploadOutcome.UPLOADED else None
    return UploadResult("step-000000009", 9, outcome, True, "s3://b/x", 1, 1, persist_s, 1, error)


def test_drain_message_says_plainly_what_the_next_machine_gets() -> None:
    made_it = drain_message("step-000000009", upload(UploadOutcome.UPLOADED), "step-000000009")
    assert made_it == (
        "emergency checkpoint step-000000009 reached the remote copy in 12.5 s; "
        "the next machine will resume from step-000000009"
    )
    late = drain_message("step-000000009", None, "step-000000007", deadline_s=25)
    assert "did NOT reach the remote copy within 25 s" in late
    assert late.endswith("the next machine will resume from step-000000007")
    failed = drain_message("step-000000009", upload(UploadOutcome.FAILED, "gone"), None)
    assert "(failed: gone)" in failed and "start from scratch" in failed
    assert drain_message(None, None, "step-000000007").startswith("no emergency checkpoint")
