"""Error types shared by every protocol core.

As in h11, errors are split by whose fault they are: a caller that misuses a
core gets :class:`LocalProtocolError`; bytes or messages from a peer that break
the protocol raise :class:`RemoteProtocolError` at the decode boundary, where
the adapter drops and counts them.  Ordinary outcomes (a stale term, a denied
vote) are never exceptions.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base of every protocol error raised by the cores."""


class LocalProtocolError(ProtocolError):
    """The caller used a core in a way the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something malformed; the adapter drops it and counts it."""
