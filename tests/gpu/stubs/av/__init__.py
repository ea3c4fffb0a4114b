"""A stand-in for PyAV on the GPU machine, which lacks it: ComfyUI imports `av` in core modules (video and audio
types, a few extra nodes) although a diffusion graph never calls it.

`import av`, `import av.x.y`, `from av.x import Name` and `av.Name.ATTR` all succeed: every submodule is made
on import by a meta-path finder and every missing attribute is a dummy class (cached, so the same name is the
same object) whose own missing attributes are dummy classes too. Calling into it does nothing useful; that is
the point - code that really needs PyAV fails at use, not at import. tests/gpu/run_on_device.sh puts the
folder on PYTHONPATH only when `import av` fails.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0.0+distorch-stub"
STUB = True


class _DummyMeta(type):
    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _dummy(f"{cls.__name__}.{name}")
        setattr(cls, name, value)
        return value


def _dummy(name: str) -> type:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs):
        return self

    return _DummyMeta(name.rsplit(".", 1)[-1], (), {"__init__": __init__, "__call__": __call__,
                                                     "__qualname__": name, "__module__": "av"})


def _module_getattr(module: types.ModuleType):
    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _dummy(f"{module.__name__}.{name}")
        setattr(module, name, value)
        return value

    return __getattr__


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds every `av.*` submodule and makes it: an empty package whose attributes are made on access."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []
        module.__getattr__ = _module_getattr(module)


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.append(_Finder())
__getattr__ = _module_getattr(sys.modules[__name__])
