#!/usr/bin/env python3
"""The whole test suite: the engine tests once, then the host suite once per ComfyUI host.

    .venv/bin/python scripts/run_tests.py              # what scripts/test.sh and CI run
    .venv/bin/python scripts/run_tests.py -- -k plan   # extra pytest arguments for every phase

Phases (each its own pytest process, so each host imports its own ComfyUI with its own packages):
  engine: tests/unit and tests/gpu (no ComfyUI; tests/gpu skips itself without CUDA)
  host:   tests/browser (the real front end) and tests/host against ComfyUI 0.3.75 and 0.33.0 (scripts/comfy_hosts.py), or only against the checkout
          DISTORCH_COMFY_ROOT names
The output ends with one line per phase, e.g. ``host comfyui 0.33.0: 62 passed, 0 failed``; a host that is not
available here gets a line saying why it was skipped. Exit status 1 if anything failed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_hosts import BUNDLED, ENV_ROOT, ROOT, Host, current_host  # noqa: E402

ENGINE_TESTS = ["tests/unit", "tests/gpu"]
HOST_TESTS = ["tests/browser", "tests/host"]  # browser first: its server is gone before the host suite's starts


@dataclass
class PhaseResult:
    label: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    skip_reason: str | None = None  # the whole phase did not run

    def line(self) -> str:
        if self.skip_reason:
            return f"{self.label}: skipped ({self.skip_reason})"
        return f"{self.label}: {self.passed} passed, {self.failed} failed"


def count_junit(path: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) from pytest's JUnit XML; errors count as failures."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = failed = skipped = 0
    for suite in suites:
        tests += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return tests - failed - skipped, failed, skipped


def run_phase(label: str, paths: list[str], env: dict[str, str], extra: list[str]) -> PhaseResult:
    print(f"\n===== {label}: pytest {' '.join(paths + extra)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", *paths, f"--junitxml={junit}", *extra]
        code = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}).returncode
        if not junit.is_file():  # pytest died before writing it (collection crash, killed)
            return PhaseResult(label, failed=1)
        passed, failed, skipped = count_junit(junit)
    if code not in (0, 1, 5) and failed == 0:  # 5: nothing collected; others: internal error or interrupt
        failed = 1
    return PhaseResult(label, passed, failed, skipped)


def host_phases() -> list[tuple[str, Host | None, str | None]]:
    """(label, host, reason it is skipped) for every host the suite runs against."""
    if os.environ.get(ENV_ROOT):
        host = current_host()
        return [(f"host {host.name}", host, None)]
    return [(f"host comfyui {b.key}", b.host, b.unavailable()) for b in BUNDLED]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pytest_args", nargs="*", help="passed to every pytest phase (after --)")
    args = ap.parse_args(argv)
    results = [run_phase("engine tests", ENGINE_TESTS, {}, args.pytest_args)]
    for label, host, reason in host_phases():
        if reason is not None:
            results.append(PhaseResult(label, skip_reason=reason))
            continue
        results.append(run_phase(label, HOST_TESTS, host.env(), args.pytest_args))
    print()
    for result in results:
        print(result.line())
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
