"""``python -m dkron``: the command line (``dkron agent``, ``keygen``, ``version``, ...)."""

from __future__ import annotations

from dkron.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
