from pathlib import Path

import pytest

from meshd.config import ConfigError, load_config, markdown_table


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meshd.toml"
    path.write_text(text)
    return path


def test_file_and_environment_are_merged(tmp_path: Path) -> None:
    path = write(tmp_path, 'mesh = "prod"\nseeds = ["seed.example:51821"]\nlisten_port = 5000\n')
    cfg = load_config(
        path,
        {
            "MESHD_LISTEN_PORT": "6000",
            "MESHD_KEEP_INTERFACE": "yes",
            "MESHD_ENDPOINTS": "192.0.2.1:6000, [2001:db8::1]:6000",
        },
    )
    assert cfg.mesh == "prod"
    assert cfg.seeds == ["seed.example:51821"]
    assert cfg.listen_port == 6000  # environment wins over the file
    assert cfg.keep_interface is True
    assert cfg.endpoints == ["192.0.2.1:6000", "[2001:db8::1]:6000"]


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("", {}, "mesh: required"),
        ('mesh = "Prod"', {}, "mesh: mesh name 'Prod'"),
        ('mesh = "p"\nlisten_port = 70000', {}, "listen_port: 70000 is not a port"),
        ('mesh = "p"\nlisten_port = "x"', {}, "listen_port: 'x' from"),
        ('mesh = "p"\nseeds = ["nocolon"]', {}, "seeds: 'nocolon' is not host:port"),
        ('mesh = "p"\nendpoints = ["host.example:1"]', {}, "endpoints: 'host.example:1': host"),
        (
            'mesh = "p"\nendpoints = ["127.0.0.1:1"]',
            {},
            "endpoints: '127.0.0.1:1': cannot be announced, the host is loopback",
        ),
        ('mesh = "p"\nbackend = "magic"', {}, "backend: 'magic'"),
        ('mesh = "p"\nmtu = 1000', {}, "mtu: 1000 outside"),
        ('mesh = "p"\nmeshd_port = 51820', {}, "meshd_port: must differ"),
        ('mesh = "p"\nadvertise_prefixes = ["10.0.0.1/8"]', {}, "advertise_prefixes: '10.0.0.1/8'"),
        ('mesh = "p"\naccept_routes = ["all", "10.0.0.0/8"]', {}, "accept_routes: 'all'"),
        ('mesh = "p"\naccept_routes = ["10.0.0.1/8"]', {}, "accept_routes: '10.0.0.1/8'"),
        ('mesh = "p"\nprotected_ranges = ["nope"]', {}, "protected_ranges: 'nope'"),
        ('mesh = "p"\negress_bridges = ["a b"]', {}, "egress_bridges: 'a b'"),
        ('mesh = "p"\nnat64_prefix = "64:ff9b::/64"', {}, "nat64_prefix: '64:ff9b::/64': tayga"),
        ('mesh = "p"\nnat64_pool = "10.0.0.0/31"', {}, "nat64_pool: '10.0.0.0/31'"),
        ('mesh = "p"\nnat64 = true', {}, "nat64: nat64_prefix 64:ff9b::/96 must also be in"),
        ('mesh = "p"\ncolour = "blue"', {}, "colour: unknown field"),
        ('mesh = "p"', {"MESHD_COLOUR": "x"}, "MESHD_COLOUR: unknown setting"),
        ('mesh = "p"', {"MESHD_KEEP_INTERFACE": "maybe"}, "keep_interface: 'maybe'"),
        ("mesh = ", {}, "config file"),
    ],
)
def test_bad_config_names_the_field(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(write(tmp_path, text), env)


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml", {"MESHD_MESH": "p"})


def test_readme_configuration_table_is_current() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert markdown_table() in readme, "regenerate with: python -m meshd.config --markdown"
