"""Record loaders for every format, with configurable keys and malformed-record handling."""

import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from jaxpost.data import sources
from jaxpost.errors import JaxpostError

RECORDS = [{"question": f"{i}+{i}", "solution": f"={2 * i}", "final": 2 * i if i % 2 else str(2 * i)}
           for i in range(6)]
FMT = sources.RecordFormat(prompt_key="question", completion_key="solution", answer_key="final")
def _fields(records):
  """The records without their "source" (where each came from), checked on its own below."""
  return [{k: v for k, v in r.items() if k != "source"} for r in records]


EXPECTED = [{"prompt": f"{i}+{i}", "completion": f"={2 * i}", "answer": str(2 * i)} for i in range(6)]


def _write_jsonl(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


def test_jsonl(tmp_path):
  path = _write_jsonl(tmp_path / "d.jsonl", [json.dumps(r) for r in RECORDS] + [""])
  assert _fields(sources.load_jsonl(path, FMT)) == EXPECTED
  assert _fields(sources.load_records(path, FMT)) == EXPECTED
  prompts_only = sources.RecordFormat(prompt_key="question", completion_key=None)
  assert _fields(sources.load_jsonl(path, prompts_only)) == [{"prompt": r["prompt"]} for r in EXPECTED]
  assert [r["source"] for r in sources.load_jsonl(path, FMT)] == [f"{path}:{i}" for i in range(1, 7)]


def test_a_record_longer_than_seq_len_is_named_by_its_file_and_line(tmp_path):
  from jaxpost.data import IteratorConfig, arith_tokenizer, encode_records, sft_iterator
  path = _write_jsonl(tmp_path / "long.jsonl", [json.dumps({"question": "1+1", "solution": "=" + "2" * 40,
                                                             "final": "2"})])
  examples = encode_records(arith_tokenizer(), sources.load_jsonl(path, FMT))
  with pytest.raises(ValueError, match=rf"{path}:1 has \d+ tokens > seq_len 16"):
    next(sft_iterator(examples, IteratorConfig(batch_size=1), seq_len=16))


@pytest.mark.parametrize("line,message", [
    ('{"question": "1+1", "solution": "=2", "final": "2"', "d.jsonl:3: invalid JSON"),
    ('{"question": "1+1", "final": "2"}', "d.jsonl:3: missing key 'solution'"),
    ('{"question": ["1+1"], "solution": "=2", "final": "2"}', "d.jsonl:3: key 'question' must be a string, got list"),
    ('["1+1", "=2"]', "d.jsonl:3: expected an object, got list"),
])
def test_jsonl_malformed_raises_naming_file_and_line(tmp_path, line, message):
  good = [json.dumps(r) for r in RECORDS[:2]]
  path = _write_jsonl(tmp_path / "d.jsonl", good + [line] + good)
  with pytest.raises(ValueError) as info:
    sources.load_jsonl(path, FMT)
  assert message in str(info.value) and "\n" not in str(info.value)


def test_jsonl_malformed_skipped_and_counted(tmp_path):
  lines = [json.dumps(r) for r in RECORDS]
  lines[1], lines[4] = "not json", json.dumps({"question": "x"})
  path = _write_jsonl(tmp_path / "d.jsonl", lines)
  skip = sources.RecordFormat(prompt_key="question", completion_key="solution", answer_key="final", on_error="skip")
  with pytest.warns(UserWarning, match=r"skipped 2 malformed records of 6 \(first: .*d.jsonl:2: invalid JSON"):
    records = sources.load_jsonl(path, skip)
  assert _fields(records) == [EXPECTED[i] for i in (0, 2, 3, 5)]


def test_parquet(tmp_path):
  path = tmp_path / "d.parquet"
  pq.write_table(pa.Table.from_pylist([dict(r, final=str(r["final"])) for r in RECORDS]), path)
  assert _fields(sources.load_parquet(path, FMT)) == EXPECTED
  assert _fields(sources.load_records(path, FMT)) == EXPECTED
  bad = tmp_path / "bad.parquet"
  pq.write_table(pa.table({"question": ["1", "2", None], "solution": ["a", "b", "c"], "final": ["1", "2", "3"]}), bad)
  with pytest.raises(ValueError, match=r"bad.parquet: row 2: key 'question' must be a string, got NoneType"):
    sources.load_parquet(bad, FMT)


def test_hf_datasets_from_local_files(tmp_path):
  rows = [dict(r, final=str(r["final"])) for r in RECORDS]
  disk = tmp_path / "saved"
  datasets.Dataset.from_list(rows).save_to_disk(str(disk))
  assert _fields(sources.load_hf_dataset(disk, FMT)) == EXPECTED
  assert _fields(sources.load_records(disk, FMT)) == EXPECTED
  jsonl = _write_jsonl(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
  assert _fields(sources.load_hf_dataset(jsonl, FMT, cache_dir=str(tmp_path / "cache"))) == EXPECTED
  parquet = tmp_path / "d.parquet"
  pq.write_table(pa.Table.from_pylist(rows), parquet)
  assert _fields(sources.load_hf_dataset(parquet, FMT, cache_dir=str(tmp_path / "cache"))) == EXPECTED
  missing = sources.RecordFormat(prompt_key="question", completion_key="answer_text")
  with pytest.raises(ValueError, match=r"saved: row 0: missing key 'answer_text'"):
    sources.load_hf_dataset(disk, missing)


class JaxpostTinyRecords(tfds.core.GeneratorBasedBuilder):
  """A tiny dataset built locally into a tmp data_dir (no download)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "question": tfds.features.Text(), "solution": tfds.features.Text(), "final": np.int64}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, r in enumerate(RECORDS):
      yield i, {"question": r["question"], "solution": r["solution"], "final": int(r["final"])}


def test_tfds_from_data_dir(tmp_path):
  JaxpostTinyRecords(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  records = sources.load_tfds("jaxpost_tiny_records", data_dir=tmp_path, split="train", fmt=FMT)
  key = lambda r: r["prompt"]  # tfds stores examples in its own (hashed) order.
  assert sorted(_fields(records), key=key) == sorted(EXPECTED, key=key)


def test_record_format_validates():
  with pytest.raises(ValueError, match="on_error"):
    sources.RecordFormat(on_error="ignore")
  with pytest.raises(ValueError, match="cannot tell the format"):
    sources.load_records("data.csv")


def test_a_file_that_is_not_utf8_or_holds_no_records_is_named(tmp_path):
  path = tmp_path / "latin1.jsonl"
  path.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n')
  with pytest.raises(JaxpostError, match=r"latin1.jsonl:2: not UTF-8 text"):
    sources.load_jsonl(path)
  (tmp_path / "empty.jsonl").write_text("\n")
  with pytest.raises(JaxpostError, match=r"empty.jsonl: no records$"):
    sources.load_jsonl(tmp_path / "empty.jsonl")
