"""The installed distribution's version, for ``ackgate --version`` and the start-up line."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version


def version() -> str:
    try:
        return _dist_version("ackgate")
    except PackageNotFoundError:  # a checkout that was never installed
        return "0+unknown"
