"""The layering contracts (pyproject.toml [tool.importlinter]) hold: a forbidden import fails the suite."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.pure


def test_import_contracts_are_kept():
    linter = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    result = subprocess.run([linter, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
