"""``report.html``: the report's Markdown rendered by Python-Markdown as one self-contained page.

Tables come from the ``tables`` extension; every PNG the Markdown links to under the results
directory is embedded as a ``data:`` URI, so the page travels alone. Raw HTML in the Markdown is
not passed through: run names, labels and error messages are user text and are shown escaped.
"""

from __future__ import annotations

import base64
import html
import xml.etree.ElementTree as etree
from pathlib import Path

import markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}img{max-width:100%;margin:0.5em 0}"
    "code{background:#f3f3f3;padding:0 3px}pre{background:#f6f6f6;padding:1em;"
    "overflow:auto}h1,h2,h3{margin-top:1.4em}"
)


class _EmbedImages(Treeprocessor):
    """Replace the ``src`` of every ``<img>`` naming a PNG under ``base`` by a data URI."""

    def __init__(self, md: markdown.Markdown, base: Path) -> None:
        super().__init__(md)
        self.base = base

    def run(self, root: etree.Element) -> None:
        for img in root.iter("img"):
            p = self.base / img.get("src", "")
            if p.suffix == ".png" and p.is_file():
                img.set("src", "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode())


class _ReportExtension(Extension):
    def __init__(self, base: Path, embed: bool) -> None:
        super().__init__()
        self.base, self.embed = base, embed

    def extendMarkdown(self, md: markdown.Markdown) -> None:  # noqa: N802 - Markdown's API
        # user text (labels, errors) must show as text: drop raw-HTML blocks and inline tags
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")
        if self.embed:
            md.treeprocessors.register(_EmbedImages(md, self.base), "embed_images", 0)


def render_html(md: str, base: Path, title: str, embed: bool = True) -> str:
    """One HTML page from the report's Markdown.

    Args:
        md: the Markdown text.
        base: the folder relative links and image paths start from (the results directory).
        title: the page title.
        embed: embed the PNGs under ``base`` as data URIs (a self-contained page).
    """
    body = markdown.markdown(md, extensions=["tables", _ReportExtension(Path(base), embed)])
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
        f"{body}\n</body></html>\n"
    )
