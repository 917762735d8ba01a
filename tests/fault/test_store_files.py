"""Crafted model-store files (issue 14, observations 3-5): each is refused with its reason, by
the store, the watcher, `recsvc serve` and `recsvc models use` alike, and nothing crashes.

Every crafted file keeps a valid checksum (the manifest is rewritten to match it), as a writer
with access to the store would leave it; the versions start from a real published model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsvc.artifacts import ModelStore
from recsvc.artifacts.hnsw_header import HEADER
from recsvc.artifacts.manifest import file_entry
from recsvc.artifacts.signing import SIGNATURE_NAME, check_signature, sign, signing_key_from
from recsvc.artifacts.watcher import ModelWatcher
from recsvc.client import RecsvcClient
from recsvc.config import Settings, load_settings
from recsvc.core.holder import RecommenderHolder
from recsvc.core.model import Model
from recsvc.core.recommender import Recommender
from recsvc.errors import ArtifactError, ConfigError
from recsvc.index import ItemIndex
from recsvc.index.params import GraphParams, SearchParams
from recsvc.server import build_recommender
from recsvc.testing import free_port, running_server, server_env
from tests.conftest import BUILD, SEARCH
from tests.helpers import run_recsvc_process

pytestmark = pytest.mark.fault

# Header offsets (recsvc.artifacts.hnsw_header): maxlevel_ at 48, enterpoint_node_ at 52.
_MAX_LEVEL_AT = 48
_ENTRY_POINT_AT = 52
_FAR_OUT = 0x7FFFFF00


# -- crafting ------------------------------------------------------------------------------


def copy_store(source: Path, tmp_path: Path) -> ModelStore:
    root = tmp_path / "store"
    shutil.copytree(source, root)
    return ModelStore(root)


def latest_dir(store: ModelStore) -> Path:
    version = store.latest_version()
    assert version is not None
    return store.versions_dir / version


def edit_manifest(directory: Path, change: Callable[[dict[str, object]], None]) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def replace_file(directory: Path, name: str, data: bytes) -> None:
    """Put ``data`` in place of a version's file and update its checksum in the manifest."""
    (directory / name).write_bytes(data)
    entry = file_entry(directory / name).model_dump()
    edit_manifest(directory, lambda m: m["files"].__setitem__(name, entry))  # type: ignore[index]


def replace_array(directory: Path, name: str, array: np.ndarray) -> None:
    path = directory / name
    with path.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)
    replace_file(directory, name, path.read_bytes())


def patched(directory: Path, name: str, fmt: str, offset: int, value: float) -> bytes:
    data = bytearray((directory / name).read_bytes())
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


def clone_as_latest(store: ModelStore, version: str) -> Path:
    """A copy of the latest version published as ``version`` (LATEST switched directly, as a
    writer who bypasses `models use` would)."""
    target = store.versions_dir / version
    shutil.copytree(latest_dir(store), target)
    edit_manifest(target, lambda m: m.__setitem__("model_version", version))
    (store.root / "LATEST").write_text(f"{version}\n")
    return target


# -- the hnswlib file ----------------------------------------------------------------------


def test_raw_hnswlib_crashes_on_the_crafted_index_that_the_store_refuses(
    model_store: Path, tmp_path: Path
) -> None:
    """The observation: a same-size file whose entry point is out of range kills the process
    that queries it (checked in a child); the store refuses it before hnswlib reads it."""
    store = copy_store(model_store, tmp_path)
    directory = latest_dir(store)
    manifest = json.loads((directory / "manifest.json").read_text())
    crafted = patched(directory, "similar_index.hnsw", "<I", _ENTRY_POINT_AT, _FAR_OUT)
    assert len(crafted) == (directory / "similar_index.hnsw").stat().st_size
    replace_file(directory, "similar_index.hnsw", crafted)
    probe = (
        "import hnswlib, numpy as np, sys\n"
        f"i = hnswlib.Index(space='ip', dim={manifest['factors']})\n"
        "i.load_index(sys.argv[1], max_elements=0)\n"
        f"i.knn_query(np.ones((1, {manifest['factors']}), np.float32), k=5)\n"
    )
    raw = subprocess.run(
        [sys.executable, "-c", probe, str(directory / "similar_index.hnsw")],
        capture_output=True,
        timeout=60,
    )
    assert raw.returncode < 0, "hnswlib no longer crashes on this file: the test lost its point"
    with pytest.raises(ArtifactError, match=r"similar_index\.hnsw.*entry point"):
        store.load_latest(SEARCH)


