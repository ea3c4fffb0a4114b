"""The example workflows in the real ComfyUI front end, in headless Chromium: our widgets render, nothing errs.

The front end is the version the host pins (comfyui-frontend-package, installed by scripts/comfy_hosts.py into
.host/frontend), served by the host itself; Chromium is Debian's (/usr/bin/chromium, installed by
scripts/setup.sh), driven by Playwright's Python package, which never downloads a browser here. Each example is
loaded into the canvas with the same CPU changes as the server tests (tests/host/example_graphs.py: cpu devices,
a small budget, small latents), so every plan preview is one the server can make. Screenshots go to a folder
printed at the end of the module
(DISTORCH_ARTIFACTS/browser-<version>, default .artifacts/).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests" / "host")]

from comfy_hosts import front_end_root  # noqa: E402
from comfy_server import HOST, ComfyServer, ensure_models  # noqa: E402
from example_graphs import cpu_widget_values, link_stand_ins  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FRONT_END = front_end_root(HOST)
WORKFLOWS = ROOT / "workflows"
EXAMPLES = ["flux_dev_streaming", "flux_dev_two_gpus", "wan21_t2v_streaming", "sdxl_checkpoint_streaming",
            "sd_streaming"]
playwright = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-test.txt")
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no chromium (scripts/setup.sh installs it as root)"),
    pytest.mark.skipif(FRONT_END is None, reason=f"the front end {HOST.name} pins is not installed (scripts/setup.sh)"),
]

# Console errors the front end itself logs on a server without network or optional packages, unrelated to us:
NOISE = (
    "api.comfy.org",  # registry look-ups of node packs, blocked by ComfyUI's own Content-Security-Policy offline
    "Error loading core workflow templates",  # comfyui-workflow-templates is an optional package
)
NOISY_URLS = ("/api/userdata", "/user.css", "/workflow_templates/", "/templates/", "/favicon.ico")  # optional: 404


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    work = tmp_path_factory.mktemp("browser")
    stand_ins = link_stand_ins(work / "stand-ins", {**ensure_models("tiny"), **ensure_models("examples")})
    with ComfyServer(log_path=work / "server.log", output_dir=work / "output", extra_models=stand_ins,
                     front_end_root=FRONT_END) as running:
        _seen_templates_dialog(running)
        yield running


def _seen_templates_dialog(server: ComfyServer) -> None:
    """Settings of a user who has seen the start-up templates dialog: it would cover the canvas."""
    settings = json.dumps({"Comfy.TutorialCompleted": True}).encode()
    request = urllib.request.Request(server.url + "/settings", data=settings, headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).close()


@pytest.fixture(scope="module")
def artifacts(request: pytest.FixtureRequest) -> Iterator[Path]:
    """DISTORCH_ARTIFACTS/browser-<host> (default .artifacts/ in the checkout, git-ignored): kept after the run."""
    folder = Path(os.environ.get("DISTORCH_ARTIFACTS", ROOT / ".artifacts")) / f"browser-{HOST.version}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    yield folder
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        front_end = FRONT_END.parent.parent.name
        reporter.write_line(f"\nfront-end screenshots ({HOST.name}, {front_end}): {folder}")


class Console:
    """Errors the page logged, without the front end's own offline noise (NOISE, NOISY_URLS)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.startup: list[str] = []  # what the front end logged before the first graph was loaded

    def on_message(self, message: Any) -> None:
        url = (message.location or {}).get("url", "")
        if message.type != "error" or any(n in message.text for n in NOISE):
            return
        if "Failed to load resource" in message.text and any(u in url for u in NOISY_URLS):
            return
        self.errors.append(f"{message.text} ({url})")

    def on_page_error(self, error: Any) -> None:
        self.errors.append(f"page error: {error}")

    def take(self) -> list[str]:
        errors, self.errors = self.errors, []
        return errors


@pytest.fixture(scope="module")
def page(server: ComfyServer) -> Iterator[tuple[Any, Console]]:
    console = Console()
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 2000, "height": 1200})
        page.on("console", console.on_message)
        page.on("pageerror", console.on_page_error)
        page.goto(server.url)
        page.wait_for_function("() => window.app?.graph && window.app.extensionManager", timeout=120_000)
        page.wait_for_timeout(2000)  # the start-up requests settle
        console.startup = console.take()
        yield page, console
        browser.close()


