"""The model card a release publishes: labels come from whoever edited, so none can add rows,
end the table, write front matter or carry HTML."""

from __future__ import annotations

from factstore.release.card import _cell


def test_a_label_stays_one_inert_table_cell() -> None:
    hostile = "Big Ben | 1 |\r\n---\nlicense: evil\u2028<img src=x onerror=alert(1)>\x85& co"
    cell = _cell(hostile)
    assert cell.splitlines() == [cell]  # no line break of any kind survives
    assert "<" not in cell and ">" not in cell and "\\|" in cell
    assert cell.count("|") == cell.count("\\|")  # every pipe escaped: no new column
    assert _cell("The Eiffel Tower") == "The Eiffel Tower"  # plain labels are unchanged
