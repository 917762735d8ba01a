from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import recsvc.data.interaction_files
from recsvc.catalogue.reader import read_categories
from recsvc.data.interaction_files import read_interactions
from recsvc.data.matrix import ReadOptions
from recsvc.errors import DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_with_weights_aggregates_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path / "i.csv", "user_id,item_id,weight\nu1,a,1\nu1,a,2\nu2,b,1\nu1,b,0.5\n")
    data = read_interactions(path)
    assert data.user_ids == ["u1", "u2"]
    assert data.item_ids == ["a", "b"]
    assert data.num_interactions == 3
    assert data.matrix[0, 0] == pytest.approx(3.0)
    assert data.rows_read == 4


def test_tsv_without_weight_column_counts_one(tmp_path: Path) -> None:
    path = write(tmp_path / "i.tsv", "user\titem\ttimestamp\n1\t10\t5\n2\t10\t6\n")
    data = read_interactions(path)
    assert data.user_ids == ["1", "2"]
    assert data.matrix.sum() == pytest.approx(2.0)


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "i.parquet"
    pq.write_table(
        pa.table({"userId": [1, 2, 2], "movieId": [5, 5, 6], "rating": [4.0, 3.0, 1.0]}), path
    )
    data = read_interactions(path)
    assert data.num_interactions == 3
    assert set(data.item_ids) == {"5", "6"}


def test_movielens_u_data(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    data = read_interactions(path)
    assert data.user_ids == ["196", "186"]
    assert data.matrix.sum() == pytest.approx(6.0)


def test_rows_with_bad_weights_are_dropped_and_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "i.csv", "user_id,item_id,weight\nu1,a,1\nu1,b,-1\n,c,1\nu2,d,0\n")
    data = read_interactions(path)
    assert data.num_interactions == 1
    assert data.report.rows_skipped == 3
    assert data.report.problems == {
        "user_id: empty id": 1,
        "weight: weight must be a positive number": 2,
    }
    assert data.report.examples[0].endswith("row 3, column 'user_id': empty id")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("user_id,item_id\n", "no interactions"),
        ("customer,thing\nu1,a\n", "needs a user column"),
        ("user_id,item_id,weight\nu1,a,lots\n", "column 'weight': not a number"),
        ("user_id,item_id,weight\nu1,a,0\n", "none of its 1 rows"),
        ("user_id,item_id\nu1,a,extra\n", "none of its 1 rows"),
    ],
)
def test_bad_files_fail_with_a_message_naming_the_problem(
    tmp_path: Path, content: str, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        read_interactions(write(tmp_path / "i.csv", content))


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_interactions(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="cannot tell the format"):
        read_interactions(write(tmp_path / "data.xyz", "user_id,item_id\nu,i\n"))


def test_catalogue_categories(tmp_path: Path) -> None:
    path = write(tmp_path / "items.csv", "item_id,category\na,books\nb,\nc,toys\n")
    assert read_categories(path) == {"a": "books", "c": "toys"}


def test_strict_mode_fails_on_the_first_bad_row_naming_row_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "i.csv", "user_id,item_id,weight\nu1,a,1\nu2,b,x\nu3,c,-1\n")
    assert read_interactions(path).num_interactions == 1
    with pytest.raises(DataError, match=r"row 2, column 'weight': not a number \(strict"):
        read_interactions(path, ReadOptions(strict=True))


def test_wrong_field_count_is_reported_by_line(tmp_path: Path) -> None:
    path = write(tmp_path / "i.csv", "user_id,item_id\nu1,a\nu2,b,c\nu3,c\n")
    data = read_interactions(path)
    assert data.num_interactions == 2 and data.report.rows_skipped == 1
    assert "u2,b,c" in data.report.examples[0] and "3 fields, expected 2" in data.report.examples[0]
    with pytest.raises(DataError, match=r"i\.csv: .*Expected 2 columns, got 3: u2,b,c"):
        read_interactions(path, ReadOptions(strict=True))


def test_event_types_with_configured_weights(tmp_path: Path) -> None:
    path = write(
        tmp_path / "e.csv",
        "visitorid,itemid,event\n1,a,view\n1,a,cart\n2,b,purchase\n2,c,wishlist\n",
    )
    weights = {"view": 1.0, "cart": 3.0, "purchase": 5.0}
    data = read_interactions(path, ReadOptions(event_weights=weights))
    assert data.matrix[0, data.item_ids.index("a")] == pytest.approx(4.0)
    assert data.matrix[1, data.item_ids.index("b")] == pytest.approx(5.0)
    assert data.report.problems == {"event: unknown event type": 1}


