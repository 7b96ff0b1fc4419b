"""Finding extensions by name through Python entry points.

A package adds an extension by declaring, in its pyproject.toml::

    [project.entry-points."interlook.extensions"]
    "ipam.mine" = "my_package.module:MyIpam"

and nothing in this repository needs to change.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from interlook_core.errors import ConfigError
from interlook_ext.base import Extension

__all__ = ["ENTRY_POINT_GROUP", "installed_extensions", "load_extension_class"]

ENTRY_POINT_GROUP = "interlook.extensions"


def installed_extensions() -> set[str]:
    """The names of every installed extension (``kind.name``)."""
    return {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_extension_class(name: str) -> type[Extension]:
    """Import the class behind an extension name.

    Raises:
        ConfigError: no extension has that name, or it cannot be imported.
    """
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not matches:
        known = ", ".join(sorted(installed_extensions())) or "none"
        raise ConfigError(f"no installed extension named {name!r}; installed: {known}")
    try:
        cls = matches[0].load()
    except Exception as exc:
        raise ConfigError(f"extension {name!r} cannot be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Extension)):
        raise ConfigError(f"extension {name!r} is not an interlook Extension class")
    kind = name.partition(".")[0]
    if (kind == "provider") != (cls.role == "provider"):
        raise ConfigError(
            f"extension {name!r} is a {cls.role}, which its kind {kind!r} is not"
        )
    return cls
