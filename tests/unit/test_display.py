"""The pure helpers behind code contexts: MIME bundles and how a cell is split and shown."""

from __future__ import annotations

import base64
import traceback
from typing import Any

import pytest

from sandlot.agent import display, kernel

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))


class Warnings:
    """A ``warn`` callback that records what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, BaseException]] = []

    def __call__(self, method: str, exc: BaseException) -> None:
        self.calls.append((method, exc))


def no_warn(method: str, exc: BaseException) -> None:
    raise AssertionError(f"unexpected warning: {method}: {exc!r}")


class Rich:
    def __repr__(self) -> str:
        return "Rich()"

    def _repr_html_(self) -> str:
        return "<b>rich</b>"

    def _repr_markdown_(self) -> str:
        return "**rich**"

    def _repr_svg_(self) -> str:
        return "<svg></svg>"

    def _repr_png_(self) -> bytes:
        return PNG

    def _repr_json_(self) -> dict[str, Any]:
        return {"a": [1, 2], "b": None}

    def _repr_latex_(self) -> str:
        return r"$\alpha$"


# -- bundle --------------------------------------------------------------------------------


def test_every_repr_method_lands_under_its_mime_type() -> None:
    data = display.bundle(Rich(), no_warn)
    assert data == {
        "text/html": "<b>rich</b>",
        "text/markdown": "**rich**",
        "image/svg+xml": "<svg></svg>",
        "image/png": base64.b64encode(PNG).decode("ascii"),
        "text/latex": r"$\alpha$",
        "application/json": {"a": [1, 2], "b": None},
        "text/plain": "Rich()",
    }


def test_png_bytes_become_base64_text_that_decodes_back() -> None:
    class Picture:
        def _repr_png_(self) -> bytes:
            return PNG

    data = display.bundle(Picture(), no_warn)
    assert isinstance(data["image/png"], str)
    assert base64.b64decode(data["image/png"]) == PNG


def test_png_already_base64_is_kept_as_is() -> None:
    text = base64.b64encode(PNG).decode("ascii")

    class Picture:
        def _repr_png_(self) -> str:
            return text

    assert display.bundle(Picture(), no_warn)["image/png"] == text


def test_jpeg_and_pdf_are_binary_too() -> None:
    class Both:
        def _repr_jpeg_(self) -> bytes:
            return b"\xff\xd8jpeg"

        def _repr_pdf_(self) -> bytes:
            return b"%PDF-1.4"

    data = display.bundle(Both(), no_warn)
    assert base64.b64decode(data["image/jpeg"]) == b"\xff\xd8jpeg"
    assert base64.b64decode(data["application/pdf"]) == b"%PDF-1.4"


@pytest.mark.parametrize(
    ("method", "mime", "value"),
    [
        ("_repr_html_", "text/html", "<table></table>"),
        ("_repr_markdown_", "text/markdown", "# title"),
        ("_repr_svg_", "image/svg+xml", '<svg xmlns="http://www.w3.org/2000/svg"/>'),
        ("_repr_latex_", "text/latex", "$x^2$"),
        ("_repr_javascript_", "application/javascript", "console.log(1)"),
    ],
)
def test_one_text_format(method: str, mime: str, value: str) -> None:
    cls = type("One", (), {method: lambda self: value, "__repr__": lambda self: "One()"})
    assert display.bundle(cls(), no_warn) == {mime: value, "text/plain": "One()"}


def test_json_keeps_its_structure() -> None:
    class Doc:
        def _repr_json_(self) -> list[Any]:
            return [1, {"x": 2.5}, "s", True]

    assert display.bundle(Doc(), no_warn)["application/json"] == [1, {"x": 2.5}, "s", True]


def test_a_repr_method_returning_a_tuple_keeps_the_data_only() -> None:
    class WithMetadata:
        def _repr_png_(self) -> tuple[bytes, dict[str, int]]:
            return PNG, {"width": 10}

        def _repr_html_(self) -> tuple[str, dict[str, str]]:
            return "<i>x</i>", {"isolated": "yes"}

    data = display.bundle(WithMetadata(), no_warn)
    assert data["text/html"] == "<i>x</i>"
    assert base64.b64decode(data["image/png"]) == PNG


def test_a_repr_method_returning_none_is_left_out() -> None:
    class Shy:
        def __repr__(self) -> str:
            return "Shy()"

        def _repr_html_(self) -> None:
            return None

    assert display.bundle(Shy(), no_warn) == {"text/plain": "Shy()"}


def test_mimebundle_wins_and_its_binaries_are_encoded() -> None:
    class Bundled:
        def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
            return {
                "text/plain": "custom text",
                "text/html": "<p>from bundle</p>",
                "image/png": PNG,
                "application/json": {"k": 1},
                "text/markdown": None,  # None values are skipped
            }

        def _repr_html_(self) -> str:
            return "<p>from method</p>"

        def _repr_markdown_(self) -> str:
            return "md from method"

    data = display.bundle(Bundled(), no_warn)
    assert data["text/plain"] == "custom text"
    assert data["text/html"] == "<p>from bundle</p>"
    assert base64.b64decode(data["image/png"]) == PNG
    assert data["application/json"] == {"k": 1}
    # a format the bundle did not fill still comes from its method
    assert data["text/markdown"] == "md from method"


def test_mimebundle_returning_data_and_metadata() -> None:
    class Bundled:
        def __repr__(self) -> str:
            return "B()"

        def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
            return {"text/html": "<p>h</p>"}, {"text/html": {"isolated": True}}

    assert display.bundle(Bundled(), no_warn) == {"text/html": "<p>h</p>", "text/plain": "B()"}


def test_a_raising_mimebundle_is_reported_and_the_methods_still_used() -> None:
    class Broken:
        def __repr__(self) -> str:
            return "Broken()"

        def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
            raise RuntimeError("no bundle")

        def _repr_html_(self) -> str:
            return "<p>ok</p>"

    warn = Warnings()
    data = display.bundle(Broken(), warn)
    assert data == {"text/html": "<p>ok</p>", "text/plain": "Broken()"}
    assert [m for m, _ in warn.calls] == ["_repr_mimebundle_"]
    assert isinstance(warn.calls[0][1], RuntimeError)


def test_a_class_object_shows_only_as_text() -> None:
    # The class has the _repr_*_ functions, unbound; calling them would fail or mislead.
    data = display.bundle(Rich, no_warn)
    assert data == {"text/plain": repr(Rich)}


def test_a_class_with_a_mimebundle_shows_only_as_text() -> None:
    class Bundled:
        def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
            return {"text/html": "<p/>"}

    assert display.bundle(Bundled, no_warn) == {"text/plain": repr(Bundled)}


def test_a_raising_repr_warns_and_falls_back_to_a_placeholder() -> None:
    class BadRepr:
        def __repr__(self) -> str:
            raise ValueError("cannot repr")

    warn = Warnings()
    data = display.bundle(BadRepr(), warn)
    assert data == {"text/plain": "<BadRepr object>"}
    assert len(warn.calls) == 1
    method, exc = warn.calls[0]
    assert method == "__repr__"
    assert isinstance(exc, ValueError) and str(exc) == "cannot repr"


def test_a_raising_repr_method_is_skipped_and_reported() -> None:
    class HalfBroken:
        def __repr__(self) -> str:
            return "HalfBroken()"

        def _repr_html_(self) -> str:
            raise KeyError("html")

        def _repr_markdown_(self) -> str:
            return "fine"

    warn = Warnings()
    data = display.bundle(HalfBroken(), warn)
    assert data == {"text/markdown": "fine", "text/plain": "HalfBroken()"}
    assert [m for m, _ in warn.calls] == ["_repr_html_"]


def test_a_getattr_that_raises_does_not_break_the_bundle() -> None:
    class Weird:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(name)

        def __repr__(self) -> str:
            return "Weird()"

    assert display.bundle(Weird(), no_warn) == {"text/plain": "Weird()"}


def test_non_callable_repr_attributes_are_ignored() -> None:
    class Attr:
        _repr_html_ = "<not a method>"

        def __repr__(self) -> str:
            return "Attr()"

    assert display.bundle(Attr(), no_warn) == {"text/plain": "Attr()"}


@pytest.mark.parametrize(
    "value",
    [1, 2.5, "text", None, b"bytes", {"a": 1}, [1, 2], (1,), {1}, frozenset()],
    ids=repr,
)
def test_plain_values_show_as_their_repr(value: Any) -> None:
    assert display.bundle(value, no_warn) == {"text/plain": repr(value)}


def test_long_containers_are_pretty_printed() -> None:
    value = {f"key{i}": list(range(10)) for i in range(10)}
    text = display.bundle(value, no_warn)["text/plain"]
    assert "\n" in text
    assert all(len(line) <= 79 for line in text.splitlines())
    assert eval(text) == value


def test_dict_order_is_kept_not_sorted() -> None:
    value = {"z": 1, "a": 2}
    assert display.bundle(value, no_warn)["text/plain"] == "{'z': 1, 'a': 2}"


# -- splitting a cell ----------------------------------------------------------------------


def run(source: str) -> tuple[dict[str, Any], Any]:
    """Run ``source`` the way the kernel does; return (namespace, trailing value)."""
    body, last = kernel._compile(source, "<cell-test>")
    namespace: dict[str, Any] = {}
    exec(body, namespace)
    value = eval(last, namespace) if last is not None else None
    return namespace, value


def test_trailing_expression_is_split_off() -> None:
    namespace, value = run("x = 20\ny = 2\nx + y")
    assert (namespace["x"], namespace["y"], value) == (20, 2, 22)


def test_no_trailing_expression() -> None:
    body, last = kernel._compile("x = 1", "<cell-test>")
    assert last is None
    namespace: dict[str, Any] = {}
    exec(body, namespace)
    assert namespace["x"] == 1


def test_empty_cell_compiles_to_nothing() -> None:
    for source in ("", "\n\n", "# just a comment\n"):
        _body, last = kernel._compile(source, "<cell-test>")
        assert last is None


def test_only_a_top_level_expression_is_the_result() -> None:
    # the last statement is an if/for/def, not an expression: no result
    for source in ("if True:\n    3\n", "for i in range(2):\n    i\n", "def f():\n    return 1\n"):
        assert kernel._compile(source, "<cell-test>")[1] is None


def test_an_expression_before_the_end_is_only_a_statement() -> None:
    namespace, value = run("1 + 1\nz = 5")
    assert value is None and namespace["z"] == 5


def test_a_call_as_the_last_line_runs_once() -> None:
    namespace, value = run("calls = []\ncalls.append(1)\nlen(calls)")
    assert namespace["calls"] == [1]
    assert value == 1


def test_the_split_keeps_line_numbers_for_tracebacks() -> None:
    _body, last = kernel._compile("a = 1\nb = 2\n1 / 0", "<cell-test>")
    assert last is not None
    with pytest.raises(ZeroDivisionError) as info:
        eval(last, {})
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (frame.filename, frame.lineno) == ("<cell-test>", 3)


def test_top_level_await_compiles_as_a_coroutine() -> None:
    body, last = kernel._compile("import asyncio\nawait asyncio.sleep(0)\n7", "<cell-test>")
    assert body.co_flags & 0x80  # CO_COROUTINE
    assert last is not None and not last.co_flags & 0x80
    _body, last = kernel._compile("import asyncio\nawait asyncio.sleep(0, result=3)", "<c>")
    assert last is not None and last.co_flags & 0x80


def test_syntax_errors_name_the_cell() -> None:
    with pytest.raises(SyntaxError) as info:
        kernel._compile("x = (\n", "<cell-9>")
    assert info.value.filename == "<cell-9>"


@pytest.mark.parametrize(
    ("source", "hidden"),
    [
        ("1 + 1", False),
        ("1 + 1;", True),
        ("1 + 1;\n", True),
        ("1 + 1;  \n\n", True),
        ("1 + 1;  # a comment", True),
        ("1 + 1  # a comment;", False),
        ("'a;b'", False),
        ("'ends with;'", False),
        ("x = 1; x", False),
        ("x = 1;\nx", False),
        ("x = 1\nx;", True),
        ("if True:\n    5;\n", True),
        ("print('a'); print('b')", False),
        ("(1;", False),  # does not tokenize: not hidden, the compile error is reported
        ("", False),
        (";", True),
    ],
)
def test_trailing_semicolon_hides_the_result(source: str, hidden: bool) -> None:
    assert kernel._hides_result(source) is hidden
