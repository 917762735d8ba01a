from __future__ import annotations

import re
from pathlib import Path

import pytest

from recsvc.config import check_environment, env_names, load_settings, settings_table
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


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("RECSVC_METRICS_PORT", "RECSVC_SERVER__METRICS_PORT"),
        ("RECSVC_SERVER_PORT", "RECSVC_SERVER__PORT"),
        ("RECSVC_REDIS_ULR", "RECSVC_REDIS_URL"),
        ("RECSVC_MODEL_STORE_SIGNING_KEY", "RECSVC_MODEL_STORE__SIGNING_KEY"),
    ],
)
def test_unknown_environment_variables_name_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, closest: str
) -> None:
    monkeypatch.setenv(name, "1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == f"unknown setting {name} (did you mean {closest}?)"


def test_every_documented_variable_and_the_test_ones_are_known() -> None:
    valid = set(env_names())
    documented = re.findall(r"^\| `(RECSVC_[A-Z0-9_]+)`", settings_table(), re.MULTILINE)
    assert documented and set(documented) <= valid
    assert {"RECSVC_CONFIG_FILE", "RECSVC_MODEL_STORE__SIGNING_KEY", "RECSVC_SERVER"} <= valid
    check_environment({"RECSVC_TEST_REDIS_URL": "redis://x", "PATH": "/bin"})


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://u:p@host:6380",
        "unix:///run/redis.sock",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7000",
    ],
)
def test_redis_urls_with_a_scheme_are_accepted(url: str) -> None:
    assert load_settings(redis_url=url).redis_url == url


def test_a_redis_url_without_a_scheme_is_one_line_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(redis_url="user:secret@127.0.0.1:6379")
    message = str(caught.value)
    assert "\n" not in message and "secret" not in message
    assert "redis_url:" in message
    assert "must start with redis://, rediss://, unix:// or redis+cluster://" in message
