"""The project's error types. CLIs catch :class:`RagError` at the top, print one line and exit 1."""

from __future__ import annotations


class RagError(Exception):
    """Base class for every error the project raises on purpose (bad input, bad config, bad index)."""


class ConfigError(RagError, ValueError):
    """A config file or a ``key=value`` override is wrong; the message names the bad value and the fix."""


class LoadError(RagError):
    """A file could not be turned into documents.

    Attributes:
        kind: a short machine-readable reason: ``unsupported``, ``empty``, ``encrypted``, ``corrupt``,
            ``too_large``, ``timeout``, ``memory``, ``crashed``, ``encoding``, ``missing_dependency``, ``unreadable``.
        sha256: hash of the bytes that were read before the failure ("" when the file was not read).
    """

    def __init__(self, kind: str, message: str, sha256: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.sha256 = sha256


class IndexStateError(RagError):
    """An index folder is missing, locked, from another format version, or built with another embedder."""


class ModelUnavailableError(RagError):
    """A model could not be found locally nor downloaded in the allowed time."""
