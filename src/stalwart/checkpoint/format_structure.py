"""Structural checks of single checkpoint formats: torch.save zips, safetensors, DCP.

Nothing here unpickles or loads tensors. Every size and count read from the input is
checked against a cap before it is used, so hostile input is refused in bounded time
and memory: a huge safetensors header length, a zip claiming millions of entries,
`../` names, compressed (bomb) entries.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stalwart.checkpoint.errors import Defect
from stalwart.checkpoint.manifest import path_problem

READ_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FormatLimits:
    """Caps that bound the time and memory of a check, whatever the input."""

    max_zip_entries: int = 50_000
    max_zip_central_dir_bytes: int = 16 * 1024 * 1024
    max_safetensors_header_bytes: int = 2 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024
    """For index files; arbitrary JSON can take 25x its size in memory once parsed."""
    max_dcp_metadata_bytes: int = 256 * 1024 * 1024
    max_dir_entries: int = 100_000
    max_dir_depth: int = 16


DEFAULT_LIMITS = FormatLimits()


class Reject(Exception):
    """Input refused: `file` inside the checkpoint (None: the whole), defect and detail."""

    def __init__(self, file: str | None, defect: Defect, detail: str) -> None:
        super().__init__(file, defect, detail)
        self.file = file
        self.defect = defect
        self.detail = detail


class Unrecognized(Exception):
    """Not a format these checks know."""


# -- zip (torch.save) ---------------------------------------------------------------------

_EOCD = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _zip_directory_bounds(handle: Any, size: int, file: str, limits: FormatLimits) -> int:
    """Check the end-of-central-directory record before zipfile sees the file; returns entries."""
    tail_len = min(size, _EOCD.size + 65535)
    handle.seek(size - tail_len)
    tail = handle.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + _EOCD.size > len(tail):
        raise Reject(file, Defect.FORMAT_INVALID, "no zip end-of-central-directory record")
    _, _, _, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, pos)
    eocd_at = size - tail_len + pos
    if entries == 0xFFFF or 0xFFFFFFFF in (cd_size, cd_offset):
        loc_at = eocd_at - _ZIP64_LOCATOR.size
        if loc_at < 0:
            raise Reject(file, Defect.FORMAT_INVALID, "zip64 locator missing")
        handle.seek(loc_at)
        sig, _, z64_at, _ = _ZIP64_LOCATOR.unpack(handle.read(_ZIP64_LOCATOR.size))
        if sig != b"PK\x06\x07" or z64_at + _ZIP64_EOCD.size > loc_at:
            raise Reject(file, Defect.FORMAT_INVALID, "zip64 locator invalid")
        handle.seek(z64_at)
        record = _ZIP64_EOCD.unpack(handle.read(_ZIP64_EOCD.size))
        if record[0] != b"PK\x06\x06":
            raise Reject(file, Defect.FORMAT_INVALID, "zip64 end record invalid")
        entries, cd_size, cd_offset = record[7], record[8], record[9]
        eocd_at = z64_at
    if entries > limits.max_zip_entries:
        raise Reject(
            file,
            Defect.LIMIT_EXCEEDED,
            f"zip claims {entries} entries (limit {limits.max_zip_entries})",
        )
    if cd_size > limits.max_zip_central_dir_bytes:
        raise Reject(
            file,
            Defect.LIMIT_EXCEEDED,
            f"zip central directory of {cd_size} bytes (limit {limits.max_zip_central_dir_bytes})",
        )
    if cd_offset + cd_size > eocd_at or cd_size < 46 * entries:
        raise Reject(
            file, Defect.FORMAT_INVALID, "zip central directory lies outside the file (truncated?)"
        )
    return int(entries)


def check_torch_zip(path: Path, *, full: bool, limits: FormatLimits = DEFAULT_LIMITS) -> None:
    """A torch.save zip: bounded central directory, safe names, stored entries, CRCs (full)."""
    file = path.name
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(len(_LEGACY_TORCH_MAGIC))
        if head.startswith(_LEGACY_TORCH_MAGIC):
            raise Unrecognized("legacy (non-zip) torch.save format; it cannot be checked unloaded")
        if not head.startswith(b"PK\x03\x04"):
            raise Reject(file, Defect.FORMAT_INVALID, "not a zip file (torch.save writes zips)")
        _zip_directory_bounds(handle, size, file, limits)
        handle.seek(0)
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, ValueError, EOFError) as exc:
            raise Reject(file, Defect.FORMAT_INVALID, f"bad zip: {exc}") from None
        with archive:
            infos = archive.infolist()
            prefixes = set()
            payload = 0
            for info in infos:
                problem = path_problem(info.filename)
                if problem is not None:
                    raise Reject(file, Defect.UNSAFE_PATH, f"entry {info.filename!r}: {problem}")
                if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                    raise Reject(
                        file, Defect.FORMAT_INVALID, f"entry {info.filename!r} is compressed"
                    )
                payload += info.file_size
                if info.header_offset + info.file_size > size:
                    raise Reject(file, Defect.FORMAT_INVALID, f"{info.filename!r} past the end")
                prefixes.add(info.filename.split("/", 1)[0])
            if payload > size:
                raise Reject(file, Defect.FORMAT_INVALID, "entries claim more bytes than the file")
            if len(prefixes) != 1 or not any(i.filename.endswith("/data.pkl") for i in infos):
                raise Reject(file, Defect.FORMAT_INVALID, "zip is not a torch.save archive")
            if full:
                _check_crcs(handle, infos, file)


def _check_crcs(handle: Any, infos: list[zipfile.ZipInfo], file: str) -> None:
    """Every stored entry's CRC-32, read in chunks straight from its local header.

    zipfile.ZipFile.open() would do the same, at ~10x the cost per entry; torch archives
    have one entry per tensor storage, so that cost dominates for many small tensors.
    """
    for info in infos:
        handle.seek(info.header_offset)
        local = handle.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise Reject(file, Defect.FORMAT_INVALID, f"entry {info.filename!r}: bad local header")
        name_len, extra_len = struct.unpack_from("<HH", local, 26)
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        if handle.read(name_len).decode(encoding, "replace") != info.orig_filename:
            raise Reject(file, Defect.FORMAT_INVALID, f"entry {info.filename!r}: names differ")
        handle.seek(extra_len, os.SEEK_CUR)
        crc = 0
        left = info.compress_size
        while left:
            chunk = handle.read(min(left, READ_BYTES))
            if not chunk:
                raise Reject(file, Defect.FORMAT_INVALID, f"entry {info.filename!r}: truncated")
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
        if crc != info.CRC:
            raise Reject(file, Defect.FORMAT_INVALID, f"entry {info.filename!r}: CRC mismatch")


# -- safetensors -------------------------------------------------------------------------

_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_json(raw: bytes) -> Any:
    return json.loads(raw, object_pairs_hook=_strict_object, parse_constant=_no_constant)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The grammar of a safetensors header, checked before json.loads builds any object: it
# bounds what parsing can allocate (~10x the header: no nesting beyond tensor entries, at
# most 64 dims, numbers of at most 20 digits), where arbitrary JSON of the same size could
# take 25x (`[{},{},...]`). Possessive quantifiers: linear time, no backtracking.
_WS = r"[ \t\n\r]*+"
_STR = r'"(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+"'
_UINT = r"(?:0|[1-9][0-9]{0,19})"
_SHAPE = rf"\[{_WS}(?:{_UINT}{_WS}(?:,{_WS}{_UINT}{_WS}){{0,63}})?\]"
_OFFSETS = rf"\[{_WS}{_UINT}{_WS},{_WS}{_UINT}{_WS}\]"
_FIELD = (
    rf'(?:"dtype"{_WS}:{_WS}{_STR}|"shape"{_WS}:{_WS}{_SHAPE}|"data_offsets"{_WS}:{_WS}{_OFFSETS})'
)
_TENSOR = rf"\{{{_WS}{_FIELD}{_WS},{_WS}{_FIELD}{_WS},{_WS}{_FIELD}{_WS}\}}"
_PAIRS = rf"{_STR}{_WS}:{_WS}{_STR}{_WS}"
_META = rf"\{{{_WS}(?:{_PAIRS}(?:,{_WS}{_PAIRS})*+)?\}}"
_ENTRY = rf"{_STR}{_WS}:{_WS}(?>{_TENSOR}|{_META}){_WS}"
_HEADER_RE = re.compile(rf"{_WS}\{{{_WS}(?:{_ENTRY}(?:,{_WS}{_ENTRY})*+)?\}}{_WS}".encode())
_TENSOR_KEYS = frozenset(("dtype", "shape", "data_offsets"))


def _read_header(path: Path, limits: FormatLimits) -> tuple[dict[str, Any], int]:
    """The parsed header and the length of the data region after it."""
    file = path.name
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise Reject(file, Defect.FORMAT_INVALID, f"{size} bytes: too short for a header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > limits.max_safetensors_header_bytes:
            raise Reject(
                file,
                Defect.LIMIT_EXCEEDED,
                f"header length {header_len} exceeds {limits.max_safetensors_header_bytes}",
            )
        if 8 + header_len > size or header_len < 2:
            raise Reject(
                file,
                Defect.FORMAT_INVALID,
                f"header length {header_len} does not fit the file ({size} bytes; truncated?)",
            )
        raw = handle.read(header_len)
    if not raw.startswith(b"{") or _HEADER_RE.fullmatch(raw) is None:
        raise Reject(file, Defect.FORMAT_INVALID, "header is not a safetensors JSON header")
    try:
        header = json.loads(raw)  # the grammar admits no NaN, no deep nesting
    except (ValueError, RecursionError) as exc:
        raise Reject(file, Defect.FORMAT_INVALID, f"header is not valid: {exc}") from None
    return header, size - 8 - header_len


def check_safetensors(path: Path, *, limits: FormatLimits = DEFAULT_LIMITS) -> None:
    """Header length within bounds, header well-formed, tensors exactly tile the data region."""
    file = path.name
    header, data_len = _read_header(path, limits)
    spans: list[tuple[int, int, str]] = []
    for name, spec in header.items():
        if set(spec) != _TENSOR_KEYS:
            if name == "__metadata__":
                continue  # the grammar allows only str -> str objects besides tensors
            raise Reject(file, Defect.FORMAT_INVALID, f"tensor {name!r}: malformed entry")
        (begin, end), bits = spec["data_offsets"], _DTYPE_BITS.get(spec["dtype"])
        elements = 1
        for dim in spec["shape"]:
            elements *= dim
        if begin > end or (bits is not None and (elements * bits + 7) // 8 != end - begin):
            raise Reject(
                file, Defect.FORMAT_INVALID, f"tensor {name!r}: size does not match its shape"
            )
        spans.append((begin, end, name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            raise Reject(
                file, Defect.FORMAT_INVALID, f"tensor {name!r} starts at {begin}, expected {cursor}"
            )
        cursor = end
    if cursor != data_len:
        raise Reject(
            file,
            Defect.FORMAT_INVALID,
            f"tensors cover {cursor} bytes, the file holds {data_len} (truncated or extended)",
        )


# -- DCP ----------------------------------------------------------------------------------

_DISTCP_RE = re.compile(rb"\.distcp")


def _distcp_names(chunk: bytes) -> set[str]:
    """Names ending in .distcp stored as pickle strings (SHORT_BINUNICODE, BINUNICODE)."""
    names = set()
    for match in _DISTCP_RE.finditer(chunk):
        end = match.end()
        for length in range(len(b".distcp"), 256):
            start = end - length
            if start < 2:
                break
            if chunk[start - 1] == length and chunk[start - 2] == 0x8C:
                names.add(chunk[start:end].decode("utf-8", "replace"))
                break
            if (
                start >= 5
                and chunk[start - 5] == 0x58
                and struct.unpack_from("<I", chunk, start - 4)[0] == length
            ):
                names.add(chunk[start:end].decode("utf-8", "replace"))
                break
    return names


def check_dcp(path: Path, *, limits: FormatLimits = DEFAULT_LIMITS) -> None:
    """`.metadata` present, readable, a complete pickle frame; every shard it names exists."""
    meta = path / ".metadata"
    try:
        st = os.lstat(meta)
    except FileNotFoundError:
        raise Reject(
            ".metadata", Defect.FILE_MISSING, "DCP metadata missing (save incomplete)"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise Reject(".metadata", Defect.NOT_A_FILE, "not a regular file")
    if st.st_size > limits.max_dcp_metadata_bytes:
        raise Reject(".metadata", Defect.LIMIT_EXCEEDED, f"{st.st_size} bytes")
    names: set[str] = set()
    first = last = b""
    overlap = b""
    with open(meta, "rb") as handle:
        while chunk := handle.read(READ_BYTES):
            if not first:
                first = chunk[:2]
            window = overlap + chunk
            names |= _distcp_names(window)
            overlap = window[-300:]
            last = window[-1:]
    if len(first) < 2 or first[0] != 0x80 or not 2 <= first[1] <= 5 or last != b".":
        raise Reject(".metadata", Defect.FORMAT_INVALID, "not a complete pickle (truncated?)")
    for name in sorted(names):
        if "/" in name or name.startswith(".."):
            raise Reject(".metadata", Defect.UNSAFE_PATH, f"names shard {name!r}")
        try:
            shard = os.lstat(path / name)
        except FileNotFoundError:
            raise Reject(name, Defect.FILE_MISSING, "named by .metadata, not found") from None
        if not stat.S_ISREG(shard.st_mode) or shard.st_size == 0:
            raise Reject(name, Defect.FORMAT_INVALID, "shard is empty or not a regular file")
