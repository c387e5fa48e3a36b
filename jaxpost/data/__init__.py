"""Data: embedded arithmetic tasks and tokenizer, record loaders, tokenisation, batching and iteration."""

from jaxpost.data.arith import TASKS, make_dataset, solve, split_of
from jaxpost.data.batching import pack_rows, packed_batch, padded_batch, prompt_batch
from jaxpost.data.char_tokenizer import arith_tokenizer, write_tokenizer_files
from jaxpost.data.iterator import DataIterator, IteratorConfig, PromptBatch, prompt_iterator, sft_iterator
from jaxpost.data.kv_retrieval import KVRetrievalConfig
from jaxpost.data.sources import (RecordFormat, load_hf_dataset, load_jsonl, load_parquet, load_records,
                                  load_tfds)
from jaxpost.data.tasks import EMBEDDED_TASKS, task_records
from jaxpost.data.tokenize import (TokenizedExample, encode_completion, encode_prompt, encode_record,
                                   encode_records)

__all__ = [
    "TASKS", "make_dataset", "solve", "split_of",
    "pack_rows", "packed_batch", "padded_batch", "prompt_batch",
    "arith_tokenizer", "write_tokenizer_files",
    "DataIterator", "IteratorConfig", "PromptBatch", "prompt_iterator", "sft_iterator",
    "EMBEDDED_TASKS", "KVRetrievalConfig", "task_records",
    "RecordFormat", "load_hf_dataset", "load_jsonl", "load_parquet", "load_records", "load_tfds",
    "TokenizedExample", "encode_completion", "encode_prompt", "encode_record", "encode_records",
]
