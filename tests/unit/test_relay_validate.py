"""The relay's validator and whitelist against hostile input (unit and property-based tests).

A request comes from a compute node that may be compromised: nothing it sends may get past
:func:`sandlot.relay.validate.check` unless it is a legitimately safe argument, and whatever
passes renders to an argv where no request-supplied item is an option.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sandlot.errors import InvalidArgumentError
from sandlot.relay.ops import (
    BUILTIN,
    GIT_NAME,
    MAX_ARG_LENGTH,
    MAX_ARGS,
    RELATIVE_PATH,
    Operation,
    Whitelist,
)
from sandlot.relay.validate import Refused, check

SAFE_ARG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*", re.ASCII)

SITE = {
    "echo_all": Operation(
        name="echo_all",
        argv=["echo", "{args}"],
        arg_pattern="[a-z0-9][a-z0-9-]{0,39}",
        max_args=MAX_ARGS,
    ),
    "copy": Operation(
        name="copy",
        argv=["cp", "--", "{0}", "{1:backup}", "{2?}"],
        arg_pattern=RELATIVE_PATH,
        max_args=3,
    ),
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("relay-unit").resolve()
    (root / "home" / "project" / "sub").mkdir(parents=True)
    (root / "home" / "other").mkdir()
    (root / "home" / "file.txt").write_text("x")
    (root / "outside").mkdir()
    (root / "home" / "out-link").symlink_to(root / "outside")
    (root / "home" / "project" / "up-link").symlink_to("../..")
    (root / "home" / "inside-link").symlink_to(root / "home" / "project")
    (root / "home" / "loop").symlink_to(root / "home" / "loop")
    (root / "home" / "dangling").symlink_to(root / "home" / "nowhere")
    return root / "home"


@pytest.fixture(scope="module")
def whitelist(home: Path) -> Whitelist:
    return Whitelist({**BUILTIN, **SITE}, roots=[home], projects=None)


def request(op: Any = "git_pull", args: Any = (), cwd: Any = None, **extra: Any) -> Any:
    body = {"op": op, "args": list(args) if isinstance(args, tuple) else args, **extra}
    if cwd is not None:
        body["cwd"] = cwd
    return body


def refused(body: Any, whitelist: Whitelist) -> str:
    with pytest.raises(Refused) as caught:
        check(body, whitelist)
    return caught.value.rule


def request_items(argv: list[str], operation: Operation) -> list[str]:
    """The items of a rendered argv that are not literal words of the template."""
    literals = [item for item in operation.argv if "{" not in item]
    items = list(argv)
    for word in literals:
        if word in items:
            items.remove(word)
    return items


# -- what passes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "args", "argv"),
    [
        ("git_pull", [], ["git", "pull", "--ff-only"]),
        ("git_pull", ["origin"], ["git", "pull", "--ff-only", "origin"]),
        ("git_pull", ["origin", "main"], ["git", "pull", "--ff-only", "origin", "main"]),
        ("git_push", ["main"], ["git", "push", "origin", "main"]),
        ("git_push", ["feature/x-1.2", "upstream"], ["git", "push", "upstream", "feature/x-1.2"]),
        ("git_fetch", [], ["git", "fetch"]),
        ("git_fetch", ["origin", "main"], ["git", "fetch", "origin", "main"]),
        ("git_status", [], ["git", "status"]),
        ("git_rebase", ["origin/main"], ["git", "rebase", "origin/main"]),
        ("wandb_sync", ["wandb/offline-run-1"], ["wandb", "sync", "wandb/offline-run-1"]),
        ("wandb_sync", ["a", "b/c"], ["wandb", "sync", "a", "b/c"]),
        ("copy", ["a.txt"], ["cp", "--", "a.txt", "backup"]),
        ("copy", ["a.txt", "b"], ["cp", "--", "a.txt", "b"]),
        ("copy", ["a.txt", "b", "c"], ["cp", "--", "a.txt", "b", "c"]),
        ("echo_all", [], ["echo"]),
        ("echo_all", ["x"] * MAX_ARGS, ["echo", *["x"] * MAX_ARGS]),
    ],
)
def test_legitimate_requests_pass(
    whitelist: Whitelist, home: Path, op: str, args: list[str], argv: list[str]
) -> None:
    checked = check(request(op, args, str(home / "project")), whitelist)
    # The git built-ins name the programs on the far side themselves (not the remote's
    # config): those fixed options aside, the argv is exactly this.
    pinned = [a for a in checked.argv if a.startswith(("--upload-pack=", "--receive-pack="))]
    assert pinned == ["--upload-pack=git-upload-pack"] * (op in ("git_pull", "git_fetch")) + [
        "--receive-pack=git-receive-pack"
    ] * (op == "git_push")
    assert [a for a in checked.argv if a not in pinned] == argv
    assert checked.args == args
    assert checked.cwd == home / "project"
    assert checked.operation is whitelist.operations[op]


@pytest.mark.parametrize(
    "cwd",
    ["", "project", "project/sub", "inside-link", "project/sub/../sub", "project/up-link/home"],
)
def test_folders_inside_home_pass(whitelist: Whitelist, home: Path, cwd: str) -> None:
    path = f"{home}/{cwd}" if cwd else str(home)
    checked = check(request("git_status", cwd=path), whitelist)
    resolved = checked.cwd
    assert resolved == Path(path).resolve()
    assert resolved == home or home in resolved.parents


# -- what does not -----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [None, [], "git_pull", 7, 1.5, b"{}", ("git_pull",), True])
def test_a_request_that_is_not_an_object(whitelist: Whitelist, body: Any) -> None:
    assert refused(body, whitelist) == "request"


@pytest.mark.parametrize(
    "op",
    [
        None,
        7,
        ["git_pull"],
        {"git_pull": 1},
        b"git_pull",
        "",
        "GIT_PULL",
        " git_pull",
        "git_pull ",
        "git_pull\0",
        "git_pul\u04cf",  # Cyrillic palochka
        "git_pu\u04cf\u04cf",
        "g\u0456t_pull",  # Cyrillic i
        "git\uff3fpull",  # fullwidth low line
        "git_pull\u200b",  # zero-width space
        "git_pull\u00a0",  # no-break space
        "rm",
        "sh",
        "__class__",
        "git_pull;rm -rf ~",
    ],
)
def test_an_operation_not_in_the_whitelist(whitelist: Whitelist, home: Path, op: Any) -> None:
    assert refused(request(op, [], str(home)), whitelist) == "operation"


@pytest.mark.parametrize(
    "args",
    [
        None,
        "main",
        b"main",
        7,
        {"0": "main"},
        {"main"},
        [None],
        [7],
        [1.5],
        [True],
        [b"main"],
        [["main"]],
        [{"branch": "main"}],
        ["main", None],
        ["main", ["--force"]],
    ],
)
def test_arguments_of_the_wrong_type(whitelist: Whitelist, home: Path, args: Any) -> None:
    assert refused(request("git_push", args, str(home)), whitelist) == "args_type"


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("git_push", []),
        ("git_push", ["main", "origin", "x"]),
        ("git_status", ["x"]),
        ("git_rebase", []),
        ("git_pull", ["a", "b", "c"]),
        ("echo_all", ["x"] * (MAX_ARGS + 1)),
        ("git_pull", ["x"] * 10_000),
        ("copy", []),
    ],
)
def test_the_wrong_number_of_arguments(
    whitelist: Whitelist, home: Path, op: str, args: list[str]
) -> None:
    assert refused(request(op, args, str(home)), whitelist) == "args_count"


HOSTILE_ARGS = [
    "",
    "-",
    "-f",
    "--force",
    "--upload-pack=touch /tmp/x",
    "--exec=sh",
    "-oProxyCommand=sh",
    "+main",
    ":main",
    "main:main",
    "main:refs/heads/x",
    "+refs/heads/*:refs/heads/*",
    "..",
    "../x",
    "a/../../b",
    "a..b",
    "main..origin/main",
    "a//b",
    "/etc/passwd",
    "/",
    "~",
    "~/x",
    "HEAD~1",
    "HEAD^",
    "HEAD@{1}",
    "@{upstream}",
    "main;rm -rf ~",
    "main && id",
    "main || id",
    "main | id",
    "$(id)",
    "${HOME}",
    "`id`",
    "main > /tmp/x",
    "main < /etc/passwd",
    "main\nid",
    "main\rid",
    "main\tid",
    "main id",
    "'main'",
    '"main"',
    "main\\",
    "ma*",
    "ma?n",
    "[m]ain",
    "main!",
    "main#",
    "main%",
    "ext::sh -c id",
    "file:///etc",
    "\uff0d\uff0dforce",  # fullwidth hyphen-minus
    "\u2010\u2010force",  # hyphen
    "\u2212force",  # minus sign
    "\u2013force",  # en dash
    "m\u0430in",  # Cyrillic a
    "\u043ca\u0456n",  # Cyrillic em, i
    "main\u00a0x",  # no-break space
    "ma\u200bin",  # zero-width space
    "ma\u200din",  # zero-width joiner
    "main\u2028",  # line separator
    "\ufeffmain",  # byte order mark
    "\uff4d\uff41\uff49\uff4e",  # fullwidth letters
    "mai\u0301n",  # combining accent
    "main\udc80",  # lone surrogate
    "٣",  # Arabic-Indic digit (\d without re.ASCII)
    "ᴍain",
]


FINE_RELATIVE_PATHS = {"a//b", "a..b", "main..origin/main"}


@pytest.mark.parametrize("arg", HOSTILE_ARGS)
@pytest.mark.parametrize("op", ["git_push", "git_rebase", "git_pull", "wandb_sync"])
def test_hostile_arguments_are_refused(whitelist: Whitelist, home: Path, op: str, arg: str) -> None:
    if op == "wandb_sync" and arg in FINE_RELATIVE_PATHS:
        pytest.skip(f"{arg!r} is a harmless relative path")
    assert refused(request(op, [arg], str(home)), whitelist) == "arg_pattern"


@pytest.mark.parametrize("op", ["git_push", "wandb_sync", "echo_all"])
def test_nul_and_length(whitelist: Whitelist, home: Path, op: str) -> None:
    assert refused(request(op, ["ma\0in"], str(home)), whitelist) == "arg_nul"
    assert refused(request(op, ["\0"], str(home)), whitelist) == "arg_nul"
    assert refused(request(op, ["a" * (MAX_ARG_LENGTH + 1)], str(home)), whitelist) == "arg_length"
    assert refused(request(op, ["a" * 10_000_000], str(home)), whitelist) == "arg_length"


def test_a_later_bad_argument_refuses_the_whole_request(whitelist: Whitelist, home: Path) -> None:
    assert refused(request("git_push", ["main", "--force"], str(home)), whitelist) == "arg_pattern"
    assert refused(request("echo_all", ["ok"] * 5 + ["-n"], str(home)), whitelist) == "arg_pattern"


@pytest.mark.parametrize(
    ("cwd", "rule"),
    [
        (None, "cwd_missing"),
        ("", "cwd_missing"),
        (7, "cwd_missing"),
        (["/"], "cwd_missing"),
        ({"path": "/"}, "cwd_missing"),
        (b"/tmp", "cwd_missing"),
        ("relative/project", "cwd_invalid"),
        ("project", "cwd_invalid"),
        ("~/project", "cwd_invalid"),
        ("HOME/project\0/x", "cwd_invalid"),
        ("/" + "a" * 5000, "cwd_invalid"),
        ("/", "cwd_outside"),
        ("/etc", "cwd_outside"),
        ("/tmp", "cwd_outside"),
        ("HOME/..", "cwd_outside"),
        ("HOME/../outside", "cwd_outside"),
        ("HOME/project/../../outside", "cwd_outside"),
        ("HOME/out-link", "cwd_outside"),
        ("HOME/project/up-link", "cwd_outside"),
        ("HOME/project/up-link/outside", "cwd_outside"),
        ("HOME/missing", "cwd_not_found"),
        ("HOME/loop", "cwd_not_found"),
        ("HOME/dangling", "cwd_not_found"),
        ("HOME/file.txt", "cwd_not_found"),
        ("HOME/file.txt/x", "cwd_not_found"),
    ],
)
def test_cwd_refusals(whitelist: Whitelist, home: Path, cwd: Any, rule: str) -> None:
    if isinstance(cwd, str):
        cwd = cwd.replace("HOME", str(home))
    body = {"op": "git_status", "args": []}
    if cwd is not None:
        body["cwd"] = cwd
    assert refused(body, whitelist) == rule


def test_lone_surrogate_in_cwd_is_refused_not_raised(whitelist: Whitelist, home: Path) -> None:
    """JSON may carry "\\ud800"; the validator must refuse it, not crash the daemon."""
    assert refused(request("git_status", [], f"{home}/project\ud800"), whitelist).startswith("cwd")


def test_the_projects_allowlist(home: Path) -> None:
    only = Whitelist(dict(BUILTIN), roots=[home], projects=[home / "project"])
    assert check(request("git_status", [], str(home / "project" / "sub")), only)
    assert check(request("git_status", [], str(home / "inside-link")), only)
    assert refused(request("git_status", [], str(home / "other")), only) == "cwd_not_project"
    assert refused(request("git_status", [], str(home)), only) == "cwd_not_project"
    # Outside the roots is refused first, as outside.
    outside = str(home.parent / "outside")
    assert refused(request("git_status", [], outside), only) == "cwd_outside"


def test_extra_fields_cannot_widen_anything(whitelist: Whitelist, home: Path) -> None:
    body = request(
        "git_push",
        ["main"],
        str(home),
        argv=["sh", "-c", "id"],
        env={"GIT_SSH_COMMAND": "sh"},
        timeout=10**9,
        consent=False,
        arg_pattern=".*",
    )
    checked = check(body, whitelist)
    assert checked.argv == BUILTIN["git_push"].render(["main"])
    assert checked.argv[0] == "git" and checked.argv[-2:] == ["origin", "main"]
    assert checked.operation is BUILTIN["git_push"]


def test_refused_names_its_rule_and_a_bounded_message(whitelist: Whitelist, home: Path) -> None:
    with pytest.raises(Refused) as caught:
        check(request("x" * 100_000, [], str(home)), whitelist)
    assert caught.value.rule == "operation"
    assert len(caught.value.message) < 200
    with pytest.raises(Refused) as caught:
        check(request("git_push", ["-" * 256], str(home)), whitelist)
    assert len(caught.value.message) < 300


# -- property-based ----------------------------------------------------------------------------

HOSTILE_ALPHABET = st.sampled_from(
    [
        *"-+:;.$`|&<>()'\"\\ \t\n\r~^@{}*?[]!#%=,/_aZ09",
        "\0",
        "\u2010",
        "\u2212",
        "\uff0d",
        "\u00a0",
        "\u200b",
        "\u200d",
        "\ufeff",
        "\u0430",  # Cyrillic a
        "\u0435",  # Cyrillic e
        "\u043e",  # Cyrillic o
        "\u0456",  # Cyrillic i
        "\uff41",  # fullwidth a
        "\u0661",  # Arabic-Indic one
        "\u212a",  # Kelvin sign (case-folds to K)
        "\u0131",  # dotless i
        "\udc80",
    ]
)
hostile_text = st.text(alphabet=HOSTILE_ALPHABET, max_size=40) | st.text(max_size=40)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)
OPS = sorted({*BUILTIN, *SITE})


def assert_safe(checked: Any, body: dict[str, Any], home: Path) -> None:
    """What every request that passes must satisfy."""
    operation = checked.operation
    assert checked.argv[0] == operation.argv[0]
    assert len(checked.args) <= operation.max_args <= MAX_ARGS
    for arg in checked.args:
        assert SAFE_ARG.fullmatch(arg), arg
        assert arg.isascii() and not arg.startswith(("-", "+", "/")) and "\0" not in arg
        assert len(arg) <= MAX_ARG_LENGTH
        assert ".." not in arg.split("/")
    for item in request_items(checked.argv, operation):
        assert not item.startswith("-"), (item, checked.argv)
    assert checked.argv == operation.render(checked.args)
    assert checked.cwd == home or home in checked.cwd.parents


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(OPS), args=st.lists(hostile_text, max_size=6))
def test_hostile_arguments_never_pass_unsafe(
    whitelist: Whitelist, home: Path, op: str, args: list[str]
) -> None:
    body = request(op, args, str(home / "project"))
    try:
        checked = check(body, whitelist)
    except Refused as refusal:
        assert refusal.rule in {"args_count", "arg_length", "arg_nul", "arg_pattern"}
        return
    assert_safe(checked, body, home)


@settings(max_examples=300, deadline=None)
@given(
    op=st.sampled_from(["git_push", "git_pull", "git_rebase", "git_fetch"]),
    args=st.lists(st.from_regex(GIT_NAME, fullmatch=True), min_size=1, max_size=2),
)
def test_safe_git_names_pass_and_render_in_place(
    whitelist: Whitelist, home: Path, op: str, args: list[str]
) -> None:
    operation = whitelist.operations[op]
    assume(operation.min_args <= len(args) <= operation.max_args)
    checked = check(request(op, args, str(home)), whitelist)
    assert_safe(checked, {}, home)
    if op == "git_push":
        remote = args[1] if len(args) > 1 else "origin"
        assert checked.argv[-2:] == [remote, args[0]]


@settings(max_examples=300, deadline=None)
@given(body=json_values)
def test_any_json_value_is_refused_or_safe(whitelist: Whitelist, home: Path, body: Any) -> None:
    try:
        checked = check(body, whitelist)
    except Refused:
        return
    assert_safe(checked, body, home)


@settings(max_examples=300, deadline=None)
@given(
    op=st.sampled_from(OPS) | json_values,
    args=json_values | st.lists(hostile_text | json_values, max_size=4),
    cwd=json_values | hostile_text,
)
def test_wrong_types_in_every_field_are_refused(
    whitelist: Whitelist, home: Path, op: Any, args: Any, cwd: Any
) -> None:
    """Never an exception other than Refused; never a pass with a non-string argument."""
    try:
        checked = check({"op": op, "args": args, "cwd": cwd}, whitelist)
    except Refused:
        return
    assert all(isinstance(a, str) for a in args)
    assert_safe(checked, {}, home)


PATH_PARTS = st.sampled_from(
    ["..", ".", "project", "sub", "out-link", "up-link", "inside-link", "loop", "", "outside"]
)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(PATH_PARTS, max_size=8), start=st.sampled_from(["HOME", "ROOT", "/"]))
def test_cwd_never_resolves_outside_home(
    whitelist: Whitelist, home: Path, parts: list[str], start: str
) -> None:
    base = {"HOME": str(home), "ROOT": str(home.parent), "/": ""}[start]
    cwd = base + "/" + "/".join(parts)
    try:
        checked = check(request("git_status", [], cwd), whitelist)
    except Refused as refusal:
        assert refusal.rule in {"cwd_outside", "cwd_not_found", "cwd_invalid", "cwd_missing"}
        return
    assert checked.cwd == Path(cwd).resolve()
    assert checked.cwd == home or home in checked.cwd.parents


@settings(max_examples=200, deadline=None)
@given(cwd=hostile_text)
def test_hostile_cwd_strings_are_refused_not_raised(
    whitelist: Whitelist, home: Path, cwd: str
) -> None:
    for candidate in (cwd, f"{home}/{cwd}"):
        try:
            checked = check(request("git_status", [], candidate), whitelist)
        except Refused:
            continue
        assert checked.cwd == home or home in checked.cwd.parents


# -- Operation: placeholders and templates -----------------------------------------------------


def test_placeholders_render() -> None:
    op = Operation(name="t", argv=["prog", "lit", "{0}", "{1:dflt}", "{2?}", "end"], max_args=3)
    assert op.min_args == 1
    assert op.render(["a"]) == ["prog", "lit", "a", "dflt", "end"]
    assert op.render(["a", "b"]) == ["prog", "lit", "a", "b", "end"]
    assert op.render(["a", "b", "c"]) == ["prog", "lit", "a", "b", "c", "end"]
    with pytest.raises(ValueError):
        op.render([])
    every = Operation(name="e", argv=["prog", "--", "{args}", "tail"], max_args=4)
    assert every.min_args == 0
    assert every.render([]) == ["prog", "--", "tail"]
    assert every.render(["a", "b"]) == ["prog", "--", "a", "b", "tail"]
    reordered = Operation(name="r", argv=["prog", "{1:origin}", "{0}"], max_args=2)
    assert reordered.min_args == 1
    assert reordered.render(["main"]) == ["prog", "origin", "main"]
    assert reordered.render(["main", "up"]) == ["prog", "up", "main"]
    required_second = Operation(name="s", argv=["prog", "{0?}", "{1}"], max_args=2)
    assert required_second.min_args == 2
    fixed = Operation(name="f", argv=["prog", "status"])
    assert fixed.min_args == 0 and fixed.render([]) == ["prog", "status"]


@settings(max_examples=200, deadline=None)
@given(args=st.lists(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), max_size=4))
def test_render_places_every_argument_once(args: list[str]) -> None:
    op = Operation(
        name="p",
        argv=["prog", "{0:zz}", "x", "{1?}", "{2?}", "{3:yy}"],
        arg_pattern="[a-z0-9]+",
        max_args=4,
    )
    rendered = op.render(args)
    expected = ["prog", args[0] if args else "zz", "x", *args[1:3]]
    expected.append(args[3] if len(args) > 3 else "yy")
    assert rendered == expected


def test_builtin_invariants() -> None:
    assert set(BUILTIN) == {
        "git_pull",
        "git_push",
        "git_fetch",
        "git_status",
        "git_rebase",
        "wandb_sync",
    }
    assert BUILTIN["git_pull"].argv[:3] == ["git", "pull", "--ff-only"]
    assert BUILTIN["git_push"].min_args == 1
    assert BUILTIN["wandb_sync"].consent and not any(
        op.consent for name, op in BUILTIN.items() if name != "wandb_sync"
    )
    for op in BUILTIN.values():
        assert op.max_args <= MAX_ARGS
        assert not re.fullmatch(op.arg_pattern, "-x", re.ASCII)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"argv": []}, "argv"),
        ({"argv": ["{0}"], "max_args": 1}, "argv[0]"),
        ({"argv": ["{args}"], "max_args": 1}, "argv[0]"),
        ({"argv": [""]}, "argv[0]"),
        ({"argv": ["prog", "x{0}"], "max_args": 1}, "whole item"),
        ({"argv": ["prog", "{0}x"], "max_args": 1}, "whole item"),
        ({"argv": ["prog", "{"]}, "whole item"),
        ({"argv": ["prog", "}"]}, "whole item"),
        ({"argv": ["prog", "{-1}"], "max_args": 1}, "whole item"),
        ({"argv": ["prog", "{name}"], "max_args": 1}, "whole item"),
        ({"argv": ["prog", "{0}"]}, "max_args"),
        ({"argv": ["prog", "{1}"], "max_args": 1}, "max_args"),
        ({"argv": ["prog", "{0:--force}"], "max_args": 1}, "default"),
        ({"argv": ["prog", "{0:a b}"], "max_args": 1}, "default"),
        ({"argv": ["prog", "{args}", "{0}"], "max_args": 2}, "mixes"),
        ({"argv": ["prog"], "max_args": 1}, "placeholder"),
        ({"argv": ["prog"], "arg_pattern": "("}, "regular expression"),
        ({"argv": ["prog"], "arg_pattern": "[z-a]"}, "regular expression"),
        ({"argv": ["prog", "{args}"], "max_args": MAX_ARGS + 1}, "max_args"),
        ({"argv": ["prog"], "max_args": -1}, "max_args"),
        ({"argv": ["prog"], "timeout": 0}, "timeout"),
        ({"argv": ["prog"], "timeout": -5}, "timeout"),
        ({"argv": ["prog"], "timeout": 10**9}, "timeout"),
        ({"argv": ["prog"], "shell": True}, "shell"),
        ({"argv": "prog {0}"}, "argv"),
        ({"argv": ["prog", 7]}, "argv"),
    ],
)
def test_operation_rejects_bad_templates(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        Operation.model_validate({"name": "bad", **fields})
    assert fragment in str(caught.value)


@pytest.mark.parametrize("name", ["", "Bad", "1op", "op-name", "op name", "o" * 65, "\u043e\u0440"])
def test_operation_names(name: str) -> None:
    with pytest.raises(ValueError):
        Operation(name=name, argv=["prog"])


def test_operation_is_frozen() -> None:
    op = Operation(name="x", argv=["prog"])
    with pytest.raises(ValueError):
        op.argv = ["sh"]  # type: ignore[misc]


# -- Whitelist.load ---------------------------------------------------------------------------


def load(tmp_path: Path, text: str) -> Whitelist:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    (tmp_path / "home").mkdir(exist_ok=True)
    return Whitelist.load(path, tmp_path / "home")


def test_load_without_a_file_is_the_builtins(tmp_path: Path) -> None:
    loaded = Whitelist.load(None, tmp_path)
    assert loaded.operations == BUILTIN
    assert loaded.roots == [tmp_path.resolve()]
    assert loaded.projects is None


def test_load_a_site_config(tmp_path: Path) -> None:
    (tmp_path / "scratch").mkdir()
    (tmp_path / "home" / "proj").mkdir(parents=True)
    loaded = load(
        tmp_path,
        f"""
