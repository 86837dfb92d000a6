"""Problems from local files: JSONL and Hugging Face dataset directories."""

from __future__ import annotations

import importlib.util
import json

import pytest

from vars_core.problem_files import ProblemFileError, load_hf_dataset_dir, load_jsonl


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_load_jsonl_good_lines(tmp_path):
    path = tmp_path / "sample.jsonl"
    path.write_text(
        '{"problem": "1+1?", "solution": "so \\\\boxed{2}", "level": "Level 2"}\n'
        "\n"
        '{"problem": "2+2?", "solution": 4}\n',
        encoding="utf-8",
    )
    problems = load_jsonl(path, "math-500")
    assert [p.problem_id for p in problems] == ["math-500/sample/0", "math-500/sample/1"]
    assert [p.answer for p in problems] == ["2", "4"]
    assert [p.difficulty for p in problems] == [2, 3]


def test_load_jsonl_custom_fields_and_ids(tmp_path):
    path = tmp_path / "q.jsonl"
    write_jsonl(path, [{"q": "Capital of France?", "a": "Paris", "uid": "fr"}])
    (p,) = load_jsonl(path, "geo", question_field="q", answer_field="a", id_field="uid")
    assert (p.problem_id, p.domain, p.question, p.answer) == (
        "geo/fr",
        "geo",
        "Capital of France?",
        "Paris",
    )


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            ['{"problem": "a", "solution": "b"}', '{"problem": "c"}'],
            r"line 2: missing field 'solution'",
        ),
        (['{"problem": "a", "solution": "b"}', "", "{oops"], r"line 3: invalid JSON"),
        (['["a", "b"]'], r"line 1: expected a JSON object"),
        (['{"problem": "a", "solution": ["x"]}'], r"line 1: field 'solution' must be text"),
        (['{"problem": "  ", "solution": "b"}'], r"line 1: field 'problem' is empty"),
    ],
)
def test_load_jsonl_bad_lines_name_file_line_and_field(tmp_path, lines, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ProblemFileError, match=expected) as err:
        load_jsonl(path, "mmlu")
    assert str(path) in str(err.value)


def test_load_jsonl_duplicate_ids_and_missing_file(tmp_path):
    path = tmp_path / "dup.jsonl"
    write_jsonl(
        path,
        [{"problem": "a", "solution": "b", "id": 1}, {"problem": "c", "solution": "d", "id": 1}],
    )
    with pytest.raises(ProblemFileError, match="line 2: duplicate id"):
        load_jsonl(path, "x", id_field="id")
    with pytest.raises(ProblemFileError, match="no such file"):
        load_jsonl(tmp_path / "absent.jsonl", "x")


def test_hf_dir_of_json_splits(tmp_path):
    root = tmp_path / "my_set"
    write_jsonl(
        root / "data" / "test.jsonl", [{"problem": f"q{i}", "solution": f"a{i}"} for i in range(3)]
    )
    (root / "train.json").write_text(
        json.dumps([{"problem": "t", "solution": "u"}]), encoding="utf-8"
    )
    test = load_hf_dataset_dir(root)
    assert [p.problem_id for p in test] == ["my_set/test/0", "my_set/test/1", "my_set/test/2"]
    assert [p.answer for p in test] == ["a0", "a1", "a2"]
    (train,) = load_hf_dataset_dir(root, "train", domain="mmlu")
    assert (train.problem_id, train.question) == ("mmlu/train/0", "t")


def test_hf_dir_sharded_and_json_lines_named_json(tmp_path):
    root = tmp_path / "ds"
    write_jsonl(root / "data" / "test-00000-of-00002.json", [{"question": "q0", "answer": 1}])
    write_jsonl(root / "data" / "test-00001-of-00002.json", [{"question": "q1", "answer": 2}])
    problems = load_hf_dataset_dir(root, question_field="question", answer_field="answer")
    assert [(p.question, p.answer) for p in problems] == [("q0", "1"), ("q1", "2")]


def test_hf_dir_missing_split_lists_the_found_ones(tmp_path):
    root = tmp_path / "ds"
    write_jsonl(root / "train.jsonl", [{"problem": "a", "solution": "b"}])
    with pytest.raises(ProblemFileError, match="split 'test'.*splits found: train"):
        load_hf_dataset_dir(root)
    with pytest.raises(ProblemFileError, match="not a directory"):
        load_hf_dataset_dir(tmp_path / "nope")


def test_hf_dir_bad_record_names_the_file(tmp_path):
    root = tmp_path / "ds"
    (root).mkdir()
    (root / "test.json").write_text(
        json.dumps([{"problem": "a", "solution": "b"}, {"problem": "c"}])
    )
    with pytest.raises(ProblemFileError, match=r"test\.json record 1: missing field 'solution'"):
        load_hf_dataset_dir(root)


@pytest.mark.skipif(
    importlib.util.find_spec("datasets") is not None, reason="datasets is installed"
)
def test_save_to_disk_layout_needs_datasets(tmp_path):
    root = tmp_path / "saved"
    root.mkdir()
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["test"]}))
    with pytest.raises(ProblemFileError, match="needs the `datasets` package"):
        load_hf_dataset_dir(root)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="needs datasets")
def test_save_to_disk_layout_with_datasets(tmp_path):
    import datasets

    rows = {"problem": ["p0", "p1"], "solution": ["s0", "s1"]}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(
        str(tmp_path / "saved")
    )
    problems = load_hf_dataset_dir(tmp_path / "saved", domain="logiqa")
    assert [(p.problem_id, p.answer) for p in problems] == [
        ("logiqa/test/0", "s0"),
        ("logiqa/test/1", "s1"),
    ]
