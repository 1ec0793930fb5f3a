"""The notebook magic shows a sandbox's results in the user's browser, where a script runs
with the user's Jupyter credentials (and can open a host terminal). These are the ways a cell
could slip one in; each must come out inert (see sandlot/safe_html.py)."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from sandlot.safe_html import clean_html, safe_bundle

ATTACKS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    "<img src='javascript:alert(1)'>",
    "<img src='data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+'>",
    "<a href='javascript:alert(1)'>x</a>",
    "<a href=' JaVaScRiPt:alert(1)'>x</a>",
    "<a href='data:text/html,<script>alert(1)</script>'>x</a>",
    "<svg onload=alert(1)><script>alert(1)</script></svg>",
    "<iframe src='http://localhost:8888/terminals'></iframe>",
    "<iframe srcdoc='&lt;script&gt;alert(1)&lt;/script&gt;'></iframe>",
    "<object data='x.swf'></object><embed src='x'>",
    "<style>body{display:none}</style><div style='position:fixed;inset:0'>x</div>",
    "<div onclick=alert(1) onmouseover='alert(1)'>x</div>",
    "<form action=//evil><input name=q></form>",
    "<meta http-equiv=refresh content='0;url=//evil'>",
    "<base href=//evil/>",
    "<link rel=stylesheet href=//evil/x.css>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<noscript><p title='</noscript><img src=x onerror=alert(1)>'></noscript>",
    "<template><script>alert(1)</script></template>",
    "<<script>script>alert(1)<</script>/script>",
    "<scr<script>ipt>alert(1)</script>",
    "<!--><script>alert(1)</script>-->",
    "<![CDATA[<script>alert(1)</script>]]>",
    "<div title='\"><script>alert(1)</script>'>x</div>",
    "<td colspan='1\" onmouseover=\"alert(1)'>x</td>",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "<textarea><script>alert(1)</script></textarea>",
    "<img src=data:image/png;base64,AAAA onerror=alert(1)>",
]

# The test's own copy of what may pass, on purpose not imported from sandlot.safe_html: a tag
# or attribute added there by mistake (a <script>, an on* handler) fails here.
SAFE_TAGS = set(
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
SAFE_ATTRS = set(
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
        "rel",
        "target",
    ]
)


class _Elements(HTMLParser):
    """What a browser's parser sees: every tag and attribute."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.other: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, attrs))

    def handle_comment(self, data: str) -> None:
        self.other.append(data)

    def handle_decl(self, decl: str) -> None:
        self.other.append(decl)

    def unknown_decl(self, data: str) -> None:
        self.other.append(data)


def _inert(out: str) -> None:
    parsed = _Elements()
    parsed.feed(out)
    parsed.close()
    assert parsed.other == [], out
    for tag, attrs in parsed.found:
        assert tag in SAFE_TAGS, out
        for name, value in attrs:
            value = (value or "").lower()
            if name == "src":
                assert tag == "img" and value.startswith(
                    ("data:image/png;", "data:image/jpeg;", "data:image/gif;")
                ), out
            elif name == "href":
                assert tag == "a" and value.startswith(("https://", "http://", "mailto:")), out
            else:
                assert name in SAFE_ATTRS, out


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_comes_out_inert(attack: str) -> None:
    _inert(clean_html(attack))
    _inert(safe_bundle({"text/html": attack, "text/plain": "x"})["text/html"])


def test_tables_and_text_survive() -> None:
    table = (
        '<table border="1" class="dataframe"><thead><tr><th>a</th></tr></thead>'
        "<tbody><tr><td>1 &lt; 2</td></tr></tbody></table>"
    )
    assert clean_html(table) == table
    assert clean_html("<b>hi</b><br/><img src='data:image/png;base64,AAAA' alt=p>") == (
        '<b>hi</b><br><img src="data:image/png;base64,AAAA" alt="p">'
    )
    assert clean_html("<a href='https://x.org/?a=1&b=2'>x</a>") == (
        '<a href="https://x.org/?a=1&amp;b=2" rel="noopener noreferrer" target="_blank">x</a>'
    )


def test_active_formats_are_dropped() -> None:
    bundle = {
        "text/plain": "p",
        "application/javascript": "alert(1)",
        "image/svg+xml": "<svg onload=alert(1)/>",
        "text/markdown": "<img src=x onerror=alert(1)>",
        "application/vnd.jupyter.widget-view+json": {"model_id": "x"},
        "image/png": "AAAA",
    }
    assert safe_bundle(bundle) == {"text/plain": "p", "image/png": "AAAA"}
    only_active = safe_bundle({"application/javascript": "alert(1)"})
    assert only_active == {
        "text/plain": "[sandlot: not shown without --trust: application/javascript]"
    }


def test_non_string_values_are_dropped() -> None:
    assert safe_bundle({"text/plain": 3, "text/html": ["<b>"]}) == {
        "text/plain": "[sandlot: not shown without --trust: text/html, text/plain]"
    }