disable = ["wandb_sync"]
roots = ["{tmp_path / "scratch"}"]
projects = ["~/proj"]

[operations.say]
argv = ["echo", "{{args}}"]
arg_pattern = "[a-z]+"
max_args = 3
consent = true
timeout = 10
""",
    )
    assert "wandb_sync" not in loaded.operations
    say = loaded.operations["say"]
    assert say.consent and say.timeout == 10 and say.name == "say"
    assert loaded.roots == [(tmp_path / "home").resolve(), (tmp_path / "scratch").resolve()]
    assert loaded.projects == [(tmp_path / "home" / "proj").resolve()]


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('[operations.tidy]\nargv = ["echo"]\ncolour = "red"\n', ["'tidy'", "colour"]),
        ('[operations.g]\nargv = ["echo", "{0}"]\nmax_args = 1\narg_pattern = "("\n', ["'g'"]),
        ('[operations.far]\nargv = ["echo", "{3}"]\nmax_args = 2\n', ["'far'", "{3}"]),
        ('[operations.git_pull]\nargv = ["echo"]\n', ["'git_pull'", "built in"]),
        ('[operations.Bad-Name]\nargv = ["echo"]\n', ["Bad-Name"]),
        ("[operations.noargv]\nmax_args = 0\n", ["'noargv'", "argv"]),
        ('disable = ["git_teleport"]\n', ["git_teleport"]),
        ('roots = ["relative"]\n', ["relative", "absolute"]),
        ('roots = ["/no/such/folder/anywhere"]\n', ["/no/such/folder/anywhere"]),
        ('projects = ["relative"]\n', ["relative"]),
        ("unknown_key = 1\n", ["unknown_key"]),
        ("operations = [", ["not TOML"]),
    ],
)
def test_load_refuses_bad_configs_naming_the_entry(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        load(tmp_path, text)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_load_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        Whitelist.load(tmp_path / "absent.toml", tmp_path)


def test_a_disabled_builtin_can_be_replaced_under_a_new_name(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        'disable = ["git_pull"]\n[operations.git_pull_rebase]\n'
        'argv = ["git", "pull", "--rebase", "{0?}"]\nmax_args = 1\n',
    )
    assert "git_pull" not in loaded.operations
    assert loaded.operations["git_pull_rebase"].render([]) == ["git", "pull", "--rebase"]


def test_a_permissive_site_pattern_still_refuses_options(home: Path) -> None:
    """A site operation whose pattern lets '-' through: the argument is still not an option,
    unless the operation declares ``allow_options``."""
    loose = Operation(
        name="say", argv=["echo", "{args}"], arg_pattern=r"[a-z0-9-]{1,40}", max_args=2
    )
    wl = Whitelist({"say": loose}, roots=[home], projects=None)
    body = request("say", ["-n", "x"], cwd=str(home))
    assert refused(body, wl) == "arg_option"
    assert check(request("say", ["a-b"], cwd=str(home)), wl).argv == ["echo", "a-b"]
    opted = Operation(
        name="say",
        argv=["echo", "{args}"],
        arg_pattern=r"[a-z0-9-]{1,40}",
        max_args=2,
        allow_options=True,
    )
    wl = Whitelist({"say": opted}, roots=[home], projects=None)
    assert check(body, wl).argv == ["echo", "-n", "x"]
