"""Lightning's own examples (autoencoder, GAN with manual optimization, image classifier with a DataModule), ported
by changing only imports and base-class names, train under prec: each runs as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples" / "lightning"
# Every file of the folder runs: docs/porting.md shows each of them (tests/test_docs_snippets.py checks that it
# shows exactly these), so nothing is shown that no test runs.
FILES = sorted(path.name for path in EXAMPLES.glob("*.py"))


def test_the_three_examples_are_there() -> None:
    assert FILES == ["autoencoder.py", "gan.py", "image_classifier.py"]


@pytest.mark.parametrize("example", FILES)
def test_a_ported_lightning_example_runs(example: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / example)], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
