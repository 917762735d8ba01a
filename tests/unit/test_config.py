from __future__ import annotations

from pathlib import Path

import pytest

from recsvc.config import load_settings, settings_table
from recsvc.errors import ConfigError
from tests.helpers import ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RECSVC_"):
            monkeypatch.delenv(name)


def test_defaults_are_valid() -> None:
    settings = load_settings()
    assert settings.server.port == 50051
    assert settings.redis_url is None
    assert settings.train.device == "auto"


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSVC_SERVER__PORT", "6000")
    monkeypatch.setenv("RECSVC_TRAIN__FACTORS", "8")
    settings = load_settings()
    assert settings.server.port == 6000
    assert settings.train.factors == 8


def test_overrides_beat_environment_and_none_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSVC_SERVER__PORT", "6000")
    assert load_settings(server={"port": 7000}).server.port == 7000
    assert load_settings(server={"port": None}).server.port == 6000


def test_config_file_below_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "recsvc.toml"
    config.write_text('log_level = "DEBUG"\n[server]\nport = 6100\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("RECSVC_SERVER__PORT", "6200")
    settings = load_settings(config)
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 6200
    assert settings.log_level == "DEBUG"


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "recsvc.toml"
    config.write_text("[serving]\nmax_k = 50\n")
    monkeypatch.setenv("RECSVC_CONFIG_FILE", str(config))
    assert load_settings().serving.max_k == 50


@pytest.mark.parametrize(
    ("env", "value", "field"),
    [
        ("RECSVC_SERVER__PORT", "70000", "port"),
        ("RECSVC_TRAIN__ALPHA", "0", "alpha"),
        ("RECSVC_SERVING__MAX_K", "0", "max_k"),
        ("RECSVC_TRAIN__DEVICE", "tpu", "device"),
        ("RECSVC_SERVING__HNSW_EF_SEARCH", "0", "hnsw_ef_search"),
    ],
)
def test_out_of_range_values_are_rejected_by_name(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, field: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=field):
        load_settings()


def test_unknown_keys_in_config_file_are_rejected(tmp_path: Path) -> None:
    config = tmp_path / "recsvc.toml"
    config.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(config)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_readme_configuration_table_is_current() -> None:
    """The README shows the table `recsvc config docs` prints; keep them the same."""
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "paste `recsvc config docs` into README.md"
