"""The registry refuses duplicates and names the allowed entries."""
from __future__ import annotations

import pytest

import regrow
from regrow.registry import Registry


def test_register_get_names_and_duplicates():
    r = Registry("widget")
    assert len(r) == 0 and "a" not in r

    @r.register("b")
    def b():
        return 2

    r.add("a", 1)
    assert r.get("a") == 1 and r.get("b") is b
    assert r.names() == ["a", "b"] and list(r) == ["a", "b"] and len(r) == 2 and "a" in r
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        r.add("a", 3)
    assert r.get("a") == 1  # the first entry survives
    with pytest.raises(ValueError, match="unknown widget 'c'; allowed: a, b"):
        r.get("c")


def test_method_registry_holds_the_core_methods():
    for name in ("dense", "static", "snip", "set", "rigl", "gmp"):
        cls = regrow.METHODS.get(name)
        assert cls.name == name and issubclass(cls, regrow.SparseMethod)
    with pytest.raises(ValueError, match="method 'set' is already registered"):
        regrow.METHODS.add("set", object)
