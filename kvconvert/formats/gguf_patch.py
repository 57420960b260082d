"""Rewrite a GGUF's metadata without touching its tensors (docs/design.md §3, `--weights keep`).

The new file is the old one with some metadata entries dropped and others
appended: the header's counts change, every kept entry and every tensor-info
record is copied byte for byte, the padding up to the data section is
recomputed for the file's own alignment, and the tensor data section is copied
byte for byte (tensor offsets are relative to it, so they stay valid). The file
grows by exactly the new entries' bytes plus at most one alignment's padding.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import BinaryIO

import gguf

from .gguf_io import GGUFFile, _field, _text, _u32

COPY_CHUNK = 16 << 20  # bytes per write while copying the tensor data


def pack_entries(writer: gguf.GGUFWriter, keep: Callable[[str], bool]) -> tuple[bytes, int]:
    """The metadata entries collected in ``writer`` (add_string, add_array, …) whose key passes
    ``keep``, encoded as GGUF key/value records, and their count."""
    out = bytearray()
    n = 0
    for key, val in writer.kv_data[0].items():
        if not keep(key):
            continue
        out += writer._pack_val(key, gguf.GGUFValueType.STRING, add_vtype=False)
        out += writer._pack_val(val.value, val.type, add_vtype=True, sub_type=val.sub_type)
        n += 1
    return bytes(out), n


def header_spans(reader: GGUFFile) -> tuple[list[tuple[str, int, int]], int, int]:
    """``[(key, start, end)]`` of every metadata entry, and the byte range of the tensor-info records."""
    buf = memoryview(reader.data)
    n_kv = reader.fields["GGUF.kv_count"].contents()
    off, spans = 24, []
    for _ in range(n_kv):
        key, after_key = _text(buf, off, "metadata key")
        _, end = _field(buf, off, after_key, key)
        spans.append((key, off, end))
        off = end
    ti_start = off
    for t in reader.tensors:
        _, off = _text(buf, off, "tensor name")
        off += 4 + 8 * _u32(buf, off, "tensor dims") + 12
    return spans, ti_start, off


def write_patched(reader: GGUFFile, out: BinaryIO, drop: Callable[[str], bool], entries: bytes, n_entries: int,
                  progress: Callable[[int, int], None] | None = None, check_cancel: Callable[[], None] | None = None
                  ) -> int:
    """Write ``reader``'s file to ``out`` without the entries whose key passes ``drop``, with ``entries``
    (``n_entries`` records from pack_entries) appended to the metadata; returns the bytes written.
    ``progress(done, total)`` is called in bytes of tensor data copied."""
    buf = memoryview(reader.data)
    spans, ti_start, ti_end = header_spans(reader)
    kept = [(a, b) for key, a, b in spans if not drop(key)]
    n_tensors = reader.fields["GGUF.tensor_count"].contents()
    head = bytearray(buf[:8])  # magic and version
    head += struct.pack("<QQ", n_tensors, len(kept) + n_entries)
    for a, b in kept:
        head += buf[a:b]
    head += entries
    head += buf[ti_start:ti_end]
    head += b"\0" * (-len(head) % reader.alignment)
    out.write(head)
    total = len(buf) - reader.data_offset
    done = 0
    while done < total:
        if check_cancel:
            check_cancel()
        n = min(COPY_CHUNK, total - done)
        out.write(buf[reader.data_offset + done:reader.data_offset + done + n])
        done += n
        if progress:
            progress(done, total)
    return len(head) + total
