"""Every ComfyUI name the adapter and the patcher touch exists on this host, with signatures we can use.

The list is `nodes/comfy_surface.py` (one entry per name). A ComfyUI change that renames, removes or changes
the signature of anything listed fails here, and so does a use of a ComfyUI name in our code that the list
does not have.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

NODES_DIR = Path(__file__).resolve().parents[2] / "nodes"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def surface(comfy_nodes):
    """The list as ComfyUI imported our package (so `nodes` below is ComfyUI's, and our package is loaded)."""
    package = sys.modules[comfy_nodes.NODE_CLASS_MAPPINGS["UNETLoaderDevice"].__module__.rpartition(".nodes")[0]]
    return importlib.import_module(package.__name__ + ".nodes.comfy_surface")


@pytest.fixture(scope="module")
def instances(comfy_nodes, models) -> dict[str, Any]:
    """One real object of each class whose instance attributes are listed, built from the tiny models."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.samplers

    def run(node_id: str, **inputs):
        cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
        return getattr(cls(), cls.FUNCTION)(**inputs)[0]

    patcher = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), CPU, CPU)
    unet = run("UNETLoader", unet_name=models["flux_tiny"].name, weight_dtype="default")
    return {
        "comfy.model_patcher.ModelPatcher": patcher,
        "comfy.model_management.LoadedModel": comfy.model_management.LoadedModel(patcher),
        "comfy.sd.CLIP": run("CLIPLoader", clip_name=models["clip_l"].name, type="stable_diffusion"),
        "comfy.sd.VAE": run("VAELoader", vae_name=models["taesd"].name),
        "comfy.clip_vision.ClipVisionModel": run("CLIPVisionLoader", clip_name=models["clip_vision"].name),
        "comfy.controlnet.ControlNet": run("ControlNetLoader", control_net_name=models["controlnet_sd15_tiny"].name),
        "comfy.model_base.BaseModel": unet.model,
        "comfy.samplers.CFGGuider": comfy.samplers.CFGGuider(unet),
    }


def resolve(path: str, instances: dict[str, Any]) -> Any:
    """The object a surface path names on this host (AttributeError/ImportError when it is gone)."""
    head, _, instance_attrs = path.partition("#")
    parts = head.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
            break
        except ImportError:
            if split == 1:
                raise
    for attr in parts[split:]:
        obj = getattr(obj, attr)
    if instance_attrs:
        obj = instances[head]
        assert isinstance(obj, resolve(head, instances)), f"{head}: the test built a {type(obj).__name__}"
        for attr in instance_attrs.split("."):
            obj = getattr(obj, attr)
    return obj


def _takes_self(path: str, instances: dict[str, Any]) -> int:
    """1 when ``path`` is a plain method looked up on its class (our call passes self implicitly)."""
    parent, _, leaf = path.rpartition(".")
    if "#" in path or not parent:
        return 0
    try:
        owner = resolve(parent, instances)
    except (AttributeError, ImportError):
        return 0
    return int(inspect.isclass(owner) and inspect.isfunction(inspect.getattr_static(owner, leaf, None)))


def _entries(surface, **flags):
    return [n for n in surface.SURFACE if all(getattr(n, k) == v for k, v in flags.items())]


def test_every_listed_name_exists_here(surface, instances) -> None:
    missing = []
    for name in _entries(surface, optional=False):
        try:
            resolve(name.path, instances)
        except (AttributeError, ImportError, KeyError) as error:
            missing.append(f"{name.path} ({name.why}): {type(error).__name__}: {error}")
    assert not missing, "ComfyUI names our code needs are gone:\n" + "\n".join(missing)


def test_our_calls_still_bind_to_the_host_signatures(surface, instances) -> None:
    broken = []
    for name in surface.SURFACE:
        if name.call is None:
            continue
        try:
            target = resolve(name.path, instances)
        except (AttributeError, ImportError) as error:
            if name.optional:
                continue
            raise AssertionError(f"{name.path} is gone") from error
        positional, keywords = name.call
        positional += _takes_self(name.path, instances)
        signature = inspect.signature(target)
        try:
            signature.bind(*range(positional), **{k: None for k in keywords})
        except TypeError as error:
            broken.append(f"{name.path}{signature}: our call with {positional} positional + {keywords}: {error}")
    assert not broken, "\n".join(broken)


def test_streaming_patcher_overrides_accept_every_host_argument(surface, comfy_nodes) -> None:
    import comfy.model_patcher

    ours = sys.modules[surface.__name__.rpartition(".")[0] + ".streaming_patcher"].StreamingModelPatcher
    for name in _entries(surface, override=True):
        method = name.path.rpartition(".")[2]
        base = getattr(comfy.model_patcher.ModelPatcher, method, None)
        if base is None:
            assert name.optional, f"{name.path} is gone from this host"
            continue
        base_params = inspect.signature(base).parameters
        our_params = inspect.signature(getattr(ours, method)).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in our_params.values())
        for param in base_params.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            assert param.name in our_params or takes_any, (
                f"{name.path}: the host may pass {param.name!r}, StreamingModelPatcher.{method} does not take it")


# --- the list is complete: our sources use nothing of ComfyUI that it lacks ------------------------------------
def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _used_comfy_names() -> set[str]:
    """Dotted `comfy.*`/`folder_paths.*` chains and `import_module("...")` targets in nodes/*.py."""
    used = set()
    for path in NODES_DIR.glob("*.py"):
        if path.name == "comfy_surface.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                dotted = _dotted(node)
                if dotted and dotted.split(".")[0] in ("comfy", "folder_paths"):
                    used.add(dotted)
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                used.add(node.args[0].value)
    return used


def _patcher_self_names() -> set[str]:
    """`self.X` and `self.model.Y` that StreamingModelPatcher uses but does not define itself."""
    tree = ast.parse((NODES_DIR / "streaming_patcher.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "StreamingModelPatcher")
    own = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    own |= {t.target.id for t in cls.body if isinstance(t, ast.AnnAssign) and isinstance(t.target, ast.Name)}
    used = set()
    for node in ast.walk(cls):
        dotted = _dotted(node) if isinstance(node, ast.Attribute) else None
        if not dotted or not dotted.startswith("self."):
            continue
        parts = dotted.split(".")
        if parts[1] in own or parts[1] == "distorch":
            continue
        used.add("#model." + parts[2] if parts[1] == "model" and len(parts) > 2 else parts[1])
    return used


def test_every_comfy_name_our_code_uses_is_listed(surface) -> None:
    listed = [n.path.replace("#", ".") for n in surface.SURFACE]
    unlisted = sorted(u for u in _used_comfy_names() if not any(p == u or p.startswith(u + ".") for p in listed))
    assert not unlisted, f"add these to nodes/comfy_surface.py: {unlisted}"


def test_every_modelpatcher_member_the_patcher_uses_is_listed(surface) -> None:
    listed = {n.path[len(surface.MP):].lstrip(".") for n in surface.SURFACE if n.path.startswith(surface.MP)}
    unlisted = sorted(u for u in _patcher_self_names()
                      if u not in listed and u.lstrip("#") not in listed and "#" + u not in listed)
    assert not unlisted, f"StreamingModelPatcher uses ModelPatcher members not in nodes/comfy_surface.py: {unlisted}"