def _hnsw_cases(directory: Path, num_items: int, factors: int) -> dict[str, bytes]:
    name = "similar_index.hnsw"
    data = (directory / name).read_bytes()
    header = HEADER.unpack_from(data)
    size_per_element, label_offset = header[3], header[4]
    first = HEADER.size  # element 0's level-0 record: count (uint32), then neighbour ids
    count_link = bytearray(data)
    struct.pack_into("<I", count_link, first, 1)
    struct.pack_into("<I", count_link, first + 4, num_items + 5)
    many_links = bytearray(data)
    struct.pack_into("<H", many_links, first, 0xFFF0)
    deleted = bytearray(data)
    struct.pack_into("<B", deleted, first + 2, 1)  # hnswlib's DELETE_MARK, after the count
    bad_label = bytearray(data)
    struct.pack_into("<Q", bad_label, first + label_offset, num_items)
    huge_label = bytearray(data)
    struct.pack_into("<Q", huge_label, first + label_offset, 2**64 - 1)
    twin_label = bytearray(data)
    label_1 = struct.unpack_from("<Q", data, first + size_per_element + label_offset)[0]
    struct.pack_into("<Q", twin_label, first + label_offset, label_1)
    return {
        "entry point": patched(directory, name, "<I", _ENTRY_POINT_AT, num_items),
        "max level": patched(directory, name, "<i", _MAX_LEVEL_AT, 1000),
        "elements": patched(directory, name, "<Q", 16, num_items - 1),
        "capacity": patched(directory, name, "<Q", 8, num_items - 1),
        "record layout": patched(directory, name, "<Q", 24, size_per_element + 4),
        "maxM0": patched(directory, name, "<Q", 64, 99),
        "mult": patched(directory, name, "<d", 80, 0.5),
        "ef_construction": patched(directory, name, "<Q", 88, 1),
        "level-0 link": bytes(count_link),
        "marked deleted": bytes(deleted),
        "links > maxM0": bytes(many_links),
        "label is not a row": bytes(bad_label),
        "same label": bytes(twin_label),
        "label of 2**64 - 1": bytes(huge_label),
        "after the last link list": data + b"\0" * 8,
        "link list": data[:-8],
    }


@pytest.mark.parametrize(
    "case",
    [
        "entry point",
        "max level",
        "elements",
        "capacity",
        "record layout",
        "maxM0",
        "mult",
        "ef_construction",
        "level-0 link",
        "marked deleted",
        "links > maxM0",
        "label is not a row",
        "same label",
        "label of 2**64 - 1",
        "after the last link list",
        "link list",
    ],
)
def test_crafted_index_files_are_refused_before_hnswlib_reads_them(
    model_store: Path, tmp_path: Path, case: str
) -> None:
    store = copy_store(model_store, tmp_path)
    directory = latest_dir(store)
    manifest = json.loads((directory / "manifest.json").read_text())
    crafted = _hnsw_cases(directory, manifest["num_items"], manifest["factors"])[case]
    replace_file(directory, "similar_index.hnsw", crafted)
    with pytest.raises(ArtifactError, match=r"similar_index\.hnsw: not an index of") as caught:
        store.load_latest(SEARCH)
    assert caught.value.__cause__ is None or "hnsw" not in type(caught.value.__cause__).__module__


def test_an_index_with_the_wrong_dimension_is_refused(model: Model, tmp_path: Path) -> None:
    """The user index of another model (other factors) in place of this one's."""
    store = ModelStore(tmp_path / "s")
    store.publish(model, BUILD)
    directory = latest_dir(store)
    other = np.ascontiguousarray(model.item_factors[:, :-1])
    index = ItemIndex.build(other, "ip", GraphParams(16, 50, 1, 1), SearchParams(10, 1, 0.0))
    index.save_hnsw(tmp_path / "other.hnsw")
    replace_file(directory, "user_index.hnsw", (tmp_path / "other.hnsw").read_bytes())
    with pytest.raises(ArtifactError, match=r"user_index\.hnsw: not an index of .*record layout"):
        store.load_latest(SEARCH)


