from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from training.data import DataError, load_spec, split_title_year

MOVIES = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Heat (1995)::Action|Crime\n"
RATINGS = "1::2::5::978300760\n1::1::3::978300700\n2::1::4::978300800\n"


def write_ml1m(folder: Path, ratings: str = RATINGS, gz: bool = False) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "movies.dat").write_bytes(MOVIES.encode("latin-1"))
    if gz:
        with gzip.open(folder / "ratings.dat.gz", "wb") as handle:
            handle.write(ratings.encode("latin-1"))
    else:
        (folder / "ratings.dat").write_bytes(ratings.encode("latin-1"))
    return folder


@pytest.mark.parametrize("gz", [False, True])
def test_movielens_1m_sorted_by_time_with_titles_and_genres(tmp_path, gz):
    dataset = load_spec(f"movielens-1m:{write_ml1m(tmp_path / 'ml', gz=gz)}")
    assert dataset.sequences() == {"1": ["1", "2"], "2": ["1"]}
    toy = dataset.items.set_index("item_id").loc["1"]
    assert toy.title == "Toy Story"
    assert toy.year == 1995
    assert toy.categories == ["Animation", "Children's", "Comedy"]


def test_movielens_1m_bad_line_names_file_and_line(tmp_path):
    folder = write_ml1m(tmp_path / "ml", ratings=RATINGS + "3::1::5\n")
    with pytest.raises(DataError, match=r"ratings\.dat:4: expected 4 '::'-separated fields, got 3"):
        load_spec(f"movielens-1m:{folder}")


def test_movielens_1m_bad_timestamp(tmp_path):
    folder = write_ml1m(tmp_path / "ml", ratings="1::1::5::yesterday\n")
    with pytest.raises(DataError, match=r"ratings\.dat:1: timestamp 'yesterday'"):
        load_spec(f"movielens-1m:{folder}")


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_spec(f"movielens-1m:{tmp_path / 'nowhere'}")


def test_movielens_latest(tmp_path):
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\r\n1,10,4.0,20\r\n1,11,3.5,10\r\n"
    )
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\r\n10,"Matrix, The (1999)",Action|Sci-Fi\r\n'
        "11,Up (2009),(no genres listed)\r\n"
    )
    dataset = load_spec(f"movielens-latest:{tmp_path}")
    assert dataset.sequences() == {"1": ["11", "10"]}
    items = dataset.items.set_index("item_id")
    assert items.loc["10"].title == "Matrix, The"
    assert items.loc["11"].categories == []


def test_csv_and_parquet_tables(tmp_path):
    interactions = pd.DataFrame(
        {"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"], "timestamp": [2, 1, 5]}
    )
    items = pd.DataFrame(
        {
            "item_id": ["x", "y"],
            "title": ["Ex", "Why"],
            "category": ["Tools|Saws", ""],
            "description": ["sharp", ""],
        }
    )
    interactions.to_csv(tmp_path / "i.csv", index=False)
    items.to_parquet(tmp_path / "items.parquet")
    dataset = load_spec(f"csv:{tmp_path / 'i.csv'},{tmp_path / 'items.parquet'}")
    assert dataset.sequences() == {"a": ["y", "x"], "b": ["x"]}
    assert dataset.items.set_index("item_id").loc["x"].categories == ["Tools", "Saws"]


def test_csv_missing_column_names_file_and_columns(tmp_path):
    (tmp_path / "i.csv").write_text("user,item_id,timestamp\n1,2,3\n")
    (tmp_path / "items.csv").write_text("item_id,title\n2,Two\n")
    with pytest.raises(DataError, match=r"i\.csv: missing column\(s\) user_id"):
        load_spec(f"csv:{tmp_path / 'i.csv'},{tmp_path / 'items.csv'}")


def test_csv_bad_timestamp_names_line_and_column(tmp_path):
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\n1,2,3\n1,2,soon\n")
    (tmp_path / "items.csv").write_text("item_id,title\n2,Two\n")
    with pytest.raises(DataError, match=r"i\.csv: line 3, column 'timestamp': 'soon'"):
        load_spec(f"csv:{tmp_path / 'i.csv'},{tmp_path / 'items.csv'}")


def test_csv_empty_title(tmp_path):
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\n1,2,3\n")
    (tmp_path / "items.csv").write_text("item_id,title\n2,\n")
    with pytest.raises(DataError, match=r"items\.csv: line 2, column 'title' is empty"):
        load_spec(f"csv:{tmp_path / 'i.csv'},{tmp_path / 'items.csv'}")


@pytest.mark.parametrize("spec", ["nonsense:x", "movielens-1m", "csv:only-one", "demo:many"])
def test_bad_spec(spec):
    with pytest.raises(DataError, match="data spec"):
        load_spec(spec)


def test_split_title_year():
    assert split_title_year("Heat (1995)") == ("Heat", 1995)
    assert split_title_year("No Year") == ("No Year", None)
