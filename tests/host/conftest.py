"""One real ComfyUI server per test session, with the plugin and the test-only probe node loaded."""
from __future__ import annotations

import asyncio
import gc
import itertools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from comfy_server import BASE_DIR, COMFY_ROOT, MODELS_DIR, ComfyServer, ensure_models  # noqa: E402
from example_graphs import link_stand_ins  # noqa: E402

WORKFLOWS = ROOT / "workflows"
PROBE_NODES = Path(__file__).resolve().parent / "probe_nodes"
_seeds = itertools.count(1000)
PLUGIN = BASE_DIR / "custom_nodes" / "comfyui-distorch"


def pytest_configure(config: pytest.Config) -> None:
    # The probe folder is a ComfyUI plugin, not a test package: never let pytest collect it.
    config.addinivalue_line("norecursedirs", "probe_nodes")


@pytest.fixture(autouse=True)
def collect_garbage_after_each_test():
    """In-process tests load GB-sized models whose patchers, engines and hooks form reference cycles; Python's
    collector would free them only much later, so a run would hold every test's models at once (OOM on CI)."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def models() -> dict[str, Path]:
    return ensure_models("tiny")


@pytest.fixture(scope="session")
def stand_ins(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder naming the files the shipped examples name, linked to synthesized stand-ins."""
    return link_stand_ins(tmp_path_factory.mktemp("stand-ins"), {**models, **ensure_models("examples")})


@pytest.fixture(scope="session")
def server(models: dict[str, Path], stand_ins: Path, tmp_path_factory: pytest.TempPathFactory) -> ComfyServer:
    work = tmp_path_factory.mktemp("comfy")
    with ComfyServer(log_path=work / "server.log", output_dir=work / "output",
                     extra_custom_nodes=[PROBE_NODES], extra_models=stand_ins) as running:
        yield running


@pytest.fixture(scope="session")
def object_info(server: ComfyServer) -> dict:
    return server.get("/object_info")


@pytest.fixture
def fresh_seed() -> int:
    """A seed no other test used: identical prompts are answered from ComfyUI's cache without running."""
    return next(_seeds)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    running = item.funcargs.get("server") if hasattr(item, "funcargs") else None
    if report.failed and running is not None:
        report.sections.append(("ComfyUI server log (tail)", running.log_tail(80)))


@pytest.fixture(scope="session")
def comfy_nodes(models: dict[str, Path]):
    """ComfyUI's `nodes` with its built-in extra nodes and this plugin loaded, as the server does."""
    from synth.comfy_env import import_comfy  # scripts/ is on sys.path (conftest)

    import_comfy(COMFY_ROOT)  # --cpu, and ComfyUI's tree first on sys.path
    import utils.extra_config  # noqa: F401  (must precede `import nodes`)
    import folder_paths
    import nodes

    assert Path(nodes.__file__).resolve().parent == COMFY_ROOT.resolve()
    for kind in ("diffusion_models", "checkpoints", "text_encoders", "vae", "loras", "clip_vision", "controlnet"):
        folder_paths.add_model_folder_path(kind, str(MODELS_DIR / kind))
    if "TripleCLIPLoader" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if "UNETLoaderDevice" not in nodes.NODE_CLASS_MAPPINGS:
        assert asyncio.run(nodes.load_custom_node(str(PLUGIN)))
    return nodes
