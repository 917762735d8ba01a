"""Check an hnswlib 0.8 index file against what the manifest says, before hnswlib reads it.

hnswlib's ``loadIndex`` trusts its file: an entry point, a level or a link target out of range
is followed as a pointer on the first query (a crafted file with a valid checksum segfaulted the
server). This module parses the file as ``HierarchicalNSW::saveIndex`` writes it and refuses
any value a search could follow out of bounds:

- a 96-byte header: offsetLevel0_, max_elements_, cur_element_count, size_data_per_element_,
  label_offset_, offset_data_ (size_t each), maxlevel_ (int), enterpoint_node_ (uint32),
  maxM_, maxM0_, M_ (size_t), mult_ (double), ef_construction_ (size_t);
- ``cur_element_count`` level-0 records of ``size_data_per_element_`` bytes: a uint32 whose low
  16 bits count the neighbours, ``maxM0_`` uint32 neighbour ids, the vector (``dim`` float32),
  the label (size_t);
- per element, a uint32 byte size of its upper-level link lists (``level`` lists of
  ``maxM_ + 1`` uint32 each: count, then ids), then those lists.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

HEADER = struct.Struct("<QQQQQQiIQQQdQ")
_SIZE = struct.Struct("<I")
_LINK = 4  # sizeof(tableint) and sizeof(linklistsizeint)
_LABEL = 8  # sizeof(labeltype)
_FLOAT = 4
# Beyond these a file was not written by our training: M is at most 128 (IndexSettings), and
# with mult = 1/ln(M) a level above 64 has probability below e^-64 per element.
MAX_M = 4096
MAX_LEVEL = 64
# Level-0 records checked per numpy pass (bounds the temporary arrays on large catalogues).
_CHUNK = 65_536


class HnswFileError(ValueError):
    """The file is not an hnswlib index over ``count`` vectors of ``dim`` float32."""


@dataclass(frozen=True)
class HnswHeader:
    offset_level0: int
    max_elements: int
    count: int
    size_data_per_element: int
    label_offset: int
    offset_data: int
    max_level: int
    entry_point: int
    max_m: int
    max_m0: int
    m: int
    mult: float
    ef_construction: int

    @classmethod
    def parse(cls, raw: bytes) -> HnswHeader:
        if len(raw) < HEADER.size:
            raise HnswFileError(f"{len(raw)} bytes, shorter than the {HEADER.size}-byte header")
        return cls(*HEADER.unpack_from(raw))


def check_hnsw_file(handle: BinaryIO, count: int, dim: int) -> HnswHeader:
    """Validate the index file open in ``handle`` for ``count`` vectors of ``dim`` float32;
    return its header. Raises HnswFileError naming the first inconsistency."""
    size = _file_size(handle)
    if size < HEADER.size:
        raise HnswFileError(f"{size} bytes, shorter than the {HEADER.size}-byte header")
    # A read-only map, released when the last view goes (even when a check raises).
    view: npt.NDArray[np.uint8] = np.memmap(handle, dtype=np.uint8, mode="r", shape=(size,))
    header = HnswHeader.parse(bytes(view[: HEADER.size]))
    _check_header(header, count, dim)
    level0_end = HEADER.size + count * header.size_data_per_element
    if level0_end > size:
        raise HnswFileError(f"level 0 needs {level0_end} bytes, the file has {size}")
    # The upper levels are a small share of the file (about 1/M of the elements have any).
    levels = _walk_upper_levels(bytes(view[level0_end:]), header)
    if count and int(levels.max()) != header.max_level:
        raise HnswFileError(
            f"max level {header.max_level}, but the highest element level is {levels.max()}"
        )
    if count and levels[header.entry_point] != header.max_level:
        raise HnswFileError("the entry point is not on the top level")
    records = view[HEADER.size : level0_end].reshape(count, header.size_data_per_element)
    _check_level0(records, header, count)
    return header


def _file_size(handle: BinaryIO) -> int:
    handle.seek(0, 2)
    size = handle.tell()
    handle.seek(0)
    return size


def _check_header(h: HnswHeader, count: int, dim: int) -> None:
    if h.offset_level0 != 0:
        raise HnswFileError(f"offsetLevel0 {h.offset_level0}, expected 0")
    if h.count != count:
        raise HnswFileError(f"{h.count} elements, the manifest says {count}")
    if h.max_elements < h.count:
        raise HnswFileError(f"capacity {h.max_elements} below the element count {h.count}")
    if not (2 <= h.m <= MAX_M and h.max_m == h.m and h.max_m0 == 2 * h.m):
        raise HnswFileError(f"M {h.m}, maxM {h.max_m}, maxM0 {h.max_m0}: not as hnswlib sets them")
    links0 = _LINK * (h.max_m0 + 1)
    expected = (links0, links0 + dim * _FLOAT, links0 + dim * _FLOAT + _LABEL)
    found = (h.offset_data, h.label_offset, h.size_data_per_element)
    if found != expected:
        raise HnswFileError(
            f"record layout (data, label, size) {found} is not that of {dim}-d float32 "
            f"vectors with maxM0 {h.max_m0}: {expected}"
        )
    if not (math.isfinite(h.mult) and h.mult > 0) or not 0 < h.ef_construction < 2**31:
        raise HnswFileError(f"mult {h.mult} or ef_construction {h.ef_construction} out of range")
    if count == 0:
        if h.max_level != -1:
            raise HnswFileError(f"an empty index with max level {h.max_level}")
        return
    if not 0 <= h.max_level <= MAX_LEVEL:
        raise HnswFileError(f"max level {h.max_level} out of range 0..{MAX_LEVEL}")
    if h.entry_point >= count:
        raise HnswFileError(f"entry point {h.entry_point} out of range (count {count})")


def _walk_upper_levels(tail: bytes, h: HnswHeader) -> npt.NDArray[np.int64]:
    """Each element's level, from the sizes of its upper link lists; checks that every list
    lies inside the file, counts at most maxM links, each to an element present on that level,
    and that the lists end exactly at the end of the file."""
    per_level = _LINK * (h.max_m + 1)
    levels = np.zeros(h.count, dtype=np.int64)
    lists: list[tuple[int, int]] = []  # (element, offset of its lists)
    position, size = 0, len(tail)
    for element in range(h.count):
        if position + _LINK > size:
            raise HnswFileError(f"link lists of element {element} begin past the end of the file")
        (nbytes,) = _SIZE.unpack_from(tail, position)
        position += _LINK
        level, remainder = divmod(nbytes, per_level)
        if remainder or level > h.max_level:
            raise HnswFileError(
                f"element {element}: link list size {nbytes} is not 1..maxlevel levels"
            )
        if position + nbytes > size:
            raise HnswFileError(f"element {element}: link lists run past the end of the file")
        if level:
            levels[element] = level
            lists.append((element, position))
        position += nbytes
    if position != size:
        raise HnswFileError(f"{size - position} bytes after the last link list")
    for element, offset in lists:
        block = np.frombuffer(tail, "<u4", int(levels[element]) * (h.max_m + 1), offset)
        block = block.reshape(-1, h.max_m + 1)
        for depth, row in enumerate(block, start=1):
            n = int(row[0] & 0xFFFF)
            if n > h.max_m:
                raise HnswFileError(f"element {element}, level {depth}: {n} links > maxM {h.max_m}")
            targets = row[1 : 1 + n].astype(np.int64)
            if n and (targets.max() >= h.count or levels[targets].min() < depth):
                raise HnswFileError(f"element {element}, level {depth}: a link leaves the level")
    return levels


def _check_level0(records: npt.NDArray[np.uint8], h: HnswHeader, count: int) -> None:
    """Neighbour counts <= maxM0, neighbour ids and labels < count, labels all different."""
    width = h.max_m0 + 1
    seen = np.zeros(count, dtype=bool)
    for start in range(0, count, _CHUNK):
        chunk = records[start : start + _CHUNK]
        links = np.ascontiguousarray(chunk[:, : _LINK * width]).view("<u4")
        counts = (links[:, 0] & 0xFFFF).astype(np.int64)
        if counts.size and int(counts.max()) > h.max_m0:
            raise HnswFileError(f"a level-0 list has {counts.max()} links > maxM0 {h.max_m0}")
        used = np.arange(h.max_m0)[None, :] < counts[:, None]
        if bool((links[:, 1:][used] >= count).any()):
            raise HnswFileError("a level-0 link points past the last element")
        labels = np.ascontiguousarray(chunk[:, h.label_offset : h.label_offset + _LABEL])
        label_values = labels.view("<u8")[:, 0].astype(np.int64)
        if label_values.size and int(label_values.max()) >= count:
            raise HnswFileError("a label is not a row of the item table")
        if seen[label_values].any() or len(np.unique(label_values)) != len(label_values):
            raise HnswFileError("two elements carry the same label")
        seen[label_values] = True
