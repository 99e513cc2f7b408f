"""The pinned settings (offloader.pinned), without a server: what a refusal says."""

from __future__ import annotations

from offloader.pinned import PINNED, TEXT_SETTINGS, refusal
from offloader.sql.text import with_text_settings


def test_a_refused_pinned_setting_is_named_with_what_to_change() -> None:
    text = "Code: 164. DB::Exception: Cannot modify 'max_result_rows' setting in readonly mode"
    said = refusal(164, text, "offloader")
    assert said is not None
    assert "max_result_rows = '0'" in said and "'offloader'" in said and "readonly = 2" in said


def test_a_constraint_on_a_transport_setting_is_named() -> None:
    text = "Setting output_format_arrow_string_as_string should not be changed"
    sent = {**PINNED, "output_format_arrow_string_as_string": "0"}
    said = refusal(452, text, "u", sent)
    assert said is not None and "output_format_arrow_string_as_string = '0'" in said


def test_other_readonly_errors_are_not_taken_for_a_refused_setting() -> None:
    assert refusal(164, "Cannot execute query in readonly mode", "u") is None
    assert refusal(60, "Table db.max_result_rows does not exist", "u") is None


def test_text_settings_are_a_settings_clause_of_the_pinned_values() -> None:
    query = with_text_settings("SELECT 1")
    assert query.endswith(", ".join(TEXT_SETTINGS))
    assert "date_time_output_format = 'simple'" in query
    assert "output_format_json_quote_64bit_integers = 0" in query
