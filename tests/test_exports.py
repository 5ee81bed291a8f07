"""Each public name is exported once, and every export exists."""

import types

import pytest

import chaos
import system


@pytest.mark.parametrize("module", [system, chaos])
def test_public_names_are_exported_once(module: types.ModuleType) -> None:
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert hasattr(module, name), name
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public <= set(module.__all__), public - set(module.__all__)
