"""The node's errors: each names what is wrong; a series rejection carries a machine-readable reason."""

from __future__ import annotations


class NodeError(Exception):
    """Base class of the node's own errors."""


class ConfigError(NodeError):
    """The configuration file is unreadable or invalid; the message names the file and the key."""


class InvalidSeriesError(NodeError):
    """A received series cannot become a volume; it is kept with its reason, never retried as is."""

    def __init__(self, series_uid: str, reason: str, detail: str) -> None:
        super().__init__(f"series {series_uid} rejected ({reason}): {detail}")
        self.series_uid = series_uid
        self.reason = reason
        self.detail = detail



class StartupError(NodeError):
    """The node cannot start as configured; the one-line message names the file, key or port."""
