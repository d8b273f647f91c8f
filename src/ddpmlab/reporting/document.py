"""A tiny document model rendered to Markdown (images linked) and HTML (images embedded), so both
always say the same thing."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Emphasis:
    """A table cell shown in bold (e.g. the best value of a column)."""

    value: object


@dataclass(frozen=True)
class Tied:
    """A table cell shown in italics: one of a group that cannot be told apart from the best."""

    value: object


@dataclass(frozen=True)
class Estimate:
    """A score with its 95% interval, shown as "1.27 [1.12, 1.45]"; without an interval, the score alone."""

    value: float
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, row, name: str) -> Estimate:
        """``name`` and its ``<name>_ci_low`` / ``<name>_ci_high`` from a dict or a pandas row."""
        get = row.get if hasattr(row, "get") else lambda k: getattr(row, k, None)
        low, high = get(f"{name}_ci_low"), get(f"{name}_ci_high")
        missing = [v is None or math.isnan(float(v)) for v in (low, high)]  # None or NaN (a CSV's blank)
        return cls(float(get(name)), None if any(missing) else float(low), None if any(missing) else float(high))

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.value:.4g}"
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


@dataclass
class Document:
    """Headings, paragraphs, tables and images in order; rendered to Markdown and HTML.

    Image paths are relative to the folder the document is written to.
    """

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def table(self, header: list[str], rows: list[list[object]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def image(self, relative_path: str, caption: str) -> None:
        self.blocks.append(("image", (relative_path, caption)))

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, content in self.blocks:
            if kind == "heading":
                out += [f"## {content}", ""]
            elif kind == "paragraph":
                out += [str(content), ""]
            elif kind == "table":
                header, rows = content
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out += ["| " + " | ".join(_markdown_cell(v) for v in row) + " |" for row in rows]
                out.append("")
            elif kind == "image":
                path, caption = content
                out += [f"![{caption}]({path})", f"*{caption}*", ""]
        return "\n".join(out)

    def to_html(self, base: Path) -> str:
        """Self-contained HTML: images are read from ``base / path`` and embedded as data URIs."""
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title>",
            ("<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
            "img{max-width:100%;image-rendering:pixelated}figure{margin:1em 0}figcaption{color:#555;font-size:90%}"
            "code{background:#f3f3f3;padding:0 3px}</style></head><body>"),
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for kind, content in self.blocks:
            if kind == "heading":
                parts.append(f"<h2>{html.escape(str(content))}</h2>")
            elif kind == "paragraph":
                parts.append(f"<p>{_inline_code(html.escape(str(content)))}</p>")
            elif kind == "table":
                header, rows = content
                parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
                for row in rows:
                    parts.append("<tr>" + "".join(_html_cell(v) for v in row) + "</tr>")
                parts.append("</table>")
            elif kind == "image":
                path, caption = content
                data = base64.b64encode((base / path).read_bytes()).decode()
                parts.append(
                    f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)


def _markdown_cell(value: object) -> str:
    if isinstance(value, Emphasis):
        return f"**{_cell(value.value)}**"
    if isinstance(value, Tied):
        return f"*{_cell(value.value)}*"
    return _cell(value)


def _cell(value: object) -> str:
    if isinstance(value, (Emphasis, Tied)):
        return _cell(value.value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _html_cell(value: object) -> str:
    if isinstance(value, Emphasis):
        return f"<td><b>{html.escape(_cell(value.value))}</b></td>"
    if isinstance(value, Tied):
        return f"<td><i>{html.escape(_cell(value.value))}</i></td>"
    return f"<td>{html.escape(_cell(value))}</td>"


def _inline_code(text: str) -> str:
    """Render `code` spans the way Markdown would."""
    pieces = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
