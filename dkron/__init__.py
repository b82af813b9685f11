"""A Dkron-compatible, distributed, fault-tolerant cron scheduler."""

__version__ = "0.1.0"

__all__ = ["__version__"]
