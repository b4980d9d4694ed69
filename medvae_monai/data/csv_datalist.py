"""A CSV datalist: one row per image, as clinical tables come (e.g. LIDC-IDRI's ``labels.csv``).

Columns:
- ``image`` (required): the image path, relative to the CSV's folder or absolute;
- ``label`` or ``diagnosis`` (optional): the class, an integer or a class name;
- ``mask`` (optional): the mask path, resolved like ``image``;
- ``patient_id`` (optional): when present, splits keep each patient's images on one side
  (:mod:`~medvae_monai.data.splits`);
- any other column is kept in every item, typed per column so that batches collate: numbers when
  every filled cell is one (an empty cell is NaN), else text (an empty cell is ``""``), e.g.
  ``diameter_mm`` for a baseline. Such columns never reach a model, which reads ``image`` alone.

A row with more or fewer fields than the header is refused (its values would shift columns), and so
is a second row naming the same image file, however its path is spelled.

Read with Python's :mod:`csv` module: the table is small, and this avoids a pandas dependency.
"""

from __future__ import annotations

import csv
import difflib
from pathlib import Path

from ..errors import InputError
from .source import ImageSource

__all__ = ["CSVDatalistSource"]

LABEL_COLUMNS = ("label", "diagnosis")
DEFAULT_NAME = "labels.csv"  # a folder holding this file is read as a CSV datalist


def _number(text: str) -> int | float | str:
    """``text`` as an int or a float when it is one, else unchanged."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _typed_columns(rows: list[dict], columns: list[str]) -> dict[str, list]:
    """Each column's cells, typed as one: numbers (empty cells NaN) when every filled cell is one, else text."""
    out = {}
    for c in columns:
        cells = [r[c] for r in rows]
        parsed = [_number(v) for v in cells if v != ""]
        if parsed and not any(isinstance(v, str) for v in parsed):
            whole = all(isinstance(v, int) for v in parsed) and all(v != "" for v in cells)
            out[c] = [(int if whole else float)(_number(v)) if v != "" else float("nan") for v in cells]
        else:
            out[c] = cells
    return out


