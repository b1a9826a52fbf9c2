"""Tables and pages for the run report and the sweep comparison: one Markdown table, one HTML table,
one HTML escaping and one self-contained page (its CSS inline), so both look and escape alike.

Cells are text, escaped here; a cell built with :func:`link` is HTML already and goes in as is."""

from __future__ import annotations

import html

escape = html.escape

# Both pages: a centred column, bordered tables with a tinted header row.
TABLE_CSS = (
    "body{{font-family:system-ui,sans-serif;max-width:{width}px;margin:2em auto;color:#223}}"
    "table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccd;padding:4px 8px;"
    "text-align:left;font-size:14px}}th{{background:#eef}}"
)
# A sortable table's header cells (html_table(sortable=True)) show that they can be clicked.
SORTABLE_CSS = "th{cursor:pointer}th:hover{background:#dde}"
# Click a header cell of a sortable table to sort its body by that column (numbers as numbers).
SORT_SCRIPT = """<script>
document.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], asc = th.dataset.asc !== '1';
  th.dataset.asc = asc ? '1' : '0';
  const key = tr => { const t = tr.cells[col].textContent, n = parseFloat(t); return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); })
    .forEach(tr => body.appendChild(tr));
}));
</script>"""


class Html(str):
    """A cell that is HTML already (not escaped again by :func:`html_table`)."""


def link(text: str, href: str) -> Html:
    return Html(f"<a href='{escape(href)}'>{escape(text)}</a>")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table; a ``|`` inside a cell is escaped."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows],
    ]


def _cell(value: str) -> str:
    return value if isinstance(value, Html) else escape(value)


def html_table(header: list[str], rows: list[list[str]], sortable: bool = False) -> list[str]:
    """The lines of an HTML table. ``sortable``: header and body apart, each header cell a
    click-to-sort button (with SORTABLE_CSS and SORT_SCRIPT on the page)."""
    body = ["<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows]
    if not sortable:
        return ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>", *body, "</table>"]
    ths = "".join(f"<th title='click to sort'>{escape(h)}</th>" for h in header)
    return ["<table><thead><tr>" + ths + "</tr></thead>", "<tbody>", *body, "</tbody></table>"]


def html_page(title: str, body: list[str], width: int = 1000, css: str = "") -> str:
    """A self-contained page: ``title`` (text), ``body`` (HTML lines), TABLE_CSS at ``width`` pixels
    plus the page's own ``css``."""
    return "\n".join(
        [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>",
            f"<style>{TABLE_CSS.format(width=width)}{css}</style></head><body>",
            *body,
            "</body></html>",
        ]
    )