# -- names, links and special files --------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "sub/item_factors.npy", ".hidden"])
def test_manifest_names_outside_the_version_are_refused(
    model_store: Path, tmp_path: Path, name: str
) -> None:
    store = copy_store(model_store, tmp_path)
    directory = latest_dir(store)
    (tmp_path / "x").write_bytes(b"outside")
    entry = file_entry(tmp_path / "x").model_dump()
    edit_manifest(directory, lambda m: m["files"].__setitem__(name, entry))  # type: ignore[index]
    with pytest.raises(ArtifactError, match="names files outside the version"):
        store.verify(directory.name)


def test_errors_do_not_tell_whether_a_path_outside_the_store_exists(
    model_store: Path, tmp_path: Path
) -> None:
    store = copy_store(model_store, tmp_path)
    directory = latest_dir(store)
    messages = []
    entry = {"sha256": "0" * 64, "bytes": 1}
    for target in ("/etc/hostname", "/nonexistent/file"):
        edit_manifest(directory, lambda m, t=target: m["files"].__setitem__(t, entry))  # type: ignore[index]
        with pytest.raises(ArtifactError) as caught:
            store.verify(directory.name)
        messages.append(str(caught.value).replace(target, "PATH"))
        edit_manifest(directory, lambda m, t=target: m["files"].pop(t))  # type: ignore[attr-defined]
    assert messages[0] == messages[1]
    # A link inside the version to a file outside: refused the same way, present or not.
    factors = directory / "item_factors.npy"
    copy = tmp_path / "factors-copy.npy"
    shutil.copy(factors, copy)
    link_messages = []
    for target in (copy, tmp_path / "absent.npy"):
        factors.unlink()
        factors.symlink_to(target)
        with pytest.raises(ArtifactError) as caught:
            store.verify(directory.name)
        link_messages.append(str(caught.value))
    assert link_messages[0] == link_messages[1]
    assert "not a readable regular file" in link_messages[0]


def test_a_symlinked_file_is_not_followed_even_with_the_right_content(
    model_store: Path, tmp_path: Path
) -> None:
    store = copy_store(model_store, tmp_path)
    directory = latest_dir(store)
    outside = tmp_path / "elsewhere.npy"
    shutil.move(directory / "item_factors.npy", outside)
    (directory / "item_factors.npy").symlink_to(outside)  # same bytes, same checksum
    with pytest.raises(ArtifactError, match=r"item_factors\.npy is not a readable regular file"):
        store.load_latest(SEARCH)


def test_a_symlinked_version_directory_is_refused(model_store: Path, tmp_path: Path) -> None:
    store = copy_store(model_store, tmp_path)
    directory = latest_dir(store)
    moved = tmp_path / "moved-version"
    shutil.move(directory, moved)
    directory.symlink_to(moved, target_is_directory=True)
    with pytest.raises(ArtifactError, match="not a directory"):
        store.load_latest(SEARCH)


def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(
    model_store: Path, tmp_path: Path
) -> None:
    """Opening a FIFO for reading blocks until a writer comes; the store never waits."""
    store = copy_store(model_store, tmp_path)
    directory = latest_dir(store)
    (directory / "users.parquet").unlink()
    os.mkfifo(directory / "users.parquet")
    outcome: list[BaseException] = []

    def verify() -> None:
        try:
            store.verify(directory.name)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=verify, daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # unblock the reader so the thread can end
        with open(directory / "users.parquet", "wb"):
            pass
        pytest.fail("verify blocked on a FIFO")
    assert len(outcome) == 1 and isinstance(outcome[0], ArtifactError)
    assert "users.parquet is not a readable regular file" in str(outcome[0])


# -- arrays and tables ---------------------------------------------------------------------


