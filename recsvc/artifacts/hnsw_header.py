"""Read an hnswlib 0.8 index file, checked against what the manifest says, for hnswlib.

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

What it returns is what ``hnswlib.Index(params)`` takes (``HnswGraph.params``). hnswlib copies
those arrays into its graph in a few milliseconds, where its own ``load_index`` re-reads the
file with a syscall per element; both hold the GIL throughout, and a serving process swapping
one namespace's model stalls every other namespace's calls for as long as that lasts.
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


# hnswlib's pickle format version, which ``Index(params)`` checks.
_SERIALISATION_VERSION = 1


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


@dataclass(frozen=True)
class HnswGraph:
    """A checked index file's graph, in the arrays hnswlib's ``Index(params)`` copies."""

    header: HnswHeader
    dim: int
    level0: npt.NDArray[np.int8]  # the level-0 records, as in the file
    levels: npt.NDArray[np.int32]  # each element's top level
    upper_links: npt.NDArray[np.int8]  # the upper-level link lists, concatenated by element
    labels: npt.NDArray[np.uint64]  # each element's label (its row in the item table)

    def params(self, ef: int = 10, threads: int = 1) -> dict[str, object]:
        """The dict ``hnswlib.Index(params)`` builds an inner-product index from."""
        h = self.header
        return {
            "ser_version": _SERIALISATION_VERSION,
            "space": "ip",
            "dim": self.dim,
            "index_inited": True,
            "ep_added": h.count > 0,
            "normalize": False,
            "num_threads": threads,
            "seed": 100,  # only drawn from when items are added, which serving never does
            "offset_level0": h.offset_level0,
            "max_elements": max(1, h.count),
            "cur_element_count": h.count,
            "size_data_per_element": h.size_data_per_element,
            "label_offset": h.label_offset,
            "offset_data": h.offset_data,
            "max_level": h.max_level,
            "enterpoint_node": h.entry_point,
            "max_M": h.max_m,
            "max_M0": h.max_m0,
            "M": h.m,
            "mult": h.mult,
            "ef_construction": h.ef_construction,
            "ef": ef,
            "has_deletions": False,  # checked: no element is marked deleted
            "allow_replace_deleted": False,
            "size_links_per_element": _LINK * (h.max_m + 1),
            "label_lookup_external": self.labels,
            "label_lookup_internal": np.arange(h.count, dtype=np.uint32),
            "element_levels": self.levels,
            "data_level0": self.level0,
            "link_lists": self.upper_links,
        }


def read_hnsw_file(handle: BinaryIO, count: int, dim: int) -> HnswGraph:
    """Validate the index file open in ``handle`` for ``count`` vectors of ``dim`` float32;
    return its graph. Raises HnswFileError naming the first inconsistency."""
    size = _file_size(handle)
    if size < HEADER.size:
        raise HnswFileError(f"{size} bytes, shorter than the {HEADER.size}-byte header")
    # A private copy: hnswlib copies the graph from what was checked, so a file rewritten in
    # place after the check (or cut short: SIGBUS through a map) cannot reach it unchecked.
    view = _read_all(handle, size)
    header = HnswHeader.parse(bytes(view[: HEADER.size]))
    _check_header(header, count, dim)
    level0_end = HEADER.size + count * header.size_data_per_element
    if level0_end > size:
        raise HnswFileError(f"level 0 needs {level0_end} bytes, the file has {size}")
    # The upper levels are a small share of the file (about 1/M of the elements have any).
    levels, upper_links = _walk_upper_levels(bytes(view[level0_end:]), header)
    if count and int(levels.max()) != header.max_level:
        raise HnswFileError(
            f"max level {header.max_level}, but the highest element level is {levels.max()}"
        )
    if count and levels[header.entry_point] != header.max_level:
        raise HnswFileError("the entry point is not on the top level")
    records = view[HEADER.size : level0_end].reshape(count, header.size_data_per_element)
    labels = _check_level0(records, header, count)
    return HnswGraph(
        header, dim, view[HEADER.size : level0_end].view(np.int8), levels, upper_links, labels
    )


def _read_all(handle: BinaryIO, size: int) -> npt.NDArray[np.uint8]:
    """The ``size`` bytes of the file, read into memory of our own (the reads release the
    GIL)."""
    buffer = np.empty(size, dtype=np.uint8)
    memory, done = buffer.data, 0
    handle.seek(0)
    while done < size:
        got = handle.readinto(memory[done:])  # type: ignore[attr-defined]
        if not got:
            raise HnswFileError(f"the file ended after {done} of {size} bytes while read")
        done += got
    return buffer


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
    # hnswlib derives both from M when it builds a graph, and refuses any other value.
    if h.mult != 1.0 / math.log(h.m) or not h.m <= h.ef_construction < 2**31:
        raise HnswFileError(f"mult {h.mult} or ef_construction {h.ef_construction} out of range")
    if count == 0:
        if h.max_level != -1:
            raise HnswFileError(f"an empty index with max level {h.max_level}")
        return
    if not 0 <= h.max_level <= MAX_LEVEL:
        raise HnswFileError(f"max level {h.max_level} out of range 0..{MAX_LEVEL}")
    if h.entry_point >= count:
        raise HnswFileError(f"entry point {h.entry_point} out of range (count {count})")


def _walk_upper_levels(
    tail: bytes, h: HnswHeader
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int8]]:
    """Each element's level, from the sizes of its upper link lists, and those lists
    concatenated; checks that every list lies inside the file, counts at most maxM links,
    each to an element present on that level, and that the lists end exactly at the end of
    the file."""
    per_level = h.max_m + 1  # uint32 words in one level's list
    words = np.frombuffer(tail, "<u4", len(tail) // _LINK)
    levels = np.zeros(h.count, dtype=np.int32)
    # Most elements have no upper levels: their size word is 0. Step from one non-zero size to
    # the next (about 1/M of the elements) instead of reading every element's.
    nonzero = np.flatnonzero(words)
    owners: list[int] = []  # elements with upper levels
    starts: list[int] = []  # the word where each one's lists begin
    position = element = 0
    while element < h.count:
        found = int(np.searchsorted(nonzero, position))
        if found == len(nonzero):  # only empty lists from here
            if position + h.count - element > len(words):
                past = element + len(words) - position
                raise HnswFileError(f"link lists of element {past} begin past the end of the file")
            position += h.count - element
            break
        empty = int(nonzero[found]) - position
        if element + empty >= h.count:
            position += h.count - element
            break
        element, position = element + empty, position + empty
        nbytes = int(words[position])
        level, remainder = divmod(nbytes, _LINK * per_level)
        if remainder or level > h.max_level:
            raise HnswFileError(
                f"element {element}: link list size {nbytes} is not 1..{h.max_level} levels"
            )
        if position + 1 + level * per_level > len(words):
            raise HnswFileError(f"element {element}: link lists run past the end of the file")
        levels[element] = level
        owners.append(element)
        starts.append(position + 1)
        position += 1 + level * per_level
        element += 1
    if position * _LINK != len(tail):
        raise HnswFileError(f"{len(tail) - position * _LINK} bytes after the last link list")
    rows, depth, row_owner = _upper_rows(words, levels, owners, starts, per_level)
    _check_upper_links(rows, depth, row_owner, levels, h)
    return levels, rows.view(np.int8).reshape(-1)


def _upper_rows(
    words: npt.NDArray[np.uint32],
    levels: npt.NDArray[np.int32],
    owners: list[int],
    starts: list[int],
    per_level: int,
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Every upper-level list as a row of ``per_level`` words (count, then ids), in file
    order, with its level and its element."""
    owner = np.asarray(owners, dtype=np.int64)
    count = levels[owner].astype(np.int64)
    first_row = np.cumsum(count) - count
    depth = np.arange(int(count.sum())) - np.repeat(first_row, count) + 1
    row_start = np.repeat(np.asarray(starts, dtype=np.int64), count) + (depth - 1) * per_level
    rows = words[row_start[:, None] + np.arange(per_level)]
    return rows, depth, np.repeat(owner, count)


