"""The layout's dependency rule, read from the import graph (docs/architecture.md, "Map").

- `stalwart.policy.*` imports only the standard library, pydantic, other policy modules and
  `stalwart.types` / `stalwart.clock` / `stalwart.errors`;
- nothing under `policy/` imports the supervisor or the command line;
- the supervisor never imports torch (nor the trainer-side torch package);
- importing `stalwart.policy.restart` loads neither fsspec, psutil, watchdog nor torch;
- no module in `src/` is over 500 lines.

The graph is read with `ast` from the source, so a rule breaks the moment an import is
written, whether or not it runs; the loading rule is checked in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "stalwart"
MAX_LINES = 500

THIRD_PARTY_FOR_POLICY = frozenset({"pydantic"})
STALWART_FOR_POLICY = ("stalwart.policy", "stalwart.types", "stalwart.clock", "stalwart.errors")
HEAVY = ("fsspec", "psutil", "watchdog", "torch", "apscheduler")


def module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = SRC) -> Iterator[tuple[int, str]]:
    """(line, dotted module) for every import in the file, at any depth (lazy ones too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from stalwart import x` imports the module stalwart.x
                yield node.lineno, f"{module}.{alias.name}"


def is_stdlib(module: str) -> bool:
    return module.split(".", maxsplit=1)[0] in sys.stdlib_module_names or module == "__future__"


def policy_violations(path: Path, root: Path = SRC) -> list[str]:
    found = []
    for line, module in imports_of(path, root):
        top = module.split(".")[0]
        if is_stdlib(module) or top in THIRD_PARTY_FOR_POLICY:
            continue
        # `from stalwart.types import ExitKind` also yields "stalwart.types.ExitKind", and
        # `from stalwart import x` yields "stalwart" (an empty package) and "stalwart.x".
        if module == "stalwart" or any(
            module == ok or module.startswith(ok + ".") for ok in STALWART_FOR_POLICY
        ):
            continue
        found.append(f"{path.relative_to(root)}:{line} imports {module}")
    return found


def all_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_policy_imports_only_the_standard_library_pydantic_and_the_shared_types() -> None:
    policy = sorted((PACKAGE / "policy").glob("*.py"))
    assert len(policy) >= 8, "the policy package moved?"
    violations = [v for path in policy for v in policy_violations(path)]
    assert not violations, "\n".join(violations)


def test_the_rule_catches_a_policy_module_that_imports_psutil(tmp_path: Path) -> None:
    original = (PACKAGE / "policy" / "restart.py").read_text()
    text = original.replace("import enum\n", "import enum\n\nimport psutil\n", 1)
    assert text != original
    probe = tmp_path / "stalwart" / "policy" / "restart.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(text)
    line = _line_of(text, "import psutil")
    assert policy_violations(probe, tmp_path) == [
        f"{Path('stalwart/policy/restart.py')}:{line} imports psutil"
    ]


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line == needle)


@pytest.mark.parametrize("forbidden", ["stalwart.supervisor", "stalwart.cli"])
def test_nothing_under_policy_imports_the_supervisor_or_the_cli(forbidden: str) -> None:
    hits = [
        f"{path.relative_to(SRC)}:{line} imports {module}"
        for path in sorted((PACKAGE / "policy").glob("*.py"))
        for line, module in imports_of(path)
        if module == forbidden or module.startswith(forbidden + ".")
    ]
    assert not hits, "\n".join(hits)


def test_the_supervisor_never_imports_torch() -> None:
    hits = [
        f"{path.relative_to(SRC)}:{line} imports {module}"
        for path in sorted((PACKAGE / "supervisor").glob("*.py"))
        for line, module in imports_of(path)
        if module.split(".")[0] in ("torch", "lightning", "transformers")
        or module.startswith("stalwart.torch")
        or module in ("stalwart.lightning", "stalwart.hf")
    ]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize(
    "module", ["stalwart.policy.restart", "stalwart.policy.hang", "stalwart.policy.retention"]
)
def test_importing_a_policy_module_loads_no_heavy_library(module: str) -> None:
    probe = f"import sys, {module}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == "", f"{module} loads {result.stdout.strip()}"


def test_no_module_is_over_500_lines() -> None:
    long = [
        f"{path.relative_to(SRC)}: {n} lines"
        for path in all_modules()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, "\n".join(long)
