"""The ``refgate`` console script: Ctrl-C never prints a traceback.

The SIGINT handler is installed when this module is imported, before the
client's imports (httpx, PyNaCl, pydantic: about a third of a second), so an
interrupt during start-up exits quietly with code 130 too. Once
``app.client.cli`` is loaded, Python's own handler is back and ``cli.main``
turns ``KeyboardInterrupt`` into the same message (and, for ``send``, how to
retry without a duplicate).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130


def _quiet_exit(signum: int, frame: FrameType | None) -> None:
    os.write(2, b"interrupted\n")
    os._exit(EXIT_INTERRUPTED)


signal.signal(signal.SIGINT, _quiet_exit)


def main() -> None:
    from app.client.cli import main as cli_main

    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = EXIT_INTERRUPTED
    sys.exit(code)
