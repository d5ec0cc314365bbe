"""The command line: one module per subcommand, `main` assembles them (console script)."""

from stalwart.cli.main import main

__all__ = ["main"]
