from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsvc.errors import DataError
from workers.interactions import read_categories, read_interactions


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
    assert data.rows_dropped == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("user_id,item_id\n", "no interactions"),
        ("customer,thing\nu1,a\n", "needs a user column"),
        ("user_id,item_id,weight\nu1,a,lots\n", "weight"),
        ("user_id,item_id,weight\nu1,a,0\n", "none of its 1 rows"),
        ("user_id,item_id\nu1,a,extra\n", "i.csv"),
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
