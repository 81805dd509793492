"""Raw task data: the official files on disk, or the Hugging Face hub, through `datasets`' own loaders.

``load_split(spec, "train"|"dev", data_dir)`` returns a :class:`datasets.Dataset` with the task's input
fields and an integer (or float, for regression) ``label`` column, after checking the file: it exists, is
not empty, has the columns the task reads, every row's input fields are present and text
(:meth:`~pl_petune.tasks.TaskSpec.row_problem`) and blank in at most 1 % of rows (a few are warned of), and
every label is in the task's label set. Problems raise
:class:`DataError` with one line naming the file, the row and what is wrong. TSV cells are read as text
(a sentence ``1984`` stays the string ``"1984"``), so a TSV can only lack a field, never mistype one.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from pl_petune.errors import PetuneError
from pl_petune.tasks import HUB_COLUMNS, TaskSpec

ENV_DATA_DIR = "PETUNE_DATA_DIR"
# the most rows of one input field that may be blank: the official QQP train has a few empty questions
BLANK_TOLERANCE = 0.01
SPLITS = ("train", "dev")


class DataError(PetuneError, ValueError):
    """Task data that cannot be used as it is (one line: file, row, problem)."""


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The local data directory: the argument, else ``$PETUNE_DATA_DIR``, else None (use the hub)."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(ENV_DATA_DIR) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"data dir {str(path)!r} does not exist; pass an existing directory (data.data_dir or "
                        f"${ENV_DATA_DIR}) holding glue/ and super_glue/, or leave both unset to use the hub")
    return path


def local_file(spec: TaskSpec, split: str, data_dir: Path) -> Path:
    return data_dir / spec.local["dir"] / spec.local[split]


def source_id(spec: TaskSpec, split: str, data_dir: Path | None) -> str:
    """A string that changes when the split's content may have changed (for cache keys)."""
    if data_dir is None:
        path, config, splits = spec.hub
        return f"hub:{path}/{config}/{splits[split]}"
    f = local_file(spec, split, data_dir)
    file_stat = f.stat()
    return f"file:{f.resolve()}:{file_stat.st_size}:{int(file_stat.st_mtime)}"


