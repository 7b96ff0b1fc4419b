"""interlook's extension SDK and the extensions shipped with it."""

from __future__ import annotations

from interlook_ext.base import Extension, Provider, Provisioner, ServiceFeed
from interlook_ext.runner import ExtensionRunner

__all__ = ["Extension", "ExtensionRunner", "Provider", "Provisioner", "ServiceFeed"]
