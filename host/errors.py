"""The error family every CLI catches once, at the top, to print one line and exit non-zero."""
from __future__ import annotations


class HarnessError(Exception):
    """An expected failure (bad input, failed gate, missing device). ``str()`` is one line."""


class BuildError(HarnessError):
    pass


class GateError(BuildError):
    """A converted model failed a verification gate; the message names the component and the check."""
