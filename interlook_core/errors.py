"""Exceptions raised by interlook.

All of them derive from :class:`InterlookError`, so a caller can catch the
whole family at once::

    InterlookError
     +-- ConfigError         a configuration file that cannot be used
     +-- ProtocolError       a frame or message body that breaks the protocol
     +-- ServiceDefinitionError   a service definition with a bad field
     +-- StoreError          the entries file cannot be read or written
     +-- StepError           an extension could not perform a step
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InterlookError",
    "ProtocolError",
    "ServiceDefinitionError",
    "StepError",
    "StoreError",
]


class InterlookError(Exception):
    """Root of every error interlook raises on purpose."""


class ConfigError(InterlookError):
    """A configuration file is missing, unreadable or invalid.

    The message names the file, the key and, when known, the line.
    """


class ProtocolError(InterlookError):
    """A message received on the bus does not follow docs/protocol.md."""


class ServiceDefinitionError(InterlookError):
    """A service definition has a field of the wrong type or value."""


class StoreError(InterlookError):
    """The durable entries file cannot be opened, read or written."""


class StepError(InterlookError):
    """An extension failed to perform a step; the message goes to the entry."""