def test_explicit_column_names_and_a_missing_one(tmp_path: Path) -> None:
    path = write(tmp_path / "i.csv", "who,what,how_much\nu1,a,2\n")
    options = ReadOptions(user_column="who", item_column="what", weight_column="how_much")
    assert read_interactions(path, options).matrix.sum() == pytest.approx(2.0)
    with pytest.raises(DataError, match="no column 'nope'"):
        read_interactions(path, ReadOptions(user_column="nope"))


def test_timestamps_keep_the_latest_and_accept_iso_dates(tmp_path: Path) -> None:
    path = write(
        tmp_path / "i.csv",
        "user_id,item_id,timestamp\nu1,a,100\nu1,a,300\nu2,a,2026-01-01T00:00:00\nu2,b,soon\n",
    )
    data = read_interactions(path)
    assert data.timestamps is not None
    assert data.timestamps[0, 0] == 300
    assert data.timestamps[1, 0] == 1767225600
    assert data.report.problems == {"timestamp: not a Unix time or ISO-8601 date": 1}
    assert data.report.duplicates_aggregated == 1


def test_minimum_counts_filter_users_and_items(tmp_path: Path) -> None:
    rows = ["u1,a", "u1,b", "u1,c", "u2,a", "u2,b", "u3,a"]
    path = write(tmp_path / "i.csv", "user_id,item_id\n" + "\n".join(rows) + "\n")
    data = read_interactions(path, ReadOptions(min_user_interactions=2, min_item_interactions=2))
    assert data.user_ids == ["u1", "u2"] and data.item_ids == ["a", "b"]
    assert data.report.users_filtered == 1 and data.report.items_filtered == 1
    with pytest.raises(DataError, match="minimum-count"):
        read_interactions(path, ReadOptions(min_user_interactions=10))


def test_reading_in_many_blocks_gives_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [f"u{n % 97},i{n % 89},{1 + n % 3}" for n in range(5000)]
    path = write(tmp_path / "i.csv", "user_id,item_id,weight\n" + "\n".join(lines) + "\n")
    whole = read_interactions(path)
    monkeypatch.setattr(recsvc.data.interaction_files, "CSV_BLOCK_BYTES", 1024)
    blocks = read_interactions(path)
    assert blocks.user_ids == whole.user_ids and blocks.item_ids == whole.item_ids
    assert (blocks.matrix != whole.matrix).nnz == 0
    assert blocks.rows_read == 5000


def test_tsv_bad_rows_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "i.tsv", "user\titem\tweight\nu1\ta\t1\nu2\t\t1\nu3\tc\tnan\n")
    data = read_interactions(path)
    assert data.num_interactions == 1
    assert data.report.problems == {"item: empty id": 1, "weight: not a number": 1}


def test_movielens_with_a_broken_line(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\n22\t377\t1\t878887116\n")
    data = read_interactions(path)
    assert data.num_interactions == 2 and data.report.rows_skipped == 1
    with pytest.raises(DataError, match=r"u\.data"):
        read_interactions(path, ReadOptions(strict=True))


def test_parquet_bad_inputs(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match=r"garbage\.parquet"):
        read_interactions(garbage)

    empty = tmp_path / "empty.parquet"
    pq.write_table(
        pa.table({"user_id": pa.array([], pa.string()), "item_id": pa.array([], pa.string())}),
        empty,
    )
    with pytest.raises(DataError, match="holds no interactions"):
        read_interactions(empty)

    no_item = tmp_path / "no_item.parquet"
    pq.write_table(pa.table({"user_id": ["a"], "colour": ["red"]}), no_item)
    with pytest.raises(DataError, match="needs a user column"):
        read_interactions(no_item)

    text_weights = tmp_path / "text.parquet"
    pq.write_table(
        pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"], "weight": ["2", "lots"]}),
        text_weights,
    )
    data = read_interactions(text_weights)
    assert data.num_interactions == 1
    assert data.report.problems == {"weight: not a number": 1}
