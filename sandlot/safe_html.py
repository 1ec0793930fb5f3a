"""What a sandbox may show in the user's notebook.

A notebook front end runs the scripts of the outputs a live kernel produces (text/html
``<script>``, ``onerror=``, application/javascript, SVG), with the user's Jupyter
credentials: from there a script can start a terminal on the host. The notebook magic
therefore shows a sandbox's results through :func:`safe_bundle`: passive formats as they are,
HTML rebuilt from an allowlist of tags and attributes (tables, text, inline images), and
everything else dropped to its ``text/plain``.

The HTML is re-serialised from the parser's events, every text and attribute value escaped,
so nothing the sandbox wrote reaches the page as markup unless listed here.
"""

from __future__ import annotations

import html
from html.parser import HTMLParser
from typing import Any

# Shown as they are: no front end runs anything in them.
PASSIVE = frozenset(
    {"text/plain", "image/png", "image/jpeg", "image/gif", "text/latex", "application/json"}
)
_TAGS = frozenset(
    [
        "a",
        "abbr",
        "b",
        "blockquote",
        "br",
        "caption",
        "code",
        "col",
        "colgroup",
        "dd",
        "del",
        "div",
        "dl",
        "dt",
        "em",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "i",
        "img",
        "ins",
        "kbd",
        "li",
        "ol",
        "p",
        "pre",
        "q",
        "s",
        "samp",
        "small",
        "span",
        "strong",
        "sub",
        "sup",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "tt",
        "u",
        "ul",
    ]
)
_VOID = frozenset({"br", "col", "hr", "img"})
_ATTRS = frozenset(
    [
        "align",
        "alt",
        "border",
        "cellpadding",
        "cellspacing",
        "class",
        "colspan",
        "height",
        "rowspan",
        "span",
        "title",
        "valign",
        "width",
    ]
)
# Elements whose content is dropped with them (not shown as text either).
_SKIP = frozenset(
    [
        "script",
        "style",
        "iframe",
        "object",
        "embed",
        "template",
        "noscript",
        "svg",
        "math",
        "textarea",
        "select",
    ]
)
_IMAGE_PREFIXES = ("data:image/png;base64,", "data:image/jpeg;base64,", "data:image/gif;base64,")
_LINK_PREFIXES = ("https://", "http://", "mailto:")


class _Cleaner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skipping += 1
            return
        if self.skipping or tag not in _TAGS:
            return
        kept = []
        for name, value in attrs:
            value = value or ""
            ok = name in _ATTRS
            ok |= tag == "img" and name == "src" and value.startswith(_IMAGE_PREFIXES)
            ok |= tag == "a" and name == "href" and value.lower().startswith(_LINK_PREFIXES)
            if ok:
                kept.append(f' {name}="{html.escape(value, quote=True)}"')
        if tag == "a":
            kept.append(' rel="noopener noreferrer" target="_blank"')
        self.out.append(f"<{tag}{''.join(kept)}>")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            return
        self.handle_starttag(tag, attrs)
        if tag in _TAGS and tag not in _VOID and not self.skipping:
            self.out.append(f"</{tag}>")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif not self.skipping and tag in _TAGS and tag not in _VOID:
            self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.out.append(html.escape(data, quote=False))


def clean_html(text: str) -> str:
    """``text`` with only allowlisted tags and attributes: no scripts, handlers, styles,
    frames or links other than http(s) and mailto."""
    cleaner = _Cleaner()
    cleaner.feed(text)
    cleaner.close()
    return "".join(cleaner.out)


def safe_bundle(data: dict[str, Any]) -> dict[str, Any]:
    """A result's MIME bundle as the notebook may show it: passive formats, cleaned HTML;
    the rest dropped (a ``text/plain`` stays, or says what was left out)."""
    safe = {k: v for k, v in data.items() if k in PASSIVE and isinstance(v, str | dict | list)}
    if isinstance(data.get("text/html"), str):
        safe["text/html"] = clean_html(data["text/html"])
    if not safe:
        dropped = ", ".join(sorted(str(k) for k in data))[:500]
        safe["text/plain"] = f"[sandlot: not shown without --trust: {dropped}]"
    return safe
