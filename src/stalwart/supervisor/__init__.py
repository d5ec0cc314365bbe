"""The supervisor: the one place that knows all the parts, and its single event loop.

Split by concern into mixins over one shared state (see `state.py`); `core.py` holds
the loop, launching and the end of attempts.
"""

from stalwart.supervisor.core import Supervisor

__all__ = ["Supervisor"]
