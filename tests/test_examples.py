"""The examples run as a user would run them, and say what they should."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, *arguments: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *arguments], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_fourier_guide_example(tmp_path):
    output = _run("fourier_guide.py", str(tmp_path / "guide.png"))
    inside, outside = (float(part.split()[-1]) for part in output.splitlines()[0].split(","))
    assert inside > 2 * outside
    assert (tmp_path / "guide.png").is_file()


def test_train_and_predict_example():
    output = _run("train_and_predict.py")
    last = output.splitlines()[-1]
    found, true = int(last.split()[2]), int(last.split()[5])
    assert abs(found - true) <= 0.1 * true
    assert float(last.split("PQ ")[1].split(",")[0]) >= 0.7
