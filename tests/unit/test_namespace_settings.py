"""RECSVC_NAMESPACES and Settings.for_namespace: each namespace's effective settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsvc.config import Settings, load_settings
from recsvc.core.namespaces import NamespaceTable, check_name
from recsvc.errors import ConfigError, InvalidArgument, NotFound


def settings_with(monkeypatch: pytest.MonkeyPatch, namespaces: object, **env: str) -> Settings:
    monkeypatch.setenv("RECSVC_NAMESPACES", json.dumps(namespaces))
    for name, value in env.items():
        monkeypatch.setenv(f"RECSVC_{name}", value)
    return load_settings()


def test_without_namespaces_there_is_one_with_the_settings_as_they_are() -> None:
    settings = Settings()
    assert settings.namespace_names() == ["default"]
    assert settings.for_namespace() is settings
    assert settings.for_namespace("default") is settings
    with pytest.raises(ConfigError, match="namespace: no namespace 'shop'"):
        settings.for_namespace("shop")


def test_overrides_apply_and_the_rest_gets_the_name_appended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_with(
        monkeypatch,
        {
            "shop": {},
            "news": {
                "model_store": "/srv/news-models",
                "store": {"key_prefix": "nw", "history_max_items": 20},
                "serving": {"max_k": 50},
                "rules": {"path": "/etc/news-rules.json"},
            },
        },
        DEFAULT_NAMESPACE="news",
        MODEL_STORE="/srv/models",
        SERVING__MAX_BATCH="70",
    )
    assert settings.namespace_names() == ["news", "shop"]
    shop, news = settings.for_namespace("shop"), settings.for_namespace("news")
    assert settings.for_namespace("") == news
    assert shop.model_store == Path("/srv/models/shop")
    assert shop.store.key_prefix == "recsvc:shop"
    assert shop.workers.interaction_store == Path("interaction-store/shop")
    assert shop.serving.max_k == 1000 and shop.serving.max_batch == 70
    assert news.model_store == Path("/srv/news-models")
    assert news.store.key_prefix == "nw" and news.store.history_max_items == 20
    assert news.serving.max_k == 50 and news.serving.max_batch == 70
    assert news.rules.path == Path("/etc/news-rules.json") and shop.rules.path is None
    # One namespace's settings name it alone.
    assert news.namespaces == {} and news.namespace_names() == ["news"]


def test_a_shared_event_log_path_is_split_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_with(
        monkeypatch, {"a": {}, "b": {}}, DEFAULT_NAMESPACE="a", STORE__EVENT_LOG_PATH="/l/ev.jsonl"
    )
    assert settings.for_namespace("a").store.event_log_path == Path("/l/a/ev.jsonl")
    assert settings.for_namespace("b").store.event_log_path == Path("/l/b/ev.jsonl")


def test_a_single_namespace_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_with(monkeypatch, {"only": {}}).namespace_names() == ["only"]


@pytest.mark.parametrize(
    ("namespaces", "env", "message"),
    [
        ({"a": {}, "b": {}}, {}, "default_namespace: required with several namespaces"),
        ({"a": {}}, {"DEFAULT_NAMESPACE": "z"}, "default_namespace: 'z' is not among"),
        ({"Shop": {}}, {}, "namespaces: 'Shop' is not a namespace name"),
        ({"a" * 64: {}}, {}, "is not a namespace name"),
        ({"a": {"serving": {"max_kk": 1}}}, {}, r"namespaces.a.serving: max_kk"),
        ({"a": {"serving": {"max_k": 0}}}, {}, r"namespaces.a.serving: max_k"),
        ({"a": {"images": {}}}, {}, r"namespaces.a.images"),
        (
            {"a": {}, "b": {"model_store": "model-store/a"}},
            {"DEFAULT_NAMESPACE": "a"},
            "namespaces.b.model_store: .* is also namespace 'a'",
        ),
        (
            {"a": {"store": {"key_prefix": "x"}}, "b": {"store": {"key_prefix": "x"}}},
            {"DEFAULT_NAMESPACE": "a"},
            "namespaces.b.store.key_prefix: 'x' is also namespace 'a'",
        ),
        # The derived key prefix must fit store.key_prefix's limit: set it.
        ({"a" * 30: {}}, {}, r"store: key_prefix"),
    ],
)
def test_bad_namespaces_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, namespaces: object, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_with(monkeypatch, namespaces, **env)


def test_names_and_the_routing_table() -> None:
    assert check_name("shop-2") == "shop-2"
    with pytest.raises(InvalidArgument, match=r"^namespace: "):
        check_name("a/b")
    table = NamespaceTable({"a": 1, "b": 2}, "b")
    assert table.pick("") == 2 and table.pick("a") == 1 and list(table) == ["a", "b"]
    with pytest.raises(NotFound, match=r"^namespace: no namespace 'c' \(served: a, b\)"):
        table.pick("c")
