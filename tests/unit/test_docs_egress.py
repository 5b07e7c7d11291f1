"""The copy-paste configurations in docs/egress.md are valid meshd configurations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshd.config import load_config

DOC = Path(__file__).parents[2] / "docs" / "egress.md"
BLOCKS = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)


def test_the_page_has_the_configurations() -> None:
    assert len(BLOCKS) >= 5  # gateway + client for NAT64 and exit, the site gateway


@pytest.mark.parametrize("text", BLOCKS)
def test_each_configuration_loads(tmp_path: Path, text: str) -> None:
    path = tmp_path / "meshd.toml"
    path.write_text(text)
    config = load_config(path, environ={})
    assert config.mesh == "prod"