def load_split(spec: TaskSpec, split: str, data_dir: str | os.PathLike | None = None):
    """Load one split (``train`` or ``dev``) of ``spec`` as a checked :class:`datasets.Dataset`."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    root = resolve_data_dir(data_dir)
    if root is None:
        return _load_hub(spec, split)
    return _load_local(spec, split, local_file(spec, split, root))


def _load_local(spec: TaskSpec, split: str, path: Path):
    import datasets

    if not path.is_file():
        have = sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else []
        raise DataError(f"{path}: file not found for task {spec.name} split {split}"
                        + (f"; the folder has: {', '.join(have)}" if have else "; the folder does not exist"))
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    datasets.disable_progress_bars()
    try:
        if path.suffix == ".jsonl":
            _check_jsonl(path, spec)
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        else:
            delimiter = spec.local.get("delimiter", "\t")
            kwargs: dict[str, Any] = {"delimiter": delimiter, "quoting": spec.local.get("quoting", 3),
                                      "keep_default_na": False}
            if "column_names" in spec.local:
                kwargs["column_names"] = names = list(spec.local["column_names"])
            else:
                with path.open(encoding="utf-8") as fh:
                    names = fh.readline().rstrip("\r\n").split(delimiter)
            if len(set(names)) == len(names):  # every cell as text: a sentence "1984" must not become a number
                kwargs["features"] = datasets.Features({n: datasets.Value("string") for n in names})
            if kwargs["quoting"] == 3:
                _check_tsv_rows(path, spec, names, delimiter, header="column_names" not in spec.local)
            ds = datasets.load_dataset("csv", data_files=str(path), split="train", **kwargs)
    except DataError:
        raise
    except Exception as err:  # datasets/pyarrow/pandas parse errors: keep one line
        msg = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot be read as {spec.benchmark} {path.suffix} ({msg})") from None
    if len(ds) == 0:
        raise DataError(f"{path}: no rows")
    return _normalise(spec, ds, str(path),
                      row_offset=2 if path.suffix == ".tsv" and "column_names" not in spec.local else 1)


def _check_jsonl(path: Path, spec: TaskSpec) -> None:
    """Every line is a JSON object whose input fields the task can read (before ``datasets`` infers column
    types, which would fail on a mixed-type column without naming the row). A field absent from every row is
    left to the column check, whose message says the file has the wrong layout."""
    rows: list[tuple[int, dict]] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: row {lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
            seen.update(row)
    absent = {name: "" for name in spec.fields if name not in seen}
    for lineno, row in rows:
        problem = spec.row_problem({**row, **absent})
        if problem:
            raise DataError(f"{path}: row {lineno}: {problem} (task {spec.name})")


def _check_tsv_rows(path: Path, spec: TaskSpec, names: list[str], delimiter: str, header: bool) -> None:
    """Every line has the header's number of fields (without quoting, a line's fields are exactly its
    delimiters + 1); a short line would otherwise be read with its missing fields as empty text."""
    inputs = set(spec.fields)
    layout = "the header has" if header else f"task {spec.name}'s layout has"
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if (header and lineno == 1) or not line.strip("\r\n"):
                continue
            n = line.rstrip("\r\n").count(delimiter) + 1
            if n < len(names):
                lost = [c for c in names[n:] if c in inputs or c == spec.label_column] or names[n:]
                raise DataError(f"{path}: row {lineno}: {n} field(s) where {layout} {len(names)}: "
                                f"field {lost[0]!r} is missing (task {spec.name})")
            if n > len(names):
                raise DataError(f"{path}: row {lineno}: {n} fields where {layout} {len(names)} "
                                f"({', '.join(names)})")


def _load_hub(spec: TaskSpec, split: str):
    import datasets

    path, config, splits = spec.hub
    try:
        ds = datasets.load_dataset(path, config, split=splits[split])
    except Exception as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"hub dataset {path}/{config} split {splits[split]}: cannot be loaded ({msg}); offline? "
                        f"pass data.data_dir or set ${ENV_DATA_DIR} to use local files") from None
    renames = {k: v for k, v in HUB_COLUMNS.get(spec.name, {}).items() if k in ds.column_names}
    if renames:
        ds = ds.rename_columns(renames)
    if spec.label_column in ds.column_names and spec.kind == "classification":
        # hub labels are class indices already; turn them into our label names so one check serves both
        names = spec.labels
        ds = ds.map(lambda r: {spec.label_column: names[r[spec.label_column]] if r[spec.label_column] >= 0 else None})
    return _normalise(spec, ds, f"hub:{path}/{config}/{splits[split]}", row_offset=0)


def _normalise(spec: TaskSpec, ds, where: str, row_offset: int):
    """Check columns and labels; return the dataset with an int/float ``label`` column."""
    cols = set(ds.column_names)
    needed = set(spec.fields) | {spec.label_column}
    missing = sorted(needed - cols)
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)} for task {spec.name}; "
                        f"found: {', '.join(sorted(cols))}")
    _check_inputs(spec, ds, where, row_offset)
    raw = ds[spec.label_column]
    labels: list[Any] = []
    for i, value in enumerate(raw):
        labels.append(_label_index(spec, value, where, i + row_offset))
    keep = [c for c in ds.column_names if c in spec.fields or c in ("target", "idx")]
    ds = ds.select_columns(keep)
    if "label" in ds.column_names:
        ds = ds.remove_columns("label")
    return ds.add_column("label", labels)


def _check_inputs(spec: TaskSpec, ds, where: str, row_offset: int) -> None:
    """Refuse the first row whose input fields the task cannot read (missing, null, not text)."""
    columns = {name: ds[name] for name in spec.fields}
    extra = spec.check is not None
    for i in range(len(ds)):
        row = {name: values[i] for name, values in columns.items()}
        if extra:
            row = ds[i]
        problem = spec.row_problem(row)
        if problem:
            raise DataError(f"{where}: row {i + row_offset}: {problem} (task {spec.name})")
    for name, values in columns.items():
        blank = [i for i, v in enumerate(values) if not v.strip()]
        if not blank:
            continue
        what = (f"{where}: field {name!r} is empty in {len(blank)} of {len(values)} rows (first: row "
                f"{blank[0] + row_offset}) (task {spec.name})")
        if len(blank) > BLANK_TOLERANCE * len(values):  # a wrong column or a broken export, not a stray row
            raise DataError(f"{what}; fill the text or check the file's columns")
        warnings.warn(f"{what}; they train and score as empty text", stacklevel=2)


def _label_index(spec: TaskSpec, value: Any, where: str, row: int) -> Any:
    if spec.kind == "regression":
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: row {row}: label {value!r} is not a number "
                            f"(task {spec.name} is regression)") from None
        if out != out:
            raise DataError(f"{where}: row {row}: label is NaN")
        return out
    if spec.kind == "multiple_choice":
        if isinstance(value, bool) or value not in range(len(spec.labels)):
            raise DataError(f"{where}: row {row}: label {value!r} not in the task's set "
                            f"{list(range(len(spec.labels)))} (task {spec.name})")
        return int(value)
    key = str(value)
    if key not in spec.labels:
        raise DataError(f"{where}: row {row}: label {value!r} not in the task's set "
                        f"{', '.join(spec.labels)} (task {spec.name})")
    return spec.labels.index(key)