class CSVDatalistSource(ImageSource):
    """A CSV datalist (``.csv``, or a folder with ``labels.csv``); see the module docstring.

    Labels that are integers index ``class_names`` (``"0"``, ``"1"``, ... unless ``class_names`` is
    given); labels that are names become indices into their sorted set (or into ``class_names``).
    """

    kind = "csv"
    priority = 25

    @classmethod
    def claims(cls, path):
        if path is None:
            return False
        return (path.is_file() and path.suffix.lower() == ".csv") or (path / DEFAULT_NAME).is_file()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.listing = self.dataset_dir / DEFAULT_NAME if self.dataset_dir.is_dir() else self.dataset_dir
        self.root = self.listing.parent

    def _rows(self) -> tuple[list[dict], str | None]:
        try:
            with open(self.listing, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheet exports add a BOM
                reader = csv.DictReader(f)
                columns = [c.strip() for c in reader.fieldnames or []]
                rows = []
                for r in reader:
                    if None in r or None in r.values():  # DictReader's marks of too many / too few fields
                        fields = len(columns) + len(r[None]) if None in r else sum(v is not None for v in r.values())
                        raise InputError(
                            f"{self.listing}: row {reader.line_num} has {fields} fields and the header {len(columns)}; "
                            "its values would shift columns. Fix the row (quote a value that holds a comma)."
                        )
                    rows.append({k.strip(): v.strip() for k, v in r.items()})
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise InputError(f"{self.listing}: cannot be read as a CSV datalist ({e}).") from None
        if "image" not in columns:
            close = difflib.get_close_matches("image", columns, n=1)
            hint = f" (is {close[0]!r} it? rename it)" if close else ""
            raise InputError(f"{self.listing}: no 'image' column{hint}; the columns are {columns}. A CSV datalist "
                             "needs 'image', and optionally 'label' or 'diagnosis', 'mask' and 'patient_id'.")
        if not rows:
            raise InputError(f"{self.listing}: no rows; add one row per image.")
        return rows, next((c for c in LABEL_COLUMNS if c in columns), None)

    def _path(self, row: int, column: str, value: str) -> str:
        path = self.root / value
        if not path.is_file():
            raise InputError(f"{self.listing}: row {row}: {column} {path} does not exist; fix the path in the CSV.")
        return str(path)

    def _list(self):
        rows, label_col = self._rows()
        items, seen = [], {}
        extra = _typed_columns(rows, [k for k in rows[0] if k not in ("image", "mask", "patient_id", *LABEL_COLUMNS)])
        for n, r in enumerate(rows, start=2):  # row 1 is the header
            if not r["image"]:
                raise InputError(f"{self.listing}: row {n} has no image path.")
            source = Path(r["image"]).as_posix()
            image = self._path(n, "image", r["image"])
            first = seen.setdefault(Path(image).resolve(), (n, source))
            if first[0] != n:
                raise InputError(f"{self.listing}: rows {first[0]} and {n} both list {first[1]}"
                                 f"{f' (as {source})' if source != first[1] else ''}; keep one row per image.")
            item = {k: values[n - 2] for k, values in extra.items()}
            item.update(image=image, source=source)
            if r.get("mask"):
                item["mask"] = self._path(n, "mask", r["mask"])
            if "patient_id" in r:
                if not r["patient_id"]:
                    raise InputError(f"{self.listing}: row {n} has no patient_id; fill it in (splits are by patient) "
                                     "or drop the column.")
                item["patient_id"] = r["patient_id"]  # an id, even when it looks like a number
            if label_col and r[label_col] != "":
                item["label"] = _number(r[label_col])
            items.append(item)
        self._check_label_column(items, label_col)
        return items, self._index_labels(items, label_col)

    def _check_label_column(self, items: list[dict], label_col: str | None) -> None:
        """A label column is filled in on every row, with indices or names, not both (row 1 is the header)."""
        rows = [(n, it.get("label")) for n, it in enumerate(items, start=2)]
        empty = [n for n, v in rows if v is None]
        if label_col and 0 < len(empty) < len(rows):
            raise InputError(f"{self.listing}: row {empty[0]} has no '{label_col}' ({len(empty)} of {len(rows)} rows "
                             f"are empty); fill them in, or list unlabelled images in a CSV without that column.")
        kinds = {isinstance(v, str) for _, v in rows if v is not None}
        if len(kinds) == 2:
            n, v = next((n, v) for n, v in rows if isinstance(v, str) != isinstance(rows[0][1], str))
            raise InputError(f"{self.listing}: row {n}: '{label_col}' is {v!r}, but row 2 has {rows[0][1]!r}; use "
                             "class indices (0, 1, ...) or class names in every row, not both.")

    def _index_labels(self, items: list[dict], label_col: str | None) -> list[str]:
        """Turn every ``label`` into a class index; return the class names in index order."""
        labels = [it["label"] for it in items if "label" in it]
        if not labels:
            return []
        expected = self.expected_class_names
        if all(isinstance(v, int) or (isinstance(v, float) and v.is_integer()) for v in labels):
            names = expected or [str(c) for c in range(int(max(labels)) + 1)]
            bad = sorted({int(v) for v in labels if not 0 <= v < len(names)})
            if bad:
                raise InputError(f"{self.listing}: '{label_col}' values {bad} are outside 0..{len(names) - 1} for "
                                 f"the classes {names}.")
            for it in (it for it in items if "label" in it):
                it["label"] = int(it["label"])
            return names
        names = expected or sorted({str(v) for v in labels})
        unknown = sorted({str(v) for v in labels} - set(names))
        if unknown:
            raise InputError(f"{self.listing}: '{label_col}' value {unknown[0]!r} is not one of the classes {names}.")
        for it in (it for it in items if "label" in it):
            it["class_name"] = str(it["label"])
            it["label"] = names.index(it["class_name"])
        return names
