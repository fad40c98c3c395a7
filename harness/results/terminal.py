"""Tables that never cut a number: pick the layout that fits the width, or print at the table's own width.

rich shrinks a table wider than the console by folding words and truncating no-wrap cells with "…",
so at 80 columns, or in a file or a CI log (where rich assumes 80), ``57.85`` becomes ``57.…`` and a row
id ``demo-lidr-iter1`` becomes ``demo-lid / r-iter1``. Here a table is printed only at a width where
every no-wrap cell fits whole and every wrapping cell's longest word fits (:func:`needed_width`).
Otherwise narrower layouts are tried in turn: fewer columns per table (:func:`split_columns`, the key
columns repeated), then one block of ``header value`` lines per row (:func:`stack_rows`). Output that
goes to a file or a pipe has no width to respect, so its tables are printed whole at their own width.

Example::

    out = TableOutput(width=None)        # a terminal: its width; a file or CI log: each table's own
    out.print(render_comparison(frame))  # split into fewer columns, then stacked, if it must be
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

#: rich's own limit on a console's width (and ours on a table's: a file line may be long, not endless)
WIDEST = 10_000


def needed_width(table: Table, console: Console) -> int:
    """The narrowest width at which rich cuts nothing in ``table``: each no-wrap column as wide as its
    widest cell, each wrapping column as wide as its longest word, plus padding and borders."""
    options = console.options.update_width(WIDEST)
    total = 0
    for index, column in enumerate(table.columns):
        cells = ([column.header] if table.show_header else []) + list(column.cells)
        measures = [Measurement.get(console, options, cell) for cell in cells]
        width = max([m.maximum if column.no_wrap else m.minimum for m in measures] or [0])
        width = max(width, column.min_width or 0)
        total += width + table._get_padding_width(index)
    if table.box is not None:
        total += max(len(table.columns) - 1, 0) + (2 if table.show_edge else 0)
    return total


def _copy_columns(table: Table, columns: Sequence[Column], *, title, caption) -> Table:
    """A table with the given columns of ``table`` (same headers, justification, rows and sections)."""
    part = Table(title=title, caption=caption, caption_justify=table.caption_justify, box=table.box,
                 show_header=table.show_header, show_edge=table.show_edge)
    for column in columns:
        part.add_column(column.header, justify=column.justify, no_wrap=column.no_wrap, overflow=column.overflow,
                        style=column.style, min_width=column.min_width)
    cells = [list(column.cells) for column in columns]
    for index, row in enumerate(table.rows):
        part.add_row(*[cell[index] for cell in cells], style=row.style, end_section=row.end_section)
    return part


def split_columns(table: Table, width: int, console: Console, *, keys: int = 1) -> list[RenderableType] | None:
    """``table`` as several tables of fewer columns, each repeating the first ``keys`` columns and
    fitting ``width``; the title goes on the first, the caption below the last (wrapped at ``width``,
    not at the narrow table's). None when one key column and one other column already do not fit."""
    key_columns, others = table.columns[:keys], table.columns[keys:]
    parts: list[list[Column]] = []
    for column in others:
        if parts and needed_width(_copy_columns(table, [*key_columns, *parts[-1], column], title=None,
                                                caption=None), console) <= width:
            parts[-1].append(column)
        elif needed_width(_copy_columns(table, [*key_columns, column], title=None, caption=None), console) <= width:
            parts.append([column])
        else:
            return None
    tables: list[RenderableType] = [_copy_columns(table, [*key_columns, *part], title=table.title if i == 0 else None,
                                                  caption=None) for i, part in enumerate(parts)]
    if table.caption:
        tables.append(table.caption if isinstance(table.caption, Text) else Text(str(table.caption), style="dim"))
    return tables


def word_lines(text: str, width: int, *, style: str = "") -> list[Text]:
    """``text`` broken between words to fit ``width``; a word longer than ``width`` (a long row id)
    gets a line of its own and runs on, whole (rich would fold it)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return [Text(line, style=style, no_wrap=True, overflow="ignore") for line in lines or [""]]


def _plain(cell: RenderableType) -> Text:
    return cell.copy() if isinstance(cell, Text) else Text(str(cell))


def stack_rows(table: Table, width: int) -> Group:
    """One block per row: the first cell as a heading, then ``header: value`` lines, never cut (a value
    wider than the screen runs on rather than fold)."""
    lines: list[RenderableType] = []
    if table.title:
        lines.append(Text(str(table.title), style="bold"))
    headers = [str(column.header) for column in table.columns]
    cells = [list(column.cells) for column in table.columns]
    for index in range(len(table.rows)):
        heading = _plain(cells[0][index]).plain if cells else ""
        if heading:
            lines += word_lines(f"{headers[0]}: {heading}" if headers[0] else heading, width, style="bold")
        for header, column in zip(headers[1:], cells[1:]):
            value = _plain(column[index])
            if value.plain:
                lines.append(Text.assemble(f"  {header}: ", value, no_wrap=True, overflow="ignore"))
    if table.caption:
        lines.append(Text(str(table.caption), style="dim"))
    return Group(*lines)


class TableOutput:
    """Where tables are printed: a console whose width is fixed (a terminal, or ``width`` given), where
    each table takes the first layout that fits, or a file or pipe, where each table keeps its own width.

    Args:
        width: the width to fit (default: the terminal's; none when the output is not a terminal).
        file: where to write (default: stdout, or stderr with ``stderr=True``).
    """

    def __init__(self, width: int | None = None, *, stderr: bool = False, file=None):
        self.console = Console(width=width, stderr=stderr, file=file)
        self.fixed_width = width is not None or self.console.is_terminal

    def fitted(self, table: Table, narrow: Callable[[int], RenderableType | None] | None = None,
               *, keys: int = 1) -> RenderableType:
        """``table`` if it fits; else ``narrow(width)`` when given and it fits; else split columns; else stacked."""
        console = self.console
        if not self.fixed_width:
            console.width = min(max(needed_width(table, console), 80), WIDEST)
            return table
        width = console.width
        if needed_width(table, console) <= width:
            return table
        if narrow is not None and (layout := narrow(width)) is not None:
            return layout
        parts = split_columns(table, width, console, keys=keys)
        return Group(*parts) if parts else stack_rows(table, width)

    def print(self, table: RenderableType, narrow: Callable[[int], RenderableType | None] | None = None,
              *, keys: int = 1) -> None:
        # crop=False: a heading or value wider than a very narrow screen runs on instead of being cut.
        self.console.print(self.fitted(table, narrow, keys=keys) if isinstance(table, Table) else table, crop=False)
