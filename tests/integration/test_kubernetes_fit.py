"""What the Kubernetes manifests rely on, run here for real: `recsvc models sync` (a serving
pod's verified local copy of the shared model store), `recsvc worker train --check-due` (the
CPU CronJob's decision before it starts the GPU Job) and `recsvc config show` without secrets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from recsvc.artifacts import ModelStore
from recsvc.artifacts.manifest import MANIFEST_NAME
from recsvc.artifacts.store import LATEST_NAME
from recsvc.artifacts.sync import ModelSync
from recsvc.cli.worker_commands import NOT_DUE_EXIT
from recsvc.config import WorkerSettings
from recsvc.core.state import EventType, Interaction
from recsvc.data.interaction_store import InteractionStore
from recsvc.errors import ArtifactError
from recsvc.testing import recsvc_command, server_env
from tests.helpers import run_recsvc
from workers.retrain import RetrainPolicy, TrainWorker

# ------------------------------------------------------------------------------ models sync


def shared_store(tmp_path: Path, model_store: Path) -> ModelStore:
    root = tmp_path / "shared"
    shutil.copytree(model_store, root)
    return ModelStore(root)


def republished(store: ModelStore, name: str) -> str:
    """A copy of the latest version under a new name, made LATEST (as a retraining would)."""
    latest = store.latest_version()
    assert latest is not None
    shutil.copytree(store.versions_dir / latest, store.versions_dir / name)
    manifest = json.loads((store.versions_dir / name / MANIFEST_NAME).read_text())
    manifest["model_version"] = name
    (store.versions_dir / name / MANIFEST_NAME).write_text(json.dumps(manifest))
    store.point_latest_to(name)
    return name


def damage(store: ModelStore, version: str) -> Path:
    """Flip a byte in a version's item factors (same size: only the sha256 can tell)."""
    path = store.versions_dir / version / "item_factors.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def test_sync_publishes_a_verified_copy_and_follows_new_versions(
    tmp_path: Path, model_store: Path
) -> None:
    source = shared_store(tmp_path, model_store)
    local = ModelStore(tmp_path / "local")
    sync = ModelSync(source, local, keep=2)
    first = source.latest_version()
    assert sync.sync_once() == first
    assert local.latest_version() == first
    local.verify(first)  # type: ignore[arg-type]
    assert sync.sync_once() is None  # nothing new: only LATEST was read

    second = republished(source, "v29990101-000000-000001")
    third = republished(source, "v29990101-000000-000002")
    assert sync.sync_once() == third  # straight to the latest; the one between is skipped
    assert local.latest_version() == third
    assert second not in local.list_versions()
    # A roll-back on the shared store (`recsvc models use`) to a version still held locally.
    source.point_latest_to(first)  # type: ignore[arg-type]
    assert sync.sync_once() == first
    assert local.latest_version() == first
    assert local.list_versions() == sorted([first, third])  # type: ignore[list-item]
    assert not (local.staging_dir / "sync").exists()


def test_a_damaged_version_is_neither_copied_nor_published(
    tmp_path: Path, model_store: Path
) -> None:
    source = shared_store(tmp_path, model_store)
    local = ModelStore(tmp_path / "local")
    sync = ModelSync(source, local, keep=2)
    good = sync.sync_once()
    bad = republished(source, "v29990101-000000-000001")
    damaged = damage(source, bad)
    with pytest.raises(ArtifactError, match="sha256"):
        sync.sync_once()
    assert local.latest_version() == good  # still the previous version
    assert local.list_versions() == [good]
    assert not (local.staging_dir / "sync").exists()
    assert sync.sync_once() is None  # not copied again while its files are unchanged
    # Repaired (e.g. the upload finished): copied, verified, published.
    raw = bytearray(damaged.read_bytes())
    raw[-1] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    os.utime(damaged)
    assert sync.sync_once() == bad
    assert local.latest_version() == bad


def test_a_version_missing_files_or_unsigned_is_refused(tmp_path: Path, model_store: Path) -> None:
    source = shared_store(tmp_path, model_store)
    half = republished(source, "v29990101-000000-000001")
    (source.versions_dir / half / "user_index.hnsw").unlink()  # an upload still under way
    local = ModelStore(tmp_path / "local")
    with pytest.raises(ArtifactError, match="missing"):
        ModelSync(source, local, keep=2).sync_once()
    assert local.latest_version() is None and local.list_versions() == []
    # With a signing key, an unsigned version is refused too.
    key = b"k" * 32
    signed = ModelSync(ModelStore(source.root, key), ModelStore(tmp_path / "signed", key), 2)
    source.point_latest_to(source.list_versions()[0])
    with pytest.raises(ArtifactError, match="unsigned"):
        signed.sync_once()


def test_a_partial_copy_is_never_visible(tmp_path: Path, model_store: Path) -> None:
    """A reader polling the local store while versions are synced sees only complete,
    verified versions; a copy left by a killed sync is not a version and is cleared."""
    source = shared_store(tmp_path, model_store)
    local = ModelStore(tmp_path / "local")
    # A sync killed in the middle of a copy leaves this behind:
    leftover = local.staging_dir / "sync" / "versions" / "v29990101-000000-000009"
    leftover.mkdir(parents=True)
    (leftover / MANIFEST_NAME).write_text("{")
    assert local.latest_version() is None and local.list_versions() == []

    sync = ModelSync(source, local, keep=2)
    seen: list[str] = []
    problems: list[str] = []
    done = threading.Event()

    def watch() -> None:
        reader = ModelStore(local.root)
        while not done.is_set():
            try:
                version = reader.latest_version()
                if version is not None and version not in seen:
                    reader.verify(version)
                    seen.append(version)
            except ArtifactError as exc:
                problems.append(str(exc))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        published = [sync.sync_once()]
        for n in range(3):
            published.append(sync.sync_once() or "")
            published.append(sync.sync_once() or "")
            name = republished(source, f"v29990101-000000-00001{n}")
            assert sync.sync_once() == name
            published.append(name)
    finally:
        done.set()
        watcher.join()
    assert problems == []
    assert seen and set(seen) <= set(published)
    assert not leftover.exists()


