"""The error tree: stable codes, builtin bases, and rebuilding from the wire by code."""

import pytest

from sandlot import errors


def test_every_code_is_unique_and_registered():
    classes = list(errors.ERRORS_BY_CODE.values())
    assert len({c.code for c in classes}) == len(classes)
    assert errors.ERRORS_BY_CODE["command_timeout"] is errors.CommandTimeoutError


@pytest.mark.parametrize(
    ("code", "builtin"),
    [
        ("command_timeout", TimeoutError),
        ("invalid_argument", ValueError),
        ("file_not_found", FileNotFoundError),
        ("permission_denied", PermissionError),
        ("sandbox_not_found", LookupError),
        ("is_a_directory", IsADirectoryError),
    ],
)
def test_builtins_mixed_in(code, builtin):
    error = errors.from_dict({"code": code, "message": "m"})
    assert isinstance(error, builtin)
    assert isinstance(error, errors.SandlotError)
    assert error.code == code
    assert str(error) == "m"


def test_unknown_code_stays_a_sandlot_error_and_keeps_details():
    error = errors.from_dict({"code": "from_the_future", "message": "hm", "extra": 1})
    assert type(error) is errors.SandlotError
    assert error.details == {"code": "from_the_future", "extra": 1}


def test_malformed_payload_is_a_protocol_error():
    assert isinstance(errors.from_dict(["not", "a", "dict"]), errors.ProtocolError)


def test_timeout_carries_partial_output():
    error = errors.CommandTimeoutError("late", stdout="a", stderr="b")
    assert (error.stdout, error.stderr) == ("a", "b")
    assert error.to_dict()["code"] == "command_timeout"


def test_tree_is_drawn_in_the_docstring():
    for code in errors.ERRORS_BY_CODE:
        assert code in errors.__doc__


def test_every_error_is_exported_from_the_package():
    import sandlot

    for cls in errors.ERRORS_BY_CODE.values():
        assert getattr(sandlot, cls.__name__) is cls
