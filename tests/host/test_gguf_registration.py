"""The GGUF loaders register only where the gguf package imports; without it the rest of the plugin loads and
the log says why (run in a child process, where ``gguf`` is made unimportable)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from comfy_server import BASE_DIR, COMFY_ROOT, HOST, ROOT, prepare_base

CHILD = """
import asyncio, json, logging, sys
sys.modules["gguf"] = None  # `import gguf` raises ImportError, as where the package is not installed
sys.path.insert(0, {scripts!r})
from synth.comfy_env import import_comfy
import_comfy({root!r})
records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())

logging.getLogger("distorch").addHandler(Keep())
import utils.extra_config, nodes
loaded = asyncio.run(nodes.load_custom_node({plugin!r}))
ours = sorted(n for n in nodes.NODE_CLASS_MAPPINGS if n.startswith("DisTorch"))
print(json.dumps({{"loaded": loaded, "nodes": ours, "log": records}}))
"""


def test_without_the_gguf_package_the_gguf_loaders_are_left_out_and_the_log_says_why() -> None:
    prepare_base(HOST)
    code = CHILD.format(scripts=str(ROOT / "scripts"), root=str(COMFY_ROOT),
                        plugin=str(BASE_DIR / "custom_nodes" / "comfyui-distorch"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **HOST.env()})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] and "DisTorchUNETLoader" in report["nodes"]
    assert not any(n.endswith("GGUF") for n in report["nodes"])
    assert any("GGUF loaders not registered: the gguf package does not import (ModuleNotFoundError" in line
               for line in report["log"]), report["log"]
