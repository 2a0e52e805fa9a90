"""Run the dashboard's ES modules under Node.js: a test's script imports them from `web/` (`./retry.js`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import agentwire

WEB = Path(agentwire.__file__).parent / "web"
# What the script gets: `input`, the JSON the test passed (read from stdin).
PREAMBLE = "import { readFileSync } from 'node:fs';\nconst input = JSON.parse(readFileSync(0, 'utf8'));\n"


def node_path() -> str | None:
    return shutil.which("node")


def run_module(script: str, input: Any = None, timeout: float = 120) -> Any:
    """Run `script` as an ES module in the dashboard's folder; it prints one JSON value, returned here."""
    node = node_path()
    assert node is not None, "Node.js is needed: apt-get install -y nodejs"
    result = subprocess.run([node, "--input-type=module", "-e", PREAMBLE + script], cwd=WEB, text=True,
                            input=json.dumps(input), capture_output=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr
    assert not result.stderr, result.stderr
    return json.loads(result.stdout)
