"""Problems from local files: a JSONL file, or a Hugging Face dataset directory on disk.

A dataset directory is either a plain directory of JSON/JSONL files per split
(``test.jsonl``, ``data/test.json``, ``data/test-00000-of-00001.jsonl``, ``test/*.jsonl``),
read with no extra dependency, or a ``datasets`` ``save_to_disk`` directory, read only when
the ``datasets`` package is installed. Nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from vars_core.problems import MATH_DOMAINS, _difficulty, last_boxed
from vars_core.types import Problem

Record = tuple[str, dict]  # (where it was read, e.g. "data/test.jsonl line 3"; the record)

_JSON_SUFFIXES = (".jsonl", ".json")


class ProblemFileError(ValueError):
    """A problem file that cannot be read, named with the place of the fault."""


def load_jsonl(
    path: str | Path,
    domain: str,
    question_field: str = "problem",
    answer_field: str = "solution",
    id_field: str | None = None,
) -> list[Problem]:
    """Problems from a JSON Lines file, one object a line (blank lines are skipped).

    Ids are "<domain>/<file stem>/<index>", or "<domain>/<value of id_field>".
    """
    path = Path(path)
    return _to_problems(
        _jsonl_records(path), domain, path.stem, question_field, answer_field, id_field
    )


def load_hf_dataset_dir(
    path: str | Path,
    split: str = "test",
    domain: str | None = None,
    question_field: str = "problem",
    answer_field: str = "solution",
    id_field: str | None = None,
) -> list[Problem]:
    """Problems of ``split`` from a local Hugging Face dataset directory; ``domain``
    defaults to the directory's name. Ids are "<domain>/<split>/<index>"."""
    root = Path(path)
    if not root.is_dir():
        raise ProblemFileError(f"{root}: not a directory")
    domain = domain or root.name
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        records = _saved_dataset_records(root, split)
    else:
        records = _split_file_records(root, split)
    return _to_problems(records, domain, split, question_field, answer_field, id_field)


# --------------------------------------------------------------------------- reading


def _jsonl_records(path: Path) -> Iterator[Record]:
    text = _read_text(path)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ProblemFileError(
                f"{where}: invalid JSON ({err.msg} at column {err.colno})"
            ) from None
        yield where, _as_object(record, where)


def _json_records(path: Path) -> Iterator[Record]:
    """A ``.json`` file: a JSON list of objects, or JSON Lines under a .json name (the
    ``datasets`` JSON exporter writes those)."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        yield from _jsonl_records(path)
        return
    if isinstance(data, dict):  # a single record on one line: JSON Lines of length one
        data = [data]
    if not isinstance(data, list):
        raise ProblemFileError(
            f"{path}: expected a JSON list of objects, found {type(data).__name__}"
        )
    for i, record in enumerate(data):
        where = f"{path} record {i}"
        yield where, _as_object(record, where)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProblemFileError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise ProblemFileError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None


def _as_object(record: object, where: str) -> dict:
    if not isinstance(record, dict):
        raise ProblemFileError(f"{where}: expected a JSON object, found {type(record).__name__}")
    return record


def _split_file_records(root: Path, split: str) -> Iterator[Record]:
    files = _split_files(root, split)
    if not files:
        parquet = sorted(p.name for p in root.rglob(f"{split}*.parquet"))
        hint = (
            f"; found parquet files ({', '.join(parquet[:3])}), which need the `datasets` "
            "package: export the split to JSONL"
            if parquet
            else ""
        )
        splits = sorted({_split_of(p) for p in _json_files(root)} - {""})
        raise ProblemFileError(
            f"{root}: no JSON/JSONL files for split {split!r} (looked for {split}.jsonl, "
            f"{split}.json, data/{split}[-*].json[l], {split}/*.json[l]); splits found: "
            f"{', '.join(splits) or 'none'}{hint}"
        )
    for file in files:
        yield from _jsonl_records(file) if file.suffix == ".jsonl" else _json_records(file)


def _split_files(root: Path, split: str) -> list[Path]:
    """The JSON/JSONL shards of ``split`` in the layouts the Hub and ``datasets`` use."""
    found: list[Path] = []
    for folder in (root, root / "data"):
        found += [p for p in _json_files(folder) if _split_of(p) == split]
    found += _json_files(root / split)
    return sorted(dict.fromkeys(found))


def _json_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _JSON_SUFFIXES)


def _split_of(path: Path) -> str:
    # "test.jsonl" -> "test"; shards "test-00000-of-00002.json" -> "test"
    return path.stem.split("-", 1)[0]


def _saved_dataset_records(root: Path, split: str) -> Iterator[Record]:
    try:
        import datasets
    except ImportError:
        raise ProblemFileError(
            f"{root} was written by `datasets` save_to_disk: reading it needs the `datasets` "
            "package (pip install datasets), or export the split to JSONL "
            "(dataset.to_json('test.jsonl')) and load that"
        ) from None
    data = datasets.load_from_disk(str(root))
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ProblemFileError(
                f"{root}: no split {split!r}; splits are {', '.join(sorted(data))}"
            )
        data = data[split]
    for i, record in enumerate(data):
        yield f"{root} [{split}] row {i}", dict(record)


# --------------------------------------------------------------------------- problems


def _to_problems(
    records: Iterator[Record],
    domain: str,
    split: str,
    question_field: str,
    answer_field: str,
    id_field: str | None,
) -> list[Problem]:
    problems: list[Problem] = []
    ids: dict[str, str] = {}
    for i, (where, record) in enumerate(records):
        question = _text_field(record, question_field, where)
        answer = _text_field(record, answer_field, where)
        if domain in MATH_DOMAINS:  # a worked solution: its last \boxed{}; a bare answer as is
            answer = last_boxed(answer) or answer
        pid = (
            f"{domain}/{_text_field(record, id_field, where)}"
            if id_field
            else f"{domain}/{split}/{i}"
        )
        if pid in ids:
            raise ProblemFileError(f"{where}: duplicate id {pid!r} (first at {ids[pid]})")
        ids[pid] = where
        problems.append(
            Problem(
                problem_id=pid,
                domain=domain,
                question=question,
                answer=answer,
                difficulty=_difficulty(domain, record.get("level")),
            )
        )
    return problems


def _text_field(record: dict, field: str, where: str) -> str:
    if field not in record:
        fields = ", ".join(sorted(map(str, record))) or "none"
        raise ProblemFileError(f"{where}: missing field {field!r} (fields: {fields})")
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ProblemFileError(
            f"{where}: field {field!r} must be text or a number, found {type(value).__name__}"
        )
    text = str(value).strip()
    if not text:
        raise ProblemFileError(f"{where}: field {field!r} is empty")
    return text