@pytest.mark.slow
def test_sync_command_killed_mid_copy_leaves_no_partial_version(
    tmp_path: Path, model_store: Path
) -> None:
    """The sidecar's exact command, SIGKILLed at several moments while it copies a large
    version: the local store holds complete versions only; a restarted sync finishes."""
    source = shared_store(tmp_path, model_store)
    big = republished(source, "v29990101-000000-000001")
    directory = source.versions_dir / big
    # Pad the version with a 48 MiB file it lists, so that copying it takes a while.
    (directory / "padding.bin").write_bytes(os.urandom(48 << 20))
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    from recsvc.artifacts.manifest import file_entry

    manifest["files"]["padding.bin"] = file_entry(directory / "padding.bin").model_dump()
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    local = tmp_path / "local"
    command = recsvc_command(
        "models", "sync", "--source", str(source.root), "--dest", str(local), "--interval", "0.05"
    )
    for delay in (0.3, 0.6, 1.0, 1.5):
        process = subprocess.Popen(command, env=server_env(), stdout=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        reader = ModelStore(local)
        for version in reader.list_versions():
            reader.verify(version)  # whatever is a version is complete
        latest = reader.latest_version()
        assert latest in (None, big)
    done = subprocess.run(
        [*command, "--once"], env=server_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["failed"] is False
    assert ModelStore(local).latest_version() == big
    ModelStore(local).verify(big)


def test_sync_command_once_exits_1_on_a_damaged_latest(tmp_path: Path, model_store: Path) -> None:
    source = shared_store(tmp_path, model_store)
    damage(source, republished(source, "v29990101-000000-000001"))
    done = subprocess.run(
        recsvc_command(
            "models", "sync", "--once", "--source", str(source.root), "--dest", str(tmp_path / "l")
        ),
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "sha256" in done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"synced": None, "failed": True}
    assert not (tmp_path / "l" / LATEST_NAME).exists()


# ------------------------------------------------------------------------- train --check-due


def check_due(models: Path, interactions: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_recsvc(
        "worker",
        "train",
        "--check-due",
        "--model-store",
        str(models),
        "--interaction-store",
        str(interactions),
        **env,
    )


def events(n: int, start: int) -> list[Interaction]:
    return [
        Interaction(f"u{i % 7}", f"i{i % 11}", EventType.VIEW, 1.0, 1_800_000_000_000 + i, f"e{i}")
        for i in range(start, start + n)
    ]


@pytest.mark.slow
def test_check_due_decides_as_the_train_worker_does(tmp_path: Path, model_store: Path) -> None:
    models, interactions = tmp_path / "models", tmp_path / "interactions"
    env = {"RECSVC_WORKERS__RETRAIN_MIN_NEW_EVENTS": "20"}
    worker = TrainWorker(
        InteractionStore(interactions),
        ModelStore(models),
        None,  # type: ignore[arg-type]  # deciding needs neither training nor index settings
        None,  # type: ignore[arg-type]
        RetrainPolicy.from_settings(WorkerSettings(retrain_min_new_events=20)),
    )

    def expect(code: int, reason: str) -> None:
        done = check_due(models, interactions, **env)
        assert done.returncode == code, done.stderr
        assert done.stdout.count("\n") == 1 and done.stdout.startswith(reason), done.stdout
        assert worker.due()[0] == (code == 0)

    expect(NOT_DUE_EXIT, "not due: the interaction store")
    store = InteractionStore(interactions)
    store.write_part(events(5, 0), "0", "4")
    expect(0, "due: no model yet, and the store holds 5 interactions")
    shutil.copytree(model_store, models)
    expect(0, "due: 5 new interactions and the last training is")  # never trained here
    worker._save_state(store.count())  # what a training round records
    expect(NOT_DUE_EXIT, "not due: no new interactions since the last training")
    store.write_part(events(5, 5), "5", "9")
    expect(NOT_DUE_EXIT, "not due: 5 new interactions (fewer than 20)")
    store.write_part(events(20, 10), "10", "29")
    expect(0, "due: 25 new interactions (at least 20)")
    broken = check_due(models, interactions, RECSVC_WORKERS__RETRAIN_MIN_NEW_EVENTS="0")
    assert broken.returncode == 2 and "retrain_min_new_events" in broken.stderr


# ---------------------------------------------------------------------------- config show


def test_config_show_redacts_secrets(tmp_path: Path) -> None:
    done = subprocess.run(
        recsvc_command("config", "show"),
        env=server_env(
            RECSVC_MODEL_STORE=str(tmp_path),
            RECSVC_REDIS_URL="rediss://default:hunter2-pw@redis.example:6380/0"
            "?ssl_ca_certs=/etc/recsvc/redis-ca/ca.crt&password=hunter2-pw",
            RECSVC_MODEL_STORE__SIGNING_KEY="signing-key-hunter2-0123",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout
    shown = json.loads(done.stdout)
    assert shown["redis_url"] == (
        "rediss://default:***@redis.example:6380/0"
        "?ssl_ca_certs=/etc/recsvc/redis-ca/ca.crt&password=***"
    )
    assert shown["model_store_signing_key"] == "**********"
