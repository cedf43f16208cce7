"""Load interaction logs and item catalogues into one shape, with errors that name file and line.

Every loader returns a :class:`training.dataset.Dataset`: ``interactions`` (user_id,
item_id, timestamp; sorted by user then time, ties kept in file order) and ``items``
(item_id, title, year, categories, description). IDs are strings.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from training.dataset import Dataset
from training.demo_data import NUM_USERS, generate_demo

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")
CATEGORY_COLUMNS = ("categories", "category", "genres")


class DataError(ValueError):
    """Input data is missing or malformed; the message names the file (and line or column)."""


def _open_text(path: Path, encoding: str) -> io.TextIOBase:
    """Open FILE or FILE.gz as text."""
    if not path.exists() and Path(f"{path}.gz").exists():
        path = Path(f"{path}.gz")
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")  # noqa: SIM115 (returned to caller)


def _dat_rows(path: Path, fields: int) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a MovieLens ``::`` file, latin-1."""
    with _open_text(path, "latin-1") as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("::")
            if len(parts) != fields:
                raise DataError(
                    f"{path}:{line_no}: expected {fields} '::'-separated fields, got {len(parts)}"
                )
            yield line_no, parts


def split_title_year(raw: str) -> tuple[str, int | None]:
    """'Toy Story (1995)' → ('Toy Story', 1995)."""
    match = _TITLE_YEAR.match(raw.strip())
    if match:
        return match["title"], int(match["year"])
    return raw.strip(), None


def _finish(name: str, interactions: pd.DataFrame, items: pd.DataFrame) -> Dataset:
    """Sort stably by user then time, drop interactions with unknown items, check non-empty."""
    interactions = interactions.astype({"user_id": str, "item_id": str, "timestamp": "int64"})
    items = items.astype({"item_id": str}).drop_duplicates("item_id").reset_index(drop=True)
    known = interactions["item_id"].isin(set(items["item_id"]))
    interactions = interactions[known]
    interactions = interactions.sort_values(["user_id", "timestamp"], kind="stable").reset_index(
        drop=True
    )
    if interactions.empty:
        raise DataError(f"{name}: no interactions with items of the catalogue")
    return Dataset(name=name, interactions=interactions, items=items)


def load_movielens_1m(folder: Path) -> Dataset:
    """MovieLens-1M: ratings.dat and movies.dat (latin-1, '::'), plain or .gz."""
    rows = []
    ratings = folder / "ratings.dat"
    for line_no, (user, item, _rating, ts) in _dat_rows(ratings, 4):
        if not ts.isdigit():
            raise DataError(f"{ratings}:{line_no}: timestamp {ts!r} is not an integer")
        rows.append((user, item, int(ts)))
    interactions = pd.DataFrame(rows, columns=list(INTERACTION_COLUMNS))
    movies = folder / "movies.dat"
    records = []
    for _line_no, (item, raw_title, genres) in _dat_rows(movies, 3):
        title, year = split_title_year(raw_title)
        records.append((item, title, year, genres.split("|") if genres else [], ""))
    items = pd.DataFrame(records, columns=["item_id", "title", "year", "categories", "description"])
    return _finish(f"movielens-1m:{folder}", interactions, items)


