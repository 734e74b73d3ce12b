"""Shared fixtures: paths of the fixture files, a CLI runner, the `cai` script, a closed TCP port."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

# Wide consoles so rich never wraps a "file:line" location across lines; set before cai.cli is imported.
os.environ["COLUMNS"] = "200"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.pop("CAI_DEBUG", None)

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
CAI_EXE = Path(sys.executable).parent / "cai"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def cai_exe() -> Path:
    if not CAI_EXE.exists():
        pytest.fail(f"the `cai` script is missing next to {sys.executable}; install the package (pip install -e .)")
    return CAI_EXE


@pytest.fixture
def subprocess_env(tmp_path) -> dict[str, str]:
    """Environment for running `cai` as a subprocess: offline, wide console, no debug."""
    env = dict(os.environ)
    env.update(COLUMNS="200", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("CAI_DEBUG", None)
    return env


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture(autouse=True)
def _reset_cli_debug():
    """`--debug` flips a module-level switch; keep one test's flag from leaking into the next."""
    yield
    if "cai.cli.common" in sys.modules:
        sys.modules["cai.cli.common"].DEBUG["on"] = False


@pytest.fixture
def closed_port() -> int:
    """A local TCP port nothing listens on: bind, read the port, close."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def flat(text: str) -> str:
    """Collapse whitespace so assertions do not depend on line wrapping."""
    return " ".join(text.split())
