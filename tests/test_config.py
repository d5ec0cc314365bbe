"""Config: valid files load; every kind of bad input is refused with a precise message."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stalwart import config
from stalwart.errors import ConfigError
from tests.supervised import TRAINER, environment, stalwart_argv

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_configs_load(path: Path) -> None:
    job = config.load(path)
    assert job.command
    assert config.validate(config.read_yaml(path), str(path)) == job


def test_examples_exist() -> None:
    assert len(CONFIGS) >= 2


def test_defaults_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: a\ncommand: python train.py --lr 3e-4\n")
    job = config.load(path)
    assert job.command == ["python", "train.py", "--lr", "3e-4"]
    assert job.stop.signal == "SIGTERM" and job.restart.jitter == "full"
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(config.dump(job))
    assert config.load(dumped) == job


def test_overrides_and_command_line(tmp_path: Path) -> None:
    job = config.load(
        None,
        command=["python", "x.py"],
        overrides=["restart.max_restarts=2", "stop.signal=int"],
        base={"name": "n1", "stop.grace_s": 3.5, "state_dir": None},
    )
    assert job.restart.max_restarts == 2
    assert job.stop.signal == "SIGINT"
    assert job.stop.grace_s == 3.5
    assert job.name == "n1"


def _problems(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "bad.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    message = str(caught.value)
    assert str(path) in message
    return message


def test_malformed_yaml(tmp_path: Path) -> None:
    assert "not valid YAML" in _problems(tmp_path, "command: [python\nname: x\n")


def test_unknown_key_names_allowed_keys(tmp_path: Path) -> None:
    message = _problems(tmp_path, "command: [x]\nrestart:\n  max_restart: 3\n")
    assert "restart.max_restart: unknown key" in message
    assert "max_restarts" in message and "backoff_initial_s" in message


def test_wrong_type(tmp_path: Path) -> None:
    message = _problems(tmp_path, "command: [x]\nrestart:\n  max_restarts: many\n")
    assert "restart.max_restarts" in message and "'many'" in message


def test_negative_duration(tmp_path: Path) -> None:
    message = _problems(tmp_path, "command: [x]\nstop:\n  grace_s: -1\n")
    assert "stop.grace_s" in message and "greater than or equal to 0" in message


def test_missing_command(tmp_path: Path) -> None:
    assert "command: required key is missing" in _problems(tmp_path, "name: x\n")


def test_empty_command(tmp_path: Path) -> None:
    assert "command" in _problems(tmp_path, "command: []\n")


def test_too_large(tmp_path: Path) -> None:
    message = _problems(tmp_path, b"# " + b"x" * (10 * 1024 * 1024) + b"\ncommand: [x]\n")
    assert "at most" in message


def test_bad_signal_and_regex(tmp_path: Path) -> None:
    assert "stop.signal" in _problems(tmp_path, "command: [x]\nstop: {signal: SIGKILL}\n")
    message = _problems(
        tmp_path, "command: [x]\nclassify:\n  patterns:\n    - {regex: '(', kind: OOM}\n"
    )
    assert "classify.patterns.0.regex" in message


def test_backoff_cap_below_initial(tmp_path: Path) -> None:
    message = _problems(
        tmp_path, "command: [x]\nrestart: {backoff_initial_s: 10, backoff_max_s: 1}\n"
    )
    assert "backoff_max_s" in message


BAD_CONFIGS = {
    "malformed": "command: [python\n",
    "unknown_key": "command: CMD\nretsart: {}\n",
    "wrong_type": "command: CMD\nrestart: {max_restarts: lots}\n",
    "negative": "command: CMD\nrestart: {window_s: -5}\n",
    "no_command": "name: job\n",
    "huge": "command: CMD\n" + "# padding\n" * (1024 * 1024),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_cli_refuses_bad_config_and_starts_nothing(
    tmp_path: Path, runtime_dir: Path, case: str
) -> None:
    canary = tmp_path / "canary"
    command = f"python3 {TRAINER} --canary {canary}"
    path = tmp_path / "job.yaml"
    path.write_text(BAD_CONFIGS[case].replace("CMD", command))
    result = subprocess.run(
        stalwart_argv("run", str(path), "--state-dir", str(tmp_path / "state")),
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr and "nothing was started" in result.stderr
    assert not canary.exists()
    assert not (tmp_path / "state").exists()


def test_cli_missing_program_exits_2(tmp_path: Path, runtime_dir: Path) -> None:
    result = subprocess.run(
        stalwart_argv("run", "--state-dir", str(tmp_path / "s"), "--", "no-such-program-xyz"),
        cwd=tmp_path,
        env=environment(runtime_dir),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "command not found" in result.stderr


def test_config_check_prints_effective_config(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("command: [python, t.py]\nstop: {grace_s: 7}\n")
    result = subprocess.run(
        stalwart_argv("config", "check", str(path)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    assert "grace_s: 7.0" in result.stdout and "max_restarts: 10" in result.stdout
    path.write_text("command: [python]\nstop: {grace_s: -7}\n")
    result = subprocess.run(
        stalwart_argv("config", "check", str(path)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and "stop.grace_s" in result.stderr


TORCHRUN_JOB = "command: [train.py]\ncheckpoint: {dir: /shared/ck}\n"


def test_launcher_defaults_and_torchrun_round_trip(tmp_path: Path) -> None:
    job = config.validate({"command": ["python", "t.py"]}, "x")
    assert job.launcher.kind == "direct" and job.launcher.nnodes == 1
    assert job.launcher.torchrun is None and job.launcher.max_restarts == 0
    path = tmp_path / "job.yaml"
    path.write_text(
        TORCHRUN_JOB
        + "launcher: {kind: torchrun, nnodes: 2, nproc_per_node: 8, node_rank: 1,\n"
        + "  rdzv_endpoint: ' node0:29400 ', args: [--local-addr, 10.0.0.2]}\n"
    )
    job = config.load(path)
    assert job.launcher.rdzv_endpoint == "node0:29400"
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(config.dump(job))
    assert config.load(dumped) == job


@pytest.mark.parametrize(
    ("launcher", "expected"),
    [
        ("{nproc_per_node: 2}", "launcher: nproc_per_node: only used with kind: torchrun"),
        ("{kind: torchrun, nnodes: 2}", "launcher: nnodes is 2: set rdzv_endpoint"),
        ("{kind: torchrun, rdzv_endpoint: node0}", "launcher.rdzv_endpoint: must be host:port"),
        ("{kind: torchrun, rdzv_endpoint: 'a:0'}", "launcher.rdzv_endpoint: must be host:port"),
        ("{kind: torchrun, rdzv_endpoint: 'a b:1'}", "launcher.rdzv_endpoint: must be host:port"),
        ("{kind: torchrun, node_rank: 1}", "launcher: node_rank 1 must be below nnodes (1)"),
        ("{kind: torchrun, nproc_per_node: 0}", "launcher.nproc_per_node"),
        ("{kind: torchrun, max_restarts: -1}", "launcher.max_restarts"),
        ("{kind: torchrun, torchrun: []}", "launcher.torchrun"),
        ("{kind: torchrun, args: [--nnodes=4]}", "launcher.args: --nnodes is written by stalwart"),
        ("{kind: torchrun, args: [--no-python]}", "launcher.args: --no-python is written"),
        ("{kind: mpirun}", "launcher.kind"),
        ("{nnodes: 2}", "launcher.nnodes is 2: set checkpoint.dir to a directory every node"),
    ],
)
def test_bad_launcher_combinations(tmp_path: Path, launcher: str, expected: str) -> None:
    job = "command: [train.py]\n" if "checkpoint.dir" in expected else TORCHRUN_JOB
    assert expected in _problems(tmp_path, f"{job}launcher: {launcher}\n")


def test_torchrun_must_forward_the_stop_signal(tmp_path: Path) -> None:
    text = TORCHRUN_JOB + "stop: {signal: SIGUSR1}\nlauncher: {kind: torchrun}\n"
    assert "stop.signal SIGUSR1 is not forwarded by torchrun" in _problems(tmp_path, text)
    path = tmp_path / "ok.yaml"
    path.write_text(
        text.replace("{kind: torchrun}", "{kind: torchrun, args: [--signals-to-handle=SIGUSR1]}")
    )
    assert config.load(path).stop.signal == "SIGUSR1"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("launcher: {nnodes: 2}", "rank is unknown"),  # neither node_rank nor the env var
        ("launcher: {kind: torchrun}", "training script not found: missing.py"),
    ],
)
def test_cli_refuses_a_node_it_cannot_place_and_starts_nothing(
    tmp_path: Path, runtime_dir: Path, setup: str, expected: str
) -> None:
    path = tmp_path / "job.yaml"
    command = "[missing.py]" if "torchrun" in setup else f"[python3, {TRAINER}, --canary, c]"
    path.write_text(f"command: {command}\ncheckpoint: {{dir: {tmp_path / 'ck'}}}\n{setup}\n")
    env = environment(runtime_dir)
    env.pop("STALWART_NODE_RANK", None)
    result = subprocess.run(
        stalwart_argv("run", str(path), "--state-dir", str(tmp_path / "state")),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert not (tmp_path / "c").exists() and not (tmp_path / "state").exists()