def load_movielens_1m_sasrec(folder: Path, movies: Path | None = None) -> Dataset:
    """SASRec's ml-1m.txt (``user item`` per line, time-ordered) with titles and genres.

    Items are SASRec's own IDs (1..3416); ``sas_to_original_items.txt`` maps them to
    MovieLens IDs so titles and genres come from ``movies.dat`` (by default the
    ``ml-1m`` folder beside DIR). The line order is the time order, so the line
    number serves as the timestamp.
    """
    rows = []
    sequence_file = folder / "ml-1m.txt"
    with _open_text(sequence_file, "utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            parts = line.split()
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise DataError(f"{sequence_file}:{line_no}: expected 'user item' integers")
            rows.append((parts[0], parts[1], line_no))
    interactions = pd.DataFrame(rows, columns=list(INTERACTION_COLUMNS))
    mapping_file = folder / "sas_to_original_items.txt"
    to_original = {}
    with _open_text(mapping_file, "utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{mapping_file}:{line_no}: expected 'sas_item_id movie_id'")
            to_original[parts[1]] = parts[0]
    movies = movies or folder.parent / "ml-1m" / "movies.dat"
    records = []
    for _line_no, (movie, raw_title, genres) in _dat_rows(movies, 3):
        if movie in to_original:
            title, year = split_title_year(raw_title)
            records.append((to_original[movie], title, year, genres.split("|"), ""))
    items = pd.DataFrame(records, columns=["item_id", "title", "year", "categories", "description"])
    if len(items) != len(to_original):
        raise DataError(f"{movies}: {len(to_original) - len(items)} mapped movies are missing")
    items = items.sort_values("item_id", key=lambda s: s.astype(int)).reset_index(drop=True)
    return _finish(f"movielens-1m-sasrec:{folder}", interactions, items)


def load_movielens_latest(folder: Path) -> Dataset:
    """MovieLens latest(-small): ratings.csv and movies.csv (UTF-8, header)."""
    ratings = _read_table(folder / "ratings.csv", ["userId", "movieId", "timestamp"])
    interactions = ratings.rename(columns={"userId": "user_id", "movieId": "item_id"})[
        list(INTERACTION_COLUMNS)
    ]
    _check_integer(interactions, "timestamp", folder / "ratings.csv")
    movies = _read_table(folder / "movies.csv", ["movieId", "title", "genres"])
    records = []
    for item, raw_title, genres in movies[["movieId", "title", "genres"]].itertuples(index=False):
        title, year = split_title_year(str(raw_title))
        cats = [] if genres in ("(no genres listed)", "") else str(genres).split("|")
        records.append((str(item), title, year, cats, ""))
    items = pd.DataFrame(records, columns=["item_id", "title", "year", "categories", "description"])
    return _finish(f"movielens-latest:{folder}", interactions, items)


def _read_table(path: Path, required: list[str]) -> pd.DataFrame:
    """Read CSV (or .csv.gz) or Parquet by suffix and check required columns."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read as a table ({exc})") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; "
            f"found {', '.join(map(str, frame.columns))}"
        )
    return frame


def _check_integer(frame: pd.DataFrame, column: str, path: Path) -> None:
    """Convert a column to int64 in place, naming the first bad line (header = line 1)."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        where = f"line {row + 2}" if path.suffix != ".parquet" else f"row {row}"
        raise DataError(
            f"{path}: {where}, column {column!r}: {frame[column].iloc[row]!r} is not an integer"
        )
    frame[column] = values.astype("int64")


def load_tables(interactions_path: Path, items_path: Path) -> Dataset:
    """Generic pair of tables (CSV or Parquet).

    interactions: user_id, item_id, timestamp (integer, e.g. Unix seconds).
    items: item_id, title; optional year, categories|category|genres ('|'-separated),
    description.
    """
    interactions = _read_table(interactions_path, list(INTERACTION_COLUMNS))
    interactions = interactions[list(INTERACTION_COLUMNS)].copy()
    for column in ("user_id", "item_id"):
        empty = interactions[column].astype(str).str.strip() == ""
        if empty.any():
            row = int(empty.to_numpy().nonzero()[0][0])
            raise DataError(f"{interactions_path}: line {row + 2}, column {column!r} is empty")
    _check_integer(interactions, "timestamp", interactions_path)
    items = read_items(items_path)
    return _finish(f"csv:{interactions_path},{items_path}", interactions, items)


def read_items(items_path: Path) -> pd.DataFrame:
    """An items table (CSV or Parquet): item_id, title; optional year, categories, description."""
    frame = _read_table(items_path, ["item_id", "title"])
    category_column = next((c for c in CATEGORY_COLUMNS if c in frame.columns), None)
    records = []
    for row, record in enumerate(frame.to_dict("records")):
        title = str(record["title"]).strip()
        if not title:
            raise DataError(f"{items_path}: line {row + 2}, column 'title' is empty")
        year = record.get("year")
        title_only, title_year = split_title_year(title)
        try:
            year_value = int(year) if year not in (None, "") else title_year
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"{items_path}: line {row + 2}, column 'year': {year!r} is not an integer"
            ) from exc
        cats_raw = record.get(category_column, "") if category_column else ""
        cats = [c.strip() for c in str(cats_raw or "").split("|") if c.strip()]
        records.append(
            (
                str(record["item_id"]),
                title_only if year in (None, "") else title,
                year_value,
                cats,
                str(record.get("description", "") or ""),
            )
        )
    items = pd.DataFrame(records, columns=["item_id", "title", "year", "categories", "description"])
    duplicated = items["item_id"].duplicated()
    if duplicated.any():
        row = int(duplicated.to_numpy().nonzero()[0][0])
        raise DataError(f"{items_path}: line {row + 2}: item_id {items['item_id'][row]!r} repeats")
    return items


def load_spec(spec: str) -> Dataset:
    """Load a dataset: demo[:USERS] | demo-titles[:USERS] | movielens-1m:DIR | … | csv:I,ITEMS."""
    kind, _, arg = spec.partition(":")
    if kind in ("demo", "demo-titles"):
        if arg and not arg.isdigit():
            raise DataError(f"data spec {spec!r}: expected {kind} or {kind}:NUM_USERS")
        return generate_demo(
            num_users=int(arg) if arg else NUM_USERS, titles_only=kind == "demo-titles"
        )
    if not arg:
        raise DataError(f"data spec {spec!r}: expected KIND:PATH (see --help)")
    if kind == "movielens-1m":
        return load_movielens_1m(Path(arg))
    if kind == "movielens-1m-sasrec":
        folder, _, movies = arg.partition(",")
        return load_movielens_1m_sasrec(Path(folder), Path(movies) if movies else None)
    if kind == "movielens-latest":
        return load_movielens_latest(Path(arg))
    if kind in ("csv", "parquet", "tables"):
        parts = arg.split(",")
        if len(parts) != 2:
            raise DataError(f"data spec {spec!r}: expected csv:INTERACTIONS,ITEMS")
        return load_tables(Path(parts[0]), Path(parts[1]))
    raise DataError(
        f"data spec {spec!r}: unknown kind {kind!r}; use demo, movielens-1m:DIR, "
        "movielens-1m-sasrec:DIR[,MOVIES], movielens-latest:DIR or csv:INTERACTIONS,ITEMS"
    )
