"""pyiceberg's private names offloader uses (offloader/iceberg/compat.py) still exist and
the installed pyiceberg is one they were checked against: an upgrade that moves one
fails here, by name, instead of in a cycle. No server."""

from __future__ import annotations

import inspect
import re
from importlib import metadata
from pathlib import Path

from offloader.iceberg import compat

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_pyiceberg_is_one_compat_was_checked_against() -> None:
    version = metadata.version("pyiceberg")
    assert version.startswith(compat.CHECKED), (
        f"pyiceberg {version}: re-check every name in offloader/iceberg/compat.py against it "
        f"(checked: {compat.CHECKED}), then add it to compat.CHECKED"
    )


def test_the_private_names_are_there_with_the_shapes_used() -> None:
    params = inspect.signature(compat._dataframe_to_data_files).parameters
    assert {"table_metadata", "df", "io", "write_uuid", "counter"} <= set(params)
    params = inspect.signature(compat._check_pyarrow_schema_compatible).parameters
    assert {"provided_schema", "downcast_ns_timestamp_to_us", "format_version"} <= set(params)
    assert callable(compat._to_requested_schema)
    assert hasattr(compat._OverwriteFiles, "_process_manifests")
    params = inspect.signature(compat._ManifestMergeManager).parameters
    assert {"target_size_bytes", "min_count_to_merge", "merge_enabled"} <= set(params)
    for name in ("_update_and_stage_table", "_parse_metadata_version", "_load_file_io"):
        assert hasattr(compat.MetastoreCatalog, name), name
    params = inspect.signature(compat._update_table_metadata_log).parameters
    assert list(params) == ["base_metadata", "metadata_location", "last_updated_ms"]
    assert {"_table", "_updates"} <= set(
        inspect.signature(compat.Transaction.__init__).parameters
    ) or ("_updates" in inspect.getsource(compat.Transaction.__init__))


def test_only_compat_imports_pyiceberg_private_names() -> None:
    private = re.compile(r"from pyiceberg[\w.]* import[^\n]*\b_[a-z]|^\s+_[A-Za-z]\w*,$", re.M)
    for path in (ROOT / "offloader").rglob("*.py"):
        if path.name == "compat.py":
            continue
        text = path.read_text()
        for block in re.findall(
            r"from pyiceberg[\w.]* import \([^)]*\)|from pyiceberg[^\n]*", text
        ):
            assert not private.search(block), (path, block)
