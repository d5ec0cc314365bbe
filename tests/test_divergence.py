"""The divergence policy (pure): no divergence on noisy but healthy loss curves, detection
within `persist_reports` on a spike that stays and at once on NaN; the rollback bound; and
the small pieces around it (the LOSS key, the client's LOSS=nan, the sampler's skip, the
verdict, the core's kill without a stop signal)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from stalwart.channels.notify_socket import parse
from stalwart.policy import events as ev
from stalwart.policy.bookkeeping import CoreSettings
from stalwart.policy.classify import ExitContext, classify
from stalwart.policy.divergence import (
    DivergenceConfig,
    DivergenceKind,
    DivergenceRollbacks,
    LossMonitor,
)
from stalwart.policy.lifecycle import Lifecycle
from stalwart.types import ExitKind, ExitStatus

CONFIG = DivergenceConfig()


def healthy_curve(rng: random.Random, reports: int) -> list[float]:
    """Decay to a floor, multiplicative noise (normal or heavy-tailed), rare short outliers
    (fewer reports in a row than persist_reports), and slow bumps under 25 %."""
    floor = rng.uniform(0.01, 3.0)
    amplitude = rng.uniform(0.0, 10.0) * floor
    tau = rng.uniform(5, reports)
    noise = rng.uniform(0.0, 0.2)
    heavy = rng.random() < 0.5
    bump_at, bump = rng.randrange(max(reports, 1)), rng.uniform(0.0, 0.15)
    curve = []
    outlier_left, gap = 0, False
    for t in range(reports):
        level = floor + amplitude * math.exp(-t / tau)
        level *= 1 + bump * (1 - math.exp(-max(t - bump_at, 0) / 20))
        eps = rng.gauss(0, 1)
        if heavy:  # Student's t with 3 degrees of freedom
            eps /= math.sqrt(sum(rng.gauss(0, 1) ** 2 for _ in range(3)) / 3)
        value = level * max(1 + noise * eps, 0.05)
        if outlier_left == 0 and not gap and rng.random() < 0.01:
            outlier_left = rng.randint(1, CONFIG.persist_reports - 1)
        gap = False
        if outlier_left:
            outlier_left -= 1
            gap = outlier_left == 0  # a burst ends with a healthy report: it came back
            value *= rng.uniform(2, 50)
        curve.append(value)
    return curve


def run(monitor: LossMonitor, curve: list[float], first_step: int = 1) -> list[int]:
    """The indices at which a divergence was called."""
    return [i for i, loss in enumerate(curve) if monitor.observe(first_step + i, loss) is not None]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_no_divergence_on_healthy_curves(seed: int) -> None:
    assert run(LossMonitor(CONFIG), healthy_curve(random.Random(seed), 400)) == []


def test_false_positive_rate_measured() -> None:
    """Measured on 200 fixed curves of 500 reports (bench/divergence.py measures more)."""
    called = sum(
        bool(run(LossMonitor(CONFIG), healthy_curve(random.Random(seed), 500)))
        for seed in range(200)
    )
    assert called == 0, f"{called} of 200 healthy curves were called diverged"


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    healthy=st.integers(CONFIG.warmup_reports, 200),
    factor=st.floats(3.0, 1e6),
    persist=st.integers(1, 20),
)
def test_a_spike_that_stays_is_caught_within_persist_reports(
    seed: int, healthy: int, factor: float, persist: int
) -> None:
    config = DivergenceConfig(persist_reports=persist)
    rng = random.Random(seed)
    curve = [1.0 + 0.05 * rng.gauss(0, 1) for _ in range(healthy)]
    curve += [factor * (1.0 + 0.05 * rng.gauss(0, 1)) for _ in range(persist + 5)]
    monitor = LossMonitor(config)
    found = None
    for i, loss in enumerate(curve):
        found = monitor.observe(10 * i, loss)
        if found is not None:
            break
    assert found is not None
    assert found.kind is DivergenceKind.SPIKE
    assert found.step == 10 * (healthy + persist - 1)  # exactly persist reports in
    assert found.first_bad_step == 10 * healthy
    assert found.began_after_step == 10 * (healthy - 1)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    at=st.integers(0, 100),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
)
def test_a_non_finite_loss_is_caught_at_once(seed: int, at: int, bad: float) -> None:
    curve = [*healthy_curve(random.Random(seed), at), bad]
    monitor = LossMonitor(CONFIG)
    calls = [(i, monitor.observe(i + 1, loss)) for i, loss in enumerate(curve)]
    found = [(i, d) for i, d in calls if d is not None]
    assert len(found) == 1 and found[0][0] == at
    divergence = found[0][1]
    assert divergence.kind is DivergenceKind.NONFINITE
    # The last healthy report before it (earlier if a spike was already under way).
    if at == 0:
        assert divergence.began_after_step is None
    else:
        assert divergence.began_after_step is not None and divergence.began_after_step <= at
        assert divergence.first_bad_step == at + 1 or divergence.first_bad_step <= at


def test_a_spike_that_comes_back_is_not_a_divergence() -> None:
    monitor = LossMonitor(DivergenceConfig(persist_reports=5))
    curve = [1.0] * 30 + [100.0] * 4 + [1.0] + [100.0] * 4 + [1.0] * 10
    assert run(monitor, curve) == []


def test_disabled_and_silent_trainers_are_never_judged() -> None:
    monitor = LossMonitor(DivergenceConfig(enabled=False))
    assert run(monitor, [1.0] * 30 + [math.nan]) == []
    assert LossMonitor(CONFIG).baseline() is None  # no reports: nothing to judge


def test_a_new_attempt_keeps_the_baseline_not_the_streak() -> None:
    monitor = LossMonitor(DivergenceConfig(persist_reports=3))
    run(monitor, [1.0] * 20 + [50.0, 50.0])
    monitor.new_attempt()
    assert monitor.last_healthy_step is None
    assert monitor.observe(5, 50.0) is None  # the streak started over
    assert monitor.baseline() is not None


def test_rollbacks_are_bounded_and_name_the_spikes() -> None:
    rollbacks = DivergenceRollbacks(2)
    assert rollbacks.on_divergence("spike A").rollback
    assert rollbacks.on_divergence("spike B").rollback
    verdict = rollbacks.on_divergence("spike C")
    assert not verdict.rollback and verdict.give_up is not None
    assert "spike A" in verdict.give_up and "spike C" in verdict.give_up
    assert "2 of 2" in verdict.give_up


def test_the_loss_key_accepts_non_finite_values() -> None:
    message = parse(b"STEP=5\nLOSS=nan\nCKPT_STALL_S=nan")
    assert message.fields["STEP"] == 5
    assert math.isnan(float(message.fields["LOSS"]))
    assert message.malformed == 1  # the stall is still malformed
    assert parse(b"LOSS=-1.5").fields["LOSS"] == -1.5
    assert parse(b"LOSS=inf").fields["LOSS"] == math.inf
    assert parse(b"LOSS=lots").malformed == 1


def test_a_divergence_verdict_wins_over_an_exit() -> None:
    context = ExitContext(attempt=0, uptime_s=1.0, diverged="non-finite loss (nan) at step 3")
    for status in (ExitStatus(None, 9), ExitStatus(0, None)):
        verdict = classify(status, [], context)
        assert verdict.kind is ExitKind.DIVERGED and verdict.retryable
        assert "step 3" in verdict.reason
    assert ExitKind.DIVERGED.is_failure  # a failure: it spends the restart budget


def test_the_core_kills_at_once_without_the_stop_signal() -> None:
    core = Lifecycle(CoreSettings(name="t"))
    core.handle(ev.Start(0.0))
    core.handle(ev.ResumeReady(0.0))
    core.handle(ev.Launched(0, 123, 0.0))
    actions = core.handle(ev.DivergenceDetected(1.0))
    assert [type(a) for a in actions] == [ev.Kill]
    assert core.handle(ev.DivergenceDetected(1.5)) == []  # killed once


def test_the_core_ignores_a_divergence_during_a_drain() -> None:
    core = Lifecycle(CoreSettings(name="t"))
    core.handle(ev.Start(0.0))
    core.handle(ev.ResumeReady(0.0))
    core.handle(ev.Launched(0, 123, 0.0))
    core.handle(ev.StopRequested("SIGINT", 0.5))
    assert core.handle(ev.DivergenceDetected(1.0)) == []


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValidationError, match="persist_reports"):
        DivergenceConfig(persist_reports=0)
    with pytest.raises(ValidationError, match="skip_batches"):
        DivergenceConfig(skip_batches=-1)
