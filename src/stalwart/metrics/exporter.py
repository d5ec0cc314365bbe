"""Where the metrics go: an HTTP listener to scrape, a textfile rewritten atomically.

The listener is prometheus_client's own WSGI server on its daemon thread; the textfile is
written by `prometheus_client.write_to_textfile` (a temporary file in the same directory,
then rename(2): a reader sees the old file or the new one, never half of one) on a thread
of its own, every `textfile_every_s`, when poked (an attempt ended), and once more at exit.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from stalwart.errors import UsageError
from stalwart.metrics.config import MetricsConfig, parse_listen
from stalwart.observation import AttemptEnded, JobEnded, Observer

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'stalwart[metrics]'"


def require_client() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise UsageError(
            f"metrics are configured but prometheus-client is not installed: {INSTALL_HINT}"
        ) from None


class Exporter(Observer):
    """Serves and writes one registry; starts in `__init__` (a bind error is exit 2)."""

    def __init__(self, config: MetricsConfig, registry: Any, job: str) -> None:
        from prometheus_client import start_http_server

        self._config, self._registry, self._job = config, registry, job
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None
        if config.listen is not None:
            host, port = parse_listen(config.listen)
            try:
                self._server, self._server_thread = start_http_server(
                    port, addr=host, registry=registry
                )
            except OSError as exc:
                raise UsageError(
                    f"metrics.listen {config.listen}: cannot listen: {exc.strerror or exc}; "
                    "pick another address or port"
                ) from None
            self.address = (host, int(self._server.server_port))
            logger.info(
                "%s: metrics on http://%s:%d/metrics", job, self.address[0], self.address[1]
            )
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._failed_logged = False
        if config.textfile is not None:
            self._write()  # a directory that cannot be written is found now, and said once
            self._writer = threading.Thread(
                target=self._write_loop, name="stalwart-metrics-textfile", daemon=True
            )
            self._writer.start()

    def _write(self) -> None:
        from prometheus_client import write_to_textfile

        path = self._config.textfile
        if path is None:
            return
        try:
            write_to_textfile(str(path), self._registry)
        except OSError as exc:
            if not self._failed_logged:
                self._failed_logged = True
                logger.warning(
                    "%s: cannot write metrics.textfile %s: %s (retried quietly)",
                    self._job,
                    path,
                    exc.strerror or exc,
                )
            return
        if self._failed_logged:
            self._failed_logged = False
            logger.info("%s: metrics.textfile %s written again", self._job, path)

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            self._poke.wait(self._config.textfile_every_s)
            self._poke.clear()
            if not self._stop.is_set():
                self._write()

    def attempt_ended(self, ended: AttemptEnded) -> None:
        self._poke.set()

    def job_ended(self, ended: JobEnded) -> None:
        self._poke.set()

    def close(self) -> None:
        self._stop.set()
        self._poke.set()
        if self._writer is not None:
            self._writer.join(5.0)
            self._write()  # the final values (up 0)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._server_thread is not None:
                self._server_thread.join(5.0)