def _load(page: Any, name: str) -> list[dict]:
    """Load workflows/<name>.json into the canvas, apply the CPU widget values, fit the view; the DisTorch nodes."""
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    api = json.loads((WORKFLOWS / f"{name}.api.json").read_text())
    changes = {key: cpu_widget_values(n["class_type"], n["inputs"]) for key, n in api.items()}
    page.evaluate(LOAD_SCRIPT, [ui, changes])
    page.wait_for_function(PREVIEWS_DONE, timeout=60_000)
    return page.evaluate(DISTORCH_NODES)


LOAD_SCRIPT = """async ([graph, changes]) => {
  await window.app.loadGraphData(graph);
  for (const node of window.app.graph._nodes) {
    for (const [name, value] of Object.entries(changes[String(node.id)] || {})) {
      const widget = node.widgets?.find((w) => w.name === name);
      if (widget) { widget.value = value; widget.callback?.(value); }
    }
  }
  // fit the whole graph into the canvas below the top bar (screen = (graph + offset) * scale)
  const nodes = window.app.graph._nodes, canvas = window.app.canvas;
  const x0 = Math.min(...nodes.map((n) => n.pos[0])), y0 = Math.min(...nodes.map((n) => n.pos[1] - 30));
  const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0]));
  const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
  const width = canvas.canvas.clientWidth - 120, height = canvas.canvas.clientHeight - 180;
  const scale = Math.min(width / (x1 - x0), height / (y1 - y0), 1);
  canvas.ds.scale = scale;
  canvas.ds.offset = [90 / scale - x0, 130 / scale - y0];
  canvas.setDirty(true, true);
}"""
PREVIEWS_DONE = """() => window.app.graph._nodes.filter((n) => String(n.type).startsWith("DisTorch"))
  .every((n) => n.widgets?.find((w) => w.name === "distorch_preview")?.state)"""
DISTORCH_NODES = """() => window.app.graph._nodes.filter((n) => String(n.type).startsWith("DisTorch")).map((n) => ({
  id: n.id, type: n.type,
  preview: n.widgets.find((w) => w.name === "distorch_preview").state,
  preview_height: n.widgets.find((w) => w.name === "distorch_preview").computeSize(n.size[0])[1],
  devices: n.widgets.find((w) => w.name === "compute_device").options.values,
  timeline: n.widgets.find((w) => w.name === "distorch_timeline").state }))"""


def test_the_front_end_starts_with_our_extension_loaded_and_nothing_of_ours_in_errors(
        page: tuple[Any, Console]) -> None:
    browser_page, console = page
    assert browser_page.evaluate("() => (window.app.extensions || []).map((e) => e.name)").count(
        "comfyui-distorch.preview") == 1
    # The front end's own start-up errors (e.g. 1.32.9 logs a TypeError from its settings store) are not ours;
    # ours would name the extension or its routes.
    assert [e for e in console.startup if "distorch" in e.lower()] == [], console.startup


def _server_devices(server: ComfyServer) -> list[str]:
    with urllib.request.urlopen(server.url + "/distorch/devices", timeout=30) as response:
        return [d["device"] for d in json.loads(response.read())["devices"]]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_loads_and_each_loader_draws_its_plan_with_the_servers_devices(
        server: ComfyServer, page: tuple[Any, Console], artifacts: Path, name: str) -> None:
    browser_page, console = page
    nodes = _load(browser_page, name)
    browser_page.wait_for_timeout(500)  # one more animation frame for the drawings
    browser_page.screenshot(path=str(artifacts / f"{name}.png"))
    assert nodes, "no DisTorch loader in the graph"
    for node in nodes:
        assert "error" not in node["preview"], node["preview"]  # a graph that runs shows no red error
        assert node["preview"]["preview"]["devices"] and node["preview_height"] > 0
        assert node["devices"] == _server_devices(server)
    assert console.take() == []


def test_after_a_run_the_streaming_loader_shows_the_timeline(
        server: ComfyServer, page: tuple[Any, Console], artifacts: Path) -> None:
    browser_page, console = page
    _load(browser_page, "wan21_t2v_streaming")
    browser_page.evaluate("() => window.app.queuePrompt(0, 1)")
    browser_page.wait_for_function("""() => window.app.graph._nodes.some((n) => n.type === "DisTorchUNETLoader"
      && n.widgets.find((w) => w.name === "distorch_timeline")?.state?.per_forward?.length)""", timeout=300_000)
    browser_page.wait_for_timeout(500)
    browser_page.screenshot(path=str(artifacts / "wan21_t2v_streaming_after_run.png"))
    timeline = next(n["timeline"] for n in browser_page.evaluate(DISTORCH_NODES) if n["type"] == "DisTorchUNETLoader")
    assert timeline["forwards"] >= 2 and timeline["streamed_bytes"] > 0
    assert console.take() == []