def _array_cases(directory: Path) -> dict[str, tuple[str, np.ndarray]]:
    factors = np.load(directory / "item_factors.npy")
    indices = np.load(directory / "user_items.indices.npy")
    indptr = np.load(directory / "user_items.indptr.npy")
    nan = factors.copy()
    nan[3, 1] = np.nan
    negative = indices.copy()
    negative[0] = -1
    backwards = indptr.copy()
    backwards[1], backwards[2] = backwards[2], backwards[1] - 1
    return {
        "dtype": ("item_factors.npy", factors.astype(np.float64)),
        "shape": ("item_factors.npy", factors[:-1]),
        "finite": ("item_factors.npy", nan),
        "column": ("user_items.indices.npy", negative),
        "row pointers": ("user_items.indptr.npy", backwards),
    }


@pytest.mark.parametrize("case", ["dtype", "shape", "finite", "column", "row pointers"])
def test_arrays_that_disagree_with_the_manifest_are_refused(
    model_store: Path, tmp_path: Path, case: str
) -> None:
    store = copy_store(model_store, tmp_path)
    directory = latest_dir(store)
    name, array = _array_cases(directory)[case]
    replace_array(directory, name, array)
    messages = {
        "dtype": "dtype float64",
        "shape": "shape",
        "finite": "finite",
        "column": "out of range",
        "row pointers": "row pointers",
    }
    with pytest.raises(ArtifactError, match=messages[case]):
        store.load_latest(SEARCH)


def test_duplicate_ids_are_refused(model_store: Path, tmp_path: Path) -> None:
    store = copy_store(model_store, tmp_path)
    directory = latest_dir(store)
    users = pq.read_table(directory / "users.parquet").column("user_id").to_pylist()
    users[1] = users[0]
    pq.write_table(pa.table({"user_id": pa.array(users, pa.string())}), tmp_path / "u.parquet")
    replace_file(directory, "users.parquet", (tmp_path / "u.parquet").read_bytes())
    with pytest.raises(ArtifactError, match="distinct"):
        store.load_latest(SEARCH)


@pytest.mark.slow
def test_image_parts_that_disagree_with_the_manifest_are_refused(
    image_model_store: Path, tmp_path: Path
) -> None:
    """The observation: a projection.w1.npy of the wrong shape raised IndexError (outside the
    watcher's catch list); image rows out of range; an adapter of the wrong width."""
    for number, (name, craft, message) in enumerate(
        [
            ("projection.w1.npy", lambda a: a.T.copy(), r"projection\.w1\.npy: shape"),
            ("projection.w1.npy", lambda a: a[:, :1].copy(), r"projection\.b1\.npy: shape"),
            ("image_rows.npy", lambda a: a + 10_000, "image rows point outside"),
            ("image_rows.npy", lambda a: np.zeros_like(a), "twice"),
        ]
    ):
        store = copy_store(image_model_store, tmp_path / str(number))
        directory = latest_dir(store)
        replace_array(directory, name, craft(np.load(directory / name)))
        with pytest.raises(ArtifactError, match=message):
            store.load_latest(SEARCH)


# -- the watcher ---------------------------------------------------------------------------


class Surprise(Exception):
    """An exception type no loader is written to expect."""


