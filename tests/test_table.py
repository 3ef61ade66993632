"""The benchmark scripts' plain-text tables."""

from effdetmask.utils.table import format_number, format_table


def test_columns_align_and_missing_values_print_as_a_dash():
    rows = [{"model": "d0", "ms": 812.345678, "n": 100}, {"model": "baseline", "ms": None}]
    lines = format_table(rows, ["model", "ms", "n"]).splitlines()
    assert lines[0].split(" | ") == ["model   ", "ms   ", "n  "]
    assert set(lines[1]) == {"-", "+"}
    assert lines[2].split(" | ") == ["d0      ", "812.3", "100"]
    assert lines[3].split(" | ") == ["baseline", "-    ", "-  "]
    assert len({len(line) for line in lines}) == 1


def test_custom_format_and_number_format():
    assert format_number(0.123456) == "0.1235" and format_number(None) == "-"
    assert format_table([{"a": 1.0}], ["a"], lambda v: f"{v:.1f}").splitlines()[2] == "1.0"
