"""The ClickHouse settings that every query of offloader's sessions carries, each pinned to
ClickHouse 26.9's default. Pure: no server, no driver.

A settings profile on offloader's user applies to every query it sends. Many settings
change which rows a query returns without an error (`max_result_rows` with
`result_overflow_mode = 'break'` cuts a page short; `additional_table_filters` hides
rows; `skip_unavailable_shards` reads a cluster without a shard) or how values render
(the text of JSON values and Decimals that verify compares). Both transports send these
with every query — native as the query's settings, HTTP as URL parameters — so pages,
probes, the high-water mark, the survey, audit, verify, repair and retention all read
what ClickHouse holds, whatever the profile says. A query's own `SETTINGS` clause still
wins over them (where offloader sets one on purpose).

A profile that forbids changing one of them (`readonly = 1` with another value, or a
constraint) makes ClickHouse refuse the query; `refusal` names the setting and what to
change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["PINNED", "TEXT_SETTINGS", "refusal"]

# Settings that change which rows a query returns, each at ClickHouse 26.9's default
# (tests/test_pinned.py checks every value against the server's system.settings).
ROWS = {
    # LIMIT and OFFSET applied on top of every query.
    "limit": "0",
    "offset": "0",
    # Limits whose overflow mode `break` returns a prefix of the result without an error.
    "max_result_rows": "0",
    "max_result_bytes": "0",
    "result_overflow_mode": "throw",
    "max_rows_to_read": "0",
    "max_bytes_to_read": "0",
    "read_overflow_mode": "throw",
    "max_rows_to_read_leaf": "0",
    "max_bytes_to_read_leaf": "0",
    "read_overflow_mode_leaf": "throw",
    "timeout_overflow_mode": "throw",
    "timeout_overflow_mode_leaf": "throw",
    "max_rows_to_group_by": "0",
    "group_by_overflow_mode": "throw",
    "max_rows_to_sort": "0",
    "max_bytes_to_sort": "0",
    "sort_overflow_mode": "throw",
    "max_rows_in_set": "0",
    "max_bytes_in_set": "0",
    "set_overflow_mode": "throw",
    "max_rows_in_join": "0",
    "max_bytes_in_join": "0",
    "join_overflow_mode": "throw",
    "max_rows_to_transfer": "0",
    "max_bytes_to_transfer": "0",
    "transfer_overflow_mode": "throw",
    "max_rows_in_distinct": "0",
    "max_bytes_in_distinct": "0",
    "distinct_overflow_mode": "throw",
    "partial_result_on_first_cancel": "0",
    # Filters added to every table read or to every result.
    "additional_table_filters": "{}",
    "additional_result_filter": "",
    # Which rows of a MergeTree a read sees (offloader writes FINAL itself where configured).
    "final": "0",
    "do_not_merge_across_partitions_select_final": "0",
    "apply_deleted_mask": "1",
    "apply_patch_parts": "1",
    "apply_mutations_on_fly": "0",
    "select_sequential_consistency": "0",
    "use_query_cache": "0",
    # Which shards and replicas a Distributed read reaches, and how it merges them.
    "skip_unavailable_shards": "0",
    "optimize_skip_unused_shards": "0",
    "max_replica_delay_for_distributed_queries": "300",
    "fallback_to_stale_replicas_for_distributed_queries": "1",
    "distributed_group_by_no_merge": "0",
    "distributed_product_mode": "deny",
    "prefer_global_in_and_join": "0",
    "enable_parallel_replicas": "0",
    "parallel_replicas_count": "0",
    "parallel_replica_offset": "0",
    "parallel_replicas_custom_key": "",
    "parallel_replicas_for_non_replicated_merge_tree": "0",
    # What a query means: aggregates over empty sets, NULL in IN, DISTINCT counting,
    # ORDER BY 1, extra result blocks.
    "empty_result_for_aggregation_by_empty_set": "0",
    "empty_result_for_aggregation_by_constant_keys_on_empty_set": "1",
    "aggregate_functions_null_for_empty": "0",
    "transform_null_in": "0",
    "count_distinct_implementation": "uniqExact",
    "enable_positional_arguments": "1",
    "group_by_use_nulls": "0",
    "join_use_nulls": "0",
    "cast_keep_nullable": "0",
    "union_default_mode": "",
    "extremes": "0",
    "totals_mode": "after_having_exclusive",
}

# Settings that shape the text of values: JSON values (stored as ClickHouse's toString
# text), Decimals (verify's checksum), times and intervals.
TEXT = {
    "session_timezone": "",
    "date_time_output_format": "simple",
    "interval_output_format": "numeric",
    "output_format_json_quote_64bit_integers": "0",
    "output_format_json_quote_64bit_floats": "0",
    "output_format_json_quote_decimals": "0",
    "output_format_json_quote_denormals": "0",
    "output_format_json_escape_forward_slashes": "1",
    "output_format_json_named_tuples_as_objects": "1",
    "output_format_decimal_trailing_zeros": "0",
}

# Every pinned setting: sent with every query of every session (source/native.py,
# source/arrow.py), as text (ClickHouse parses each by its type).
PINNED: dict[str, str] = {**ROWS, **TEXT}

# The text settings as a SETTINGS clause (sql.with_text_settings), for queries whose
# text is stored or compared.
TEXT_SETTINGS = tuple(
    f"{name} = {value if value.isdigit() else repr(value)}" for name, value in TEXT.items()
)

# ClickHouse's codes for a setting it will not let a query change: READONLY (164) and
# SETTING_CONSTRAINT_VIOLATION (452).
REFUSED_CODES = (164, 452)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def refusal(code: int | None, text: str, user: str, sent: Mapping[str, str] = PINNED) -> str | None:
    """What to change when ClickHouse refused one of the settings a query carried (`sent`:
    the pinned ones and a transport's output settings), from its error `code` and message
    `text`, for offloader's ClickHouse `user`; None for any other error."""
    if code not in REFUSED_CODES:
        return None
    name = next((w for w in _WORD.findall(text) if w in sent), None)
    if name is None:
        return None
    why = (
        "ClickHouse's default, so that no settings profile changes which rows it reads"
        if name in PINNED
        else "the form its transport reads"
    )
    return (
        f"ClickHouse refuses the setting {name} = {sent[name]!r}, which offloader sends "
        f"with every query ({why}); let user {user!r} set it: in its profile, readonly = 2 "
        f"rather than 1 (or no value for {name}), and no constraint on {name} that "
        f"excludes {sent[name]!r}"
    )