async def test_watcher_rejects_any_exception_and_keeps_swapping(
    model_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = copy_store(model_store, tmp_path)
    settings = Settings(model_store=store.root)
    first = store.latest_version()
    assert first is not None

    def load(version: str) -> Recommender:
        if version.startswith("vsurprise"):
            raise Surprise("from a loader")
        if version.startswith("vindex"):
            raise IndexError("index 7 is out of bounds for axis 0 with size 3")
        return build_recommender(settings, store.load(version, SEARCH))

    holder = RecommenderHolder()
    holder.swap(load(first))
    watcher = ModelWatcher(store, holder, load, interval=0.02)
    task = asyncio.get_running_loop().create_task(watcher.run())
    try:
        for bad in ("vsurprise-1", "vindex-2"):
            clone_as_latest(store, bad)
            await _until(lambda b=bad: watcher._rejected == b)
        assert holder.current().version == first  # still serving the first model
        assert watcher.failures == 2
        clone_as_latest(store, "vgood-3")
        await _until(lambda: holder.loaded and holder.current().version == "vgood-3")
    finally:
        task.cancel()
    assert not task.done() or task.cancelled()
    assert watcher.swaps == 1
    rejected = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("vsurprise-1 rejected" in m and "Surprise: from a loader" in m for m in rejected)
    assert any("vindex-2 rejected" in m and "IndexError" in m for m in rejected)


async def _until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.slow
def test_server_rejects_a_bad_projection_and_swaps_in_the_next_good_version(
    image_model_store: Path, tmp_path: Path
) -> None:
    """End to end: the server's watcher meets the IndexError case, counts it in
    recsvc_model_rejections, stays SERVING, and still swaps in the next good version."""
    store = copy_store(image_model_store, tmp_path)
    first = store.latest_version()
    metrics_port = free_port()
    env = server_env(
        RECSVC_SERVING__MODEL_POLL_SECONDS="0.2",
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_SERVER__METRICS_PORT=str(metrics_port),
    )
    args = ["serve", "--model-store", str(store.root), "--port", "0"]
    with running_server(args, env) as server, RecsvcClient(server.target, timeout=30) as client:
        bad = clone_as_latest(store, "vbad-projection")
        w1 = np.load(bad / "projection.w1.npy")
        replace_array(bad, "projection.w1.npy", w1.T.copy())
        _wait_for(lambda: _rejections(metrics_port) >= 1)
        assert client.health() == "SERVING"
        assert client.model_info().version == first
        shutil.rmtree(bad)
        (store.root / "LATEST").write_text(f"{first}\n")
        clone_as_latest(store, "vgood-after")
        _wait_for(lambda: client.model_info().version == "vgood-after")
        assert _rejections(metrics_port) == 1
        server.process.terminate()
        rest = server.process.communicate(timeout=60)[0]
    output = "".join(server.output) + rest
    assert "vbad-projection rejected" in output and "projection.w1.npy: shape" in output
    assert "Traceback" not in output


def _rejections(port: int) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("recsvc_model_rejections"):
                return float(line.split()[-1])
    return 0.0


def _wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# -- the command line ----------------------------------------------------------------------


def _recsvc(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A process of its own: these commands load crafted files, and a crash must show as an
    exit status, not end the suite."""
    return run_recsvc_process(*args, timeout=120, RECSVC_SERVER__DRAIN_SECONDS="0", **env)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("recsvc: error:")]


@pytest.mark.slow
def test_serve_on_a_crafted_version_exits_with_one_line(model_store: Path, tmp_path: Path) -> None:
    store = copy_store(model_store, tmp_path)
    directory = latest_dir(store)
    crafted = patched(directory, "similar_index.hnsw", "<I", _ENTRY_POINT_AT, _FAR_OUT)
    replace_file(directory, "similar_index.hnsw", crafted)
    done = _recsvc("serve", "--model-store", str(store.root), "--port", "0")
    assert done.returncode not in (0, -11), done.stderr
    assert "Traceback" not in done.stderr
    errors = _error_lines(done.stderr)
    assert len(errors) == 1 and "entry point" in errors[0], done.stderr


@pytest.mark.slow
def test_serve_on_a_bad_projection_exits_with_one_line(
    image_model_store: Path, tmp_path: Path
) -> None:
    store = copy_store(image_model_store, tmp_path)
    directory = latest_dir(store)
    replace_array(directory, "projection.w1.npy", np.load(directory / "projection.w1.npy").T)
    done = _recsvc("serve", "--model-store", str(store.root), "--port", "0")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = _error_lines(done.stderr)
    assert len(errors) == 1 and "projection.w1.npy: shape" in errors[0], done.stderr


@pytest.mark.slow
def test_models_use_refuses_what_the_server_would_refuse(model_store: Path, tmp_path: Path) -> None:
    """Checksums alone pass this version (`models verify` says ok); the full load does not."""
    store = copy_store(model_store, tmp_path)
    good = store.latest_version()
    assert good is not None
    bad = clone_as_latest(store, "vcrafted")
    (store.root / "LATEST").write_text(f"{good}\n")
    crafted = patched(bad, "user_index.hnsw", "<I", _ENTRY_POINT_AT, _FAR_OUT)
    replace_file(bad, "user_index.hnsw", crafted)
    assert _recsvc("models", "verify", "vcrafted", "--model-store", str(store.root)).returncode == 0
    refused = _recsvc("models", "use", "vcrafted", "--model-store", str(store.root))
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert len(_error_lines(refused.stderr)) == 1
    assert "entry point" in refused.stderr
    assert store.latest_version() == good
    fine = clone_as_latest(store, "vfine")
    (store.root / "LATEST").write_text(f"{good}\n")
    used = _recsvc("models", "use", fine.name, "--model-store", str(store.root))
    assert used.returncode == 0, used.stderr
    assert store.latest_version() == "vfine"


# -- signing -------------------------------------------------------------------------------

KEY = b"k" * 32


def test_signed_store_loads_only_versions_signed_with_its_key(model: Model, tmp_path: Path) -> None:
    signed = ModelStore(tmp_path / "s", signing_key=KEY)
    signed.publish(model, BUILD)
    directory = latest_dir(signed)
    assert (directory / SIGNATURE_NAME).is_file()
    assert signed.load_latest(SEARCH).version == model.version
    # Another key, a tampered manifest, a missing signature: refused.
    with pytest.raises(ArtifactError, match="signature does not verify"):
        ModelStore(signed.root, signing_key=b"x" * 32).load_latest(SEARCH)
    edit_manifest(directory, lambda m: m.__setitem__("alpha", 2.0))
    with pytest.raises(ArtifactError, match="signature does not verify"):
        signed.load_latest(SEARCH)
    (directory / SIGNATURE_NAME).unlink()
    with pytest.raises(ArtifactError, match="unsigned"):
        signed.load_latest(SEARCH)
    # Without a key the signature is not needed (signing is optional).
    unsigned = ModelStore(tmp_path / "u")
    unsigned.publish(model, BUILD)
    assert not (latest_dir(unsigned) / SIGNATURE_NAME).exists()
    with pytest.raises(ArtifactError, match="unsigned"):
        ModelStore(unsigned.root, signing_key=KEY).load_latest(SEARCH)


def test_signing_key_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSVC_MODEL_STORE__SIGNING_KEY", KEY.decode())
    assert signing_key_from(load_settings()) == KEY
    monkeypatch.delenv("RECSVC_MODEL_STORE__SIGNING_KEY")
    secret = tmp_path / "signing-key"
    secret.write_bytes(KEY + b"\n")  # as `kubectl create secret --from-file` leaves it
    monkeypatch.setenv("RECSVC_MODEL_STORE__SIGNING_KEY_FILE", str(secret))
    assert signing_key_from(load_settings()) == KEY
    assert "k" * 32 not in load_settings().model_dump_json()
    secret.write_bytes(b"short")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        signing_key_from(load_settings())
    monkeypatch.setenv("RECSVC_MODEL_STORE__SIGNING_KEY", KEY.decode())
    with pytest.raises(ConfigError, match="not both"):
        signing_key_from(load_settings())


@pytest.mark.slow
def test_serve_and_models_use_with_a_key_refuse_an_unsigned_store(
    model_store: Path, tmp_path: Path
) -> None:
    store = copy_store(model_store, tmp_path)
    version = store.latest_version()
    assert version is not None
    env = {"RECSVC_MODEL_STORE__SIGNING_KEY": KEY.decode()}
    for args in (
        ("serve", "--model-store", str(store.root), "--port", "0"),
        ("models", "use", version, "--model-store", str(store.root)),
    ):
        done = _recsvc(*args, **env)
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        errors = _error_lines(done.stderr)
        assert len(errors) == 1 and "unsigned" in errors[0], done.stderr
    # Signed with the key (as training with the key set would), the same version serves.
    directory = store.versions_dir / version
    (directory / SIGNATURE_NAME).write_text(sign(KEY, (directory / "manifest.json").read_bytes()))
    used = _recsvc("models", "use", version, "--model-store", str(store.root), **env)
    assert used.returncode == 0, used.stderr


def test_a_fifo_or_link_as_latest_is_refused_without_blocking(
    model_store: Path, tmp_path: Path
) -> None:
    """The watcher reads LATEST on the event loop: it must never wait on it."""
    store = copy_store(model_store, tmp_path)
    version = store.latest_version()
    (store.root / "LATEST").unlink()
    os.mkfifo(store.root / "LATEST")
    started = time.monotonic()
    with pytest.raises(ArtifactError, match="LATEST is not a readable regular file"):
        store.latest_version()
    assert time.monotonic() - started < 5
    (store.root / "LATEST").unlink()
    (tmp_path / "elsewhere").write_text(f"{version}\n")
    (store.root / "LATEST").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ArtifactError, match="LATEST is not a readable regular file"):
        store.latest_version()


def test_train_with_a_key_signs_what_it_publishes(demo_data_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "signed-store"
    env = {"RECSVC_MODEL_STORE__SIGNING_KEY": KEY.decode(), "RECSVC_INDEX__RECALL_SAMPLE": "10"}
    args = ("--factors", "8", "--iterations", "2", "--threads", "1", "--no-progress")
    done = _recsvc("train", "--interactions", str(demo_data_path), "--out", str(out), *args, **env)
    assert done.returncode == 0, done.stderr
    directory = latest_dir(ModelStore(out))
    manifest = (directory / "manifest.json").read_bytes()
    check_signature(KEY, manifest, (directory / SIGNATURE_NAME).read_bytes(), "trained")
    assert ModelStore(out, signing_key=KEY).load_latest(SEARCH).info.factors == 8


def test_gc_removes_unsigned_damaged_and_linked_versions(model_store: Path, tmp_path: Path) -> None:
    """With signing turned on, old unsigned versions (and damaged or linked ones) must still be
    removable, or every round of the train worker would fail in its gc."""
    plain = copy_store(model_store, tmp_path)
    keep = plain.latest_version()
    assert keep is not None
    damaged = clone_as_latest(plain, "v0-damaged")
    (damaged / "manifest.json").write_text("{")
    outside = tmp_path / "outside-version"
    shutil.copytree(latest_dir(plain), outside)
    (plain.versions_dir / "v0-linked").symlink_to(outside, target_is_directory=True)
    (plain.root / "LATEST").write_text(f"{keep}\n")
    signed = ModelStore(plain.root, signing_key=KEY)
    assert sorted(signed.collect_garbage(keep=1)) == ["v0-damaged", "v0-linked"]
    assert plain.list_versions() == [keep]
    assert (outside / "manifest.json").is_file()  # the link went, not its target


@pytest.mark.parametrize("how", ["renamed over it", "rewritten in place"])
def test_hnswlib_reads_the_file_that_was_checked(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A crafted index put in place of the checked one after the check (a new file renamed
    over it, or the same file's bytes rewritten) is not what hnswlib gets: it gets the graph
    that was read and checked."""
    store = copy_store(model_store, tmp_path)
    directory = latest_dir(store)
    target = directory / "similar_index.hnsw"
    crafted = bytearray(patched(directory, target.name, "<I", _ENTRY_POINT_AT, _FAR_OUT))
    size_per_element = HEADER.unpack_from(crafted)[3]
    num_items = json.loads((directory / "manifest.json").read_text())["num_items"]
    level0_end = HEADER.size + num_items * size_per_element
    for record in range(HEADER.size, level0_end, size_per_element):
        struct.pack_into("<II", crafted, record, 1, _FAR_OUT)  # every level-0 list: one link out
    from recsvc.artifacts import layout

    checked = layout.read_hnsw_file
    swapped: list[bool] = []

    def check_then_swap(handle, count, dim):  # type: ignore[no-untyped-def]
        graph = checked(handle, count, dim)
        if os.readlink(f"/proc/self/fd/{handle.fileno()}").endswith(target.name):
            if how == "renamed over it":
                (tmp_path / "crafted.hnsw").write_bytes(crafted)
                os.replace(tmp_path / "crafted.hnsw", target)
            else:
                with target.open("r+b") as same_file:
                    same_file.write(crafted)
            swapped.append(True)
        return graph

    monkeypatch.setattr(layout, "read_hnsw_file", check_then_swap)
    model = store.load_latest(SEARCH)
    assert swapped, "the swap did not happen"
    labels, _ = model.similar_index.search(model.item_factors[0], 5)  # no crash
    assert len(labels) == 5
