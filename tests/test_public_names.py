"""Each module's public surface is what its ``__all__`` says, and exists."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import interlook_core
import interlook_ext

MODULES = [
    info.name
    for package in (interlook_core, interlook_ext)
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + ".")
]


@pytest.mark.parametrize("name", MODULES + ["interlook_core", "interlook_ext"])
def test_all_lists_existing_names_in_order(name):
    module = importlib.import_module(name)
    names = getattr(module, "__all__", None)
    assert names is not None, f"{name} has no __all__"
    assert list(names) == sorted(names), f"{name}.__all__ is not sorted"
    for public in names:
        assert hasattr(module, public), f"{name}.__all__ lists missing {public}"


def test_the_sdk_names_are_exported():
    assert set(interlook_ext.__all__) >= {
        "Extension",
        "ExtensionRunner",
        "Provider",
        "Provisioner",
        "ServiceFeed",
    }
