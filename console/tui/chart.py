"""Text charts: the signature chart (offered against served) and level bars.

The signature chart is the picture of an imbalance: while offered load runs
above the service rate the cells between the two lines are shaded, so the
incident is the shaded area. Each line has its own glyph as well as its own
colour, so the chart reads the same under NO_COLOR and in a monochrome
terminal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text

OFFERED_MARK, SERVED_MARK, BOTH_MARK, EXCESS_MARK = "•", "─", "═", "░"
OFFERED_STYLE, SERVED_STYLE, BOTH_STYLE, EXCESS_STYLE = "bold yellow", "green", "bold green", "red"
AXIS_STYLE = "dim"
LABEL_WIDTH = 8  # "1.2k/s" and " ┤"
LEVELS = " ▁▂▃▄▅▆▇█"


def resample(values: Sequence[float | None], columns: int) -> list[float | None]:
    """``values`` squeezed (or stretched) into ``columns``, each the mean of what falls in it."""
    count = len(values)
    if count == 0 or columns <= 0:
        return [None] * max(0, columns)
    out: list[float | None] = []
    for column in range(columns):
        low = column * count // columns
        high = max(low + 1, (column + 1) * count // columns)
        known = [v for v in values[low:high] if v is not None]
        out.append(sum(known) / len(known) if known else None)
    return out


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above ``value``, so axis labels stay round."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * magnitude >= value * (1 - 1e-9):
            return float(step * magnitude)
    return float(10 * magnitude)


def axis_rate(value: float) -> str:
    """A rate in at most six characters, for the chart's axis."""
    if value >= 1000:
        return f"{value / 1000:.3g}k/s"
    return f"{value:.3g}/s"


def span_label(span_s: float) -> str:
    if span_s >= 120:
        return f"-{span_s / 60:.0f}m"
    return f"-{span_s:.0f}s"


def signature_chart(
    offered: Sequence[float | None],
    served: Sequence[float | None],
    width: int,
    height: int,
    span_s: float,
) -> Text:
    """Offered and served rates over ``span_s`` seconds, oldest left, in ``width`` x ``height``.

    The last line is the time axis with the legend.
    """
    if width < LABEL_WIDTH + 4 or height < 3:
        return Text("(chart needs more room)", style=AXIS_STYLE)
    plot_width = width - LABEL_WIDTH
    rows = height - 1
    offered_cols = resample(offered, plot_width)
    served_cols = resample(served, plot_width)
    known = [v for v in (*offered_cols, *served_cols) if v is not None]
    top = nice_ceiling(max(known, default=0.0) * 1.05)

    def row_of(value: float) -> int:
        return min(rows - 1, max(0, round((1 - value / top) * (rows - 1))))

    grid: list[list[tuple[str, str]]] = [[(" ", "")] * plot_width for _ in range(rows)]
    for x, (arriving, completing) in enumerate(zip(offered_cols, served_cols, strict=True)):
        offered_row = None if arriving is None else row_of(arriving)
        served_row = None if completing is None else row_of(completing)
        if offered_row is not None and served_row is not None:
            for y in range(offered_row + 1, served_row):
                grid[y][x] = (EXCESS_MARK, EXCESS_STYLE)
        if served_row is not None:
            grid[served_row][x] = (SERVED_MARK, SERVED_STYLE)
        if offered_row is not None:
            # Balanced load puts both lines in one cell; neither may hide the other.
            both = offered_row == served_row
            grid[offered_row][x] = (
                (BOTH_MARK, BOTH_STYLE) if both else (OFFERED_MARK, OFFERED_STYLE)
            )

    labels = {0: axis_rate(top), rows - 1: "0"}
    if rows >= 5 and (rows - 1) % 2 == 0:
        # Only where a row sits exactly at half the top: an axis label that is
        # not a round number reads as a measurement.
        labels[(rows - 1) // 2] = axis_rate(top / 2)
    text = Text(no_wrap=True, overflow="crop")
    for y, cells in enumerate(grid):
        text.append(labels.get(y, "").rjust(LABEL_WIDTH - 2) + " ┤", style=AXIS_STYLE)
        run_style = cells[0][1]
        run: list[str] = []
        for mark, style in cells:
            if style != run_style:
                text.append("".join(run), style=run_style or None)
                run_style, run = style, []
            run.append(mark)
        text.append("".join(run), style=run_style or None)
        text.append("\n")
    text.append(_axis(plot_width, span_s))
    return text


def _axis(plot_width: int, span_s: float) -> Text:
    left, right = span_label(span_s), "now"
    legend = Text.assemble(
        (OFFERED_MARK, OFFERED_STYLE), " offered λ  ",
        (SERVED_MARK, SERVED_STYLE), " served μ  ",
        (BOTH_MARK, BOTH_STYLE), " λ=μ  ",
        (EXCESS_MARK, EXCESS_STYLE), " λ>μ",
    )  # fmt: skip
    room = plot_width - len(left) - len(right)
    line = Text(" " * LABEL_WIDTH + left, style=AXIS_STYLE)
    if room >= legend.cell_len + 2:
        before = (room - legend.cell_len) // 2
        line.append(" " * before)
        line.append_text(legend)
        line.append(" " * (room - before - legend.cell_len))
    else:
        line.append(" " * max(1, room))
    line.append(right, style=AXIS_STYLE)
    return line


def level_bar(value: float | None, top: float | None, width: int) -> Text:
    """``████░░░░`` filled to value / top; red from 90%, yellow from 70%."""
    if value is None or not top or top <= 0 or width <= 0:
        return Text("░" * max(0, width), style=AXIS_STYLE)
    share = min(1.0, max(0.0, value / top))
    filled = round(share * width)
    style = "red" if share >= 0.9 else "yellow" if share >= 0.7 else "green"
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), AXIS_STYLE))


def sparkline(values: Sequence[float | None], width: int, top: float | None = None) -> Text:
    """One line of eighth-blocks; ``top`` fixes the scale (a queue's capacity)."""
    columns = resample(values, width)
    known = [v for v in columns if v is not None]
    ceiling = top if top else max(known, default=0.0)
    text = Text(no_wrap=True)
    for value in columns:
        if value is None:
            text.append(" ")
            continue
        # Zero sits on the baseline rather than vanishing into blank columns.
        level = 1 if ceiling <= 0 else round(min(1.0, max(0.0, value / ceiling)) * 8)
        text.append(LEVELS[max(1, level)], style="cyan")
    return text
