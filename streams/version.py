"""The package version, and ``--version`` for every command line.

>>> import argparse
>>> p = argparse.ArgumentParser(prog="pricing-x")
>>> _ = add_version(p)
>>> __version__ != ""
True
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pricing-streams")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--version`` (prints ``<prog> <version>`` and exits 0) to ``parser``."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser
