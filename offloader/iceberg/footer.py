"""Iceberg field ids in the footer of a Parquet file ClickHouse encoded (the parquet
transport's pages), the data pages left byte for byte as ClickHouse wrote them.

A Parquet file ends with its FileMetaData (Thrift, compact protocol), the footer's
length and `PAR1`; every offset in it points before the footer, so replacing the footer
alone keeps the file valid. The footer is read and written with thriftpy2 from
Parquet's own Thrift definition (parquet.thrift, apache/parquet-format 2.13.0, beside
this module), never by hand: fields offloader does not touch round-trip as they were.

The ids come from the table's name mapping (pyiceberg's `Schema.name_mapping`), walked
as Iceberg readers apply one: a column by its name, a list's element and a map's key
and value inside the repeated group Parquet wraps them in. Readers that map columns by
id (Daft, iceberg-rust, Spark) then need no name mapping.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offloader.errors import SinkError

MAGIC = b"PAR1"
# parquet.thrift's ConvertedType values of the groups whose one child is a wrapper
# (the repeated group holding a list's element, a map's key and value).
_LIST, _MAP = 3, 1


def load() -> None:
    """Load the Thrift codec (thriftpy2, Parquet's definition: about 0.1 s of one core),
    so the first footer does not wait for it."""
    _thrift()
    _codec()


@functools.cache
def _thrift() -> Any:
    import thriftpy2

    return thriftpy2.load(
        str(Path(__file__).with_name("parquet.thrift")), module_name="parquet_thrift"
    )


def _codec() -> tuple[Any, Any, Any]:
    from thriftpy2.protocol import TCompactProtocolFactory
    from thriftpy2.utils import deserialize, serialize

    return TCompactProtocolFactory(), deserialize, serialize  # type: ignore[no-untyped-call]


def footer(body: bytes, what: str) -> tuple[Any, int]:
    """The FileMetaData of a Parquet file and the footer's length."""
    if len(body) < 12 or body[:4] != MAGIC or body[-4:] != MAGIC:
        raise SinkError(f"{what}: not a Parquet file (no PAR1 at its start and end)")
    length = int.from_bytes(body[-8:-4], "little")
    if length <= 0 or length > len(body) - 12:
        raise SinkError(f"{what}: the Parquet footer's length {length} does not fit the file")
    factory, deserialize, _ = _codec()
    meta = deserialize(_thrift().FileMetaData(), body[-8 - length : -8], factory)
    return meta, length


def with_field_ids(body: bytes, mapping: Sequence[Any], what: str) -> tuple[int, bytes]:
    """How `body` reads with every column of its footer's schema given its Iceberg field
    id from `mapping` (the table's name mapping: MappedFields with field_id, names,
    fields): its first `keep` bytes as they are, then `tail` (the new footer, its
    length, PAR1) — written one after the other, so a page is never copied whole.
    Raises SinkError naming the column when one has no id in the mapping (the file is
    then not stored: a file readers would map partly by id is worse than none)."""
    meta, length = footer(body, what)
    _assign(meta.schema, mapping, what)
    factory, _, serialize = _codec()
    rewritten: bytes = serialize(meta, factory)
    return len(body) - 8 - length, rewritten + len(rewritten).to_bytes(4, "little") + MAGIC


def _assign(schema: list[Any], mapping: Sequence[Any], what: str) -> None:
    """Set field_id on the flattened (depth-first, num_children) schema elements."""
    elements = iter(schema)
    root = next(elements)

    def walk(count: int, fields: Sequence[Any], path: str) -> None:
        by_name = {name: f for f in fields for name in f.names}
        for _ in range(count):
            element = next(elements)
            children = element.num_children or 0
            where = f"{path}{element.name}"
            mapped = by_name.get(element.name)
            if mapped is None:
                raise SinkError(
                    f"{what}: column {where!r} of the Parquet page has no Iceberg field id "
                    "in the table's name mapping; the page is not stored"
                )
            element.field_id = mapped.field_id
            if (children and element.converted_type in (_LIST, _MAP)) or _wraps(element):
                # The one repeated child is Parquet's wrapper: no id of its own; its
                # children are the element, or the key and the value.
                wrapper = next(elements)
                walk(wrapper.num_children or 0, mapped.fields, f"{where}.{wrapper.name}.")
            else:
                walk(children, mapped.fields, where + ".")

    walk(root.num_children or 0, mapping, "")


def _wraps(element: Any) -> bool:
    """A list or map group by its logical type (files that set only that)."""
    logical = element.logicalType
    return bool(
        element.num_children
        and logical is not None
        and (logical.LIST is not None or logical.MAP is not None)
    )
