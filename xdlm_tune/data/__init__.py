"""Training data: sources (Hub, local, builtin offline corpora), encoding, resumable loaders."""

from .encode import Collator, encode_dataset, encode_pair, example_encoder, make_collator, pack, render_chat
from .loader import DataBundle, ResumableLoader, StreamLoader, build_data
from .sources import DataError, Records, load_records, mbpp_prompt, mbpp_records, python_stdlib_records, stdlib_files

__all__ = [
    "Collator",
    "DataBundle",
    "DataError",
    "Records",
    "ResumableLoader",
    "StreamLoader",
    "build_data",
    "encode_dataset",
    "encode_pair",
    "example_encoder",
    "load_records",
    "make_collator",
    "mbpp_prompt",
    "mbpp_records",
    "pack",
    "python_stdlib_records",
    "render_chat",
    "stdlib_files",
]
