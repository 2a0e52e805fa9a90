"""Where things are in the checkout, for tests at any depth below tests/."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: package.json, node_modules, src/
TESTS = ROOT / "tests"
FIXTURES = TESTS / "fixtures"
