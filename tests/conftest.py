from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    """The shipped teacher zoo (rebuilt by `avocado zoo build`)."""
    path = ROOT / "zoo"
    assert (path / "qwen-tiny" / "config.json").exists(), "the zoo is missing: run `make zoo`"
    return path