def _check_upper_links(
    rows: npt.NDArray[np.uint32],
    depth: npt.NDArray[np.int64],
    row_owner: npt.NDArray[np.int64],
    levels: npt.NDArray[np.int32],
    h: HnswHeader,
) -> None:
    counts = (rows[:, 0] & 0xFFFF).astype(np.int64)
    over = np.flatnonzero(counts > h.max_m)
    if len(over):
        row = int(over[0])
        raise HnswFileError(
            f"element {row_owner[row]}, level {depth[row]}: {counts[row]} links > maxM {h.max_m}"
        )
    used = np.arange(h.max_m)[None, :] < counts[:, None]
    targets = rows[:, 1:][used].astype(np.int64)
    target_depth = np.repeat(depth, counts)
    outside = targets >= h.count
    bad = np.flatnonzero(outside | (levels[np.where(outside, 0, targets)] < target_depth))
    if len(bad):
        row = int(np.repeat(np.arange(len(rows)), counts)[bad[0]])
        raise HnswFileError(
            f"element {row_owner[row]}, level {depth[row]}: a link leaves the level"
        )


def _check_level0(
    records: npt.NDArray[np.uint8], h: HnswHeader, count: int
) -> npt.NDArray[np.uint64]:
    """Neighbour counts <= maxM0, neighbour ids and labels < count, labels all different, no
    element marked deleted; returns the labels."""
    width = h.max_m0 + 1
    seen = np.zeros(count, dtype=bool)
    all_labels = np.empty(count, dtype=np.uint64)
    for start in range(0, count, _CHUNK):
        chunk = records[start : start + _CHUNK]
        links = np.ascontiguousarray(chunk[:, : _LINK * width]).view("<u4")
        counts = (links[:, 0] & 0xFFFF).astype(np.int64)
        if counts.size and int(counts.max()) > h.max_m0:
            raise HnswFileError(f"a level-0 list has {counts.max()} links > maxM0 {h.max_m0}")
        if bool((links[:, 0] >> 16).any()):
            raise HnswFileError("an element is marked deleted: training never deletes")
        used = np.arange(h.max_m0)[None, :] < counts[:, None]
        if bool((links[:, 1:][used] >= count).any()):
            raise HnswFileError("a level-0 link points past the last element")
        labels = np.ascontiguousarray(chunk[:, h.label_offset : h.label_offset + _LABEL])
        raw_labels = labels.view("<u8")[:, 0]
        # Compared unsigned: a label of 2**63 or more would turn negative as int64.
        if raw_labels.size and int(raw_labels.max()) >= count:
            raise HnswFileError("a label is not a row of the item table")
        label_values = raw_labels.astype(np.int64)
        if seen[label_values].any() or len(np.unique(label_values)) != len(label_values):
            raise HnswFileError("two elements carry the same label")
        seen[label_values] = True
        all_labels[start : start + len(chunk)] = label_values
    return all_labels
