"""A small reader of Torch7's binary serialization (`torch.save` files, `.t7`), numpy only.

Written from torch7's `File.lua` (objects) and `generic/{Tensor,Storage}.c` (arrays); no Lua is
run. The format, little-endian as written on x86:

  object  := int32 type, then by type:
             0 nil | 1 number: float64 | 2 string: int32 n, n bytes | 5 boolean: int32
             3 table:  int32 index, [int32 n, n x (key object, value object)]
             4 torch:  int32 index, [int32 n, "V <version>" (absent in pre-versioning files,
                       then this string is the class name), int32 n, class name, payload]
             6/7/8 function: (7/8: int32 index) int32 n, n bytes of Lua bytecode, upvalues object
  An index already seen refers back to the object read first under it (shared objects, cycles).
  payload := tensors: int32 ndim, int64 size[ndim], int64 stride[ndim], int64 offset (1-based),
             storage object | storages: int64 n, n elements | any other class: a table object
             holding its fields (nn modules, nngraph nodes, ...).

Why not the `torchfile` package: it reads storages with `np.fromfile`, which returns a short array
on a truncated file without complaint, and then maps tensors over it with `as_strided`, which
reads past the array's end. Here every read is bounds-checked, a tensor must lie inside its
storage, and every failure is one `Torch7Error` with the byte offset. Strings are decoded as UTF-8
(class names, field names), numbers that are whole are returned as int.

Tensors come back as numpy arrays *copied* out of their storage, so tensors that were views into
one shared storage (as after `getParameters()`) become independent arrays. Storages themselves are
shared: an object index is read once.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

import numpy as np

from glcic_jax import errors

_NIL, _NUMBER, _STRING, _TABLE, _TORCH, _BOOLEAN, _FUNCTION = 0, 1, 2, 3, 4, 5, 6
_LEGACY_RECUR_FUNCTION, _RECUR_FUNCTION = 7, 8

# Torch class name prefix -> numpy element type (CPU and CUDA classes store the same bytes).
_ELEMENT_TYPES = {
    "Byte": np.uint8,
    "Char": np.int8,
    "Short": np.int16,
    "Int": np.int32,
    "Long": np.int64,
    "Float": np.float32,
    "Double": np.float64,
    "Half": np.float16,
}


class Torch7Error(errors.InputFileError, ValueError):
    """The bytes are not a (complete, supported) Torch7 serialized object (a damaged or foreign
    file the user named)."""


class TorchObject:
    """An instance of a Torch class that is stored as a table (nn modules, nngraph nodes, ...).

    `typename` is the class name (e.g. 'nn.SpatialConvolution'), `version` the file's version
    number of the object, `fields` its table. Fields are also attributes: `obj.weight`.
    """

    def __init__(self, typename: str, version: int):
        self.typename = typename
        self.version = version
        self.fields: dict = {}

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(f"{self.__dict__.get('typename', '?')} has no field {name!r}")

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def __repr__(self) -> str:
        return f"TorchObject({self.typename})"


class LuaFunction:
    """A serialized Lua function (bytecode, never run)."""

    def __init__(self, bytecode: bytes, upvalues: Any):
        self.bytecode, self.upvalues = bytecode, upvalues


def _element_type(class_name: str, kind: str):
    """'torch.FloatTensor' / 'torch.CudaStorage' ... -> numpy dtype, or None if not that kind."""
    if not class_name.startswith("torch.") or not class_name.endswith(kind):
        return None
    stem = class_name[len("torch.") : -len(kind)]
    if stem.startswith("Cuda"):
        stem = stem[len("Cuda") :] or "Float"  # torch.CudaTensor holds floats
    return _ELEMENT_TYPES.get(stem)


class _Reader:
    def __init__(self, data: bytes, long_size: int):
        self.data = data
        self.pos = 0
        self.long_fmt = "<q" if long_size == 8 else "<i"
        self.long_size = long_size
        self.memo: dict[int, Any] = {}

    # -- primitives ---------------------------------------------------------------------------
    def _take(self, n: int) -> bytes:
        if n < 0:
            raise Torch7Error(f"negative length {n} at byte {self.pos}")
        end = self.pos + n
        if end > len(self.data):
            raise Torch7Error(
                f"the file ends at byte {len(self.data)} but {n} more bytes are needed at byte "
                f"{self.pos} (truncated file?)"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def int(self) -> int:
        return struct.unpack("<i", self._take(4))[0]

    def long(self) -> int:
        return struct.unpack(self.long_fmt, self._take(self.long_size))[0]

    def longs(self, n: int) -> list[int]:
        return [self.long() for _ in range(n)]

    def double(self) -> float:
        return struct.unpack("<d", self._take(8))[0]

    def string(self) -> str:
        raw = self._take(self.int())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    # -- objects ------------------------------------------------------------------------------
    def object(self) -> Any:
        start = self.pos
        kind = self.int()
        if kind == _NIL:
            return None
        if kind == _NUMBER:
            value = self.double()
            return int(value) if value.is_integer() and abs(value) < 2**53 else value
        if kind == _BOOLEAN:
            return self.int() == 1
        if kind == _STRING:
            return self.string()
        if kind == _FUNCTION:
            return self._function()
        if kind in (_TABLE, _TORCH, _RECUR_FUNCTION, _LEGACY_RECUR_FUNCTION):
            index = self.int()
            if index in self.memo:
                return self.memo[index]
            if kind == _TABLE:
                return self._table(index)
            if kind == _TORCH:
                return self._torch(index)
            return self._function(index)
        raise Torch7Error(f"unknown object type {kind} at byte {start} (not a Torch7 file?)")

    def _function(self, index: int | None = None) -> LuaFunction:
        fn = LuaFunction(self._take(self.int()), None)
        if index is not None:
            self.memo[index] = fn
        fn.upvalues = self.object()
        return fn

    def _table(self, index: int) -> dict:
        table: dict = {}
        self.memo[index] = table
        n = self.int()
        if n < 0:
            raise Torch7Error(f"table of negative size {n} at byte {self.pos - 4}")
        for _ in range(n):
            key = self.object()
            if isinstance(key, (dict, list, np.ndarray, TorchObject)):
                key = id(key)  # tables as keys (nngraph's sets): identity is all they carry
            table[key] = self.object()
        return table

    def _torch(self, index: int) -> Any:
        start = self.pos
        version_or_name = self.string()
        if version_or_name.startswith("V "):
            try:
                version = int(version_or_name[2:])
            except ValueError:
                raise Torch7Error(f"bad version string {version_or_name!r} at byte {start}")
            class_name = self.string()
        else:  # files written before Torch7 stored versions
            version, class_name = 0, version_or_name
        if not class_name.isprintable() or not class_name:
            raise Torch7Error(f"bad class name at byte {start} (not a Torch7 file?)")
        dtype = _element_type(class_name, "Storage")
        if dtype is not None:
            return self._storage(index, dtype)
        dtype = _element_type(class_name, "Tensor")
        if dtype is not None:
            return self._tensor(index, dtype, class_name)
        obj = TorchObject(class_name, version)
        self.memo[index] = obj
        fields = self.object()
        if not isinstance(fields, dict):
            raise Torch7Error(
                f"class {class_name} at byte {start} is not stored as a table; only tensors, "
                f"storages and table-based classes (nn, nngraph) are supported"
            )
        obj.fields = fields
        return obj

    def _storage(self, index: int, dtype) -> np.ndarray:
        n = self.long()
        itemsize = np.dtype(dtype).itemsize
        if n < 0:
            raise Torch7Error(f"storage of negative size {n} at byte {self.pos}")
        arr = np.frombuffer(self._take(n * itemsize), dtype=np.dtype(dtype).newbyteorder("<"))
        arr = arr.astype(dtype)  # native byte order, writable copy
        self.memo[index] = arr
        return arr

    def _tensor(self, index: int, dtype, class_name: str) -> np.ndarray:
        start = self.pos
        ndim = self.int()
        if not 0 <= ndim <= 64:
            raise Torch7Error(f"{class_name} with {ndim} dimensions at byte {start}")
        size, stride = self.longs(ndim), self.longs(ndim)
        offset = self.long() - 1  # stored 1-based
        storage = self.object()
        if ndim == 0 or storage is None or any(s == 0 for s in size):
            out = np.zeros([s for s in size] if ndim else [0], dtype)
            self.memo[index] = out
            return out
        if not isinstance(storage, np.ndarray):
            raise Torch7Error(f"{class_name} at byte {start} has no storage")
        if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
            raise Torch7Error(f"{class_name} at byte {start} has negative sizes or strides")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise Torch7Error(
                f"{class_name} at byte {start} ({size}, offset {offset}) reaches element {last} "
                f"of a storage of {storage.size}"
            )
        view = np.lib.stride_tricks.as_strided(
            storage[offset:],
            shape=size,
            strides=[s * storage.itemsize for s in stride],
            writeable=False,
        )
        out = np.array(view, dtype=dtype)  # an independent copy
        self.memo[index] = out
        return out


def loads(data: bytes, long_size: int | None = None) -> Any:
    """Parse one serialized object from `data` (what `torch.save` wrote).

    `long_size` is the byte width of C longs in the file: 8 on Linux and macOS (the default); files
    written on Windows use 4. With None, 8 is tried first, then 4.

    Raises:
      Torch7Error: the bytes are not a complete Torch7 object, or trailing bytes follow it.
    """
    sizes = (long_size,) if long_size else (8, 4)
    first_error = None
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))  # nngraph graphs nest nodes deeply
    try:
        for size in sizes:
            reader = _Reader(data, size)
            try:
                obj = reader.object()
                if reader.pos != len(data):
                    raise Torch7Error(
                        f"{len(data) - reader.pos} unexpected bytes after the object (byte "
                        f"{reader.pos})"
                    )
                return obj
            except Torch7Error as e:
                first_error = first_error or e
            except (RecursionError, MemoryError, OverflowError, ValueError) as e:
                first_error = first_error or Torch7Error(f"{type(e).__name__}: {e}")
    finally:
        sys.setrecursionlimit(limit)
    raise first_error


def load(path: str, long_size: int | None = None) -> Any:
    """Read a `.t7` file (see `loads`). OSError if it cannot be read."""
    with open(path, "rb") as f:
        return loads(f.read(), long_size)


def as_list(table: Any) -> list:
    """A Lua array (a table with keys 1..n) as a Python list; TypeError if it is not one."""
    if isinstance(table, list):
        return table
    if not isinstance(table, dict):
        raise TypeError(f"expected a Lua array, got {type(table).__name__}")
    n = len(table)
    if set(table) != set(range(1, n + 1)):
        raise TypeError("expected a Lua array (keys 1..n)")
    return [table[i] for i in range(1, n + 1)]


def array_part(table: Any) -> list:
    """The values at keys 1, 2, ... of a table, up to the first missing key (Lua's `ipairs`)."""
    if isinstance(table, list):
        return table
    if not isinstance(table, dict):
        raise TypeError(f"expected a Lua table, got {type(table).__name__}")
    out, i = [], 1
    while i in table:
        out.append(table[i])
        i += 1
    return out
