import subprocess
import sys

from tests.conftest import REPO


def test_the_package_passes_mypy_strict():
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
