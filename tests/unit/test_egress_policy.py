"""The network policy: rule parsing, name matching, the address check and decisions.

Pure code, no network: names are resolved through the policy's ``resolve`` map or a resolver
given to ``decide`` (a plain function returning addresses, standing in for DNS)."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from sandlot.egress.policy import (
    NetworkPolicy,
    check_address,
    decide,
    embedded_ipv4,
    is_public,
    normalise_name,
    parse_address,
    parse_rule,
)

# -- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "name", "network", "port"),
    [
        ("api.example.com", "name", "api.example.com", None, None),
        ("API.Example.COM.", "name", "api.example.com", None, None),
        ("api.example.com:443", "name", "api.example.com", None, 443),
        ("*.example.com", "wildcard", "example.com", None, None),
        ("*.example.co.uk:8443", "wildcard", "example.co.uk", None, 8443),
        ("localhost", "name", "localhost", None, None),
        ("_srv.example.com", "name", "_srv.example.com", None, None),
        ("10.0.0.5", "network", "", "10.0.0.5/32", None),
        ("10.0.0.5:8080", "network", "", "10.0.0.5/32", 8080),
        ("10.0.0.0/8", "network", "", "10.0.0.0/8", None),
        ("10.0.0.0/8:80", "network", "", "10.0.0.0/8", 80),
        ("::1", "network", "", "::1/128", None),
        ("[::1]", "network", "", "::1/128", None),
        ("[::1]:8080", "network", "", "::1/128", 8080),
        ("fd00::/8", "network", "", "fd00::/8", None),
        ("[fd00::/8]:443", "network", "", "fd00::/8", 443),
        ("::ffff:10.0.0.5", "network", "", "10.0.0.5/32", None),  # IPv4-mapped is the IPv4
        ("x.example.com:65535", "name", "x.example.com", None, 65535),
        ("x.example.com:1", "name", "x.example.com", None, 1),
    ],
)
def test_valid_rules(text: str, kind: str, name: str, network: str | None, port: int) -> None:
    rule = parse_rule(text)
    assert rule.text == text
    assert rule.kind == kind
    assert rule.name == name
    assert (str(rule.network) if rule.network else None) == network
    assert rule.port == port


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty rule"),
        ("*", "'*' alone would allow everything"),
        ("*:443", "'*' alone would allow everything"),
        ("*.com", "wildcard over a top-level domain"),
        ("*.COM.", "wildcard over a top-level domain"),
        ("a.*.example.com", "only as a leading '*.'"),
        ("*example.com", "only as a leading '*.'"),
        ("api.example.*", "only as a leading '*.'"),
        ("**.example.com", "only as a leading '*.'"),
        ("api .example.com", "white space"),
        (" api.example.com", "white space"),
        ("https://api.example.com", "not a URL"),
        ("api.example.com/v1", "a path is not part of a rule"),
        ("user@api.example.com", "not a URL"),
        ("api.example.com:0", "port '0' is not a number from 1 to 65535"),
        ("api.example.com:65536", "port '65536'"),
        ("api.example.com:http", "port 'http'"),
        ("api.example.com:", "port ''"),
        ("api.example.com:443:1", "with a port: [::1]:8080"),
        ("-api.example.com", "not a valid host name"),
        ("api-.example.com", "not a valid host name"),
        ("api..example.com", "not a valid host name"),
        ("a" * 64 + ".example.com", "not a valid host name"),
        ("ex!ample.com", "not a valid host name"),
        ("10.0.0.256", "not a valid IPv4 address"),
        ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
        ("10.0.0.0/33", "not a valid IP address or network"),
        ("[::1", "expected [IPv6 address or network]"),
        ("[::1]:99999", "port '99999'"),
        ("[10.0.0.1]", "not an IPv6 address or network"),
        ("fe80::1%eth0", "not a valid IP address or network"),
        ("::1:80x", "not a valid IP address or network"),
    ],
)
def test_invalid_rules_say_which_rule_and_why(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_rule(text)
    assert message in str(caught.value)
    if text:
        assert repr(text) in str(caught.value)


def test_a_policy_names_every_bad_rule() -> None:
    with pytest.raises(ValidationError) as caught:
        NetworkPolicy(allow=["ok.example.com", "*", "https://x.example.com"])
    text = str(caught.value)
    assert "rule '*'" in text and "rule 'https://x.example.com'" in text
    assert "ok.example.com" not in text.split("input_value")[0]


def test_a_policy_refuses_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        NetworkPolicy.model_validate({"allow": [], "deny": ["x.example.com"]})


def test_resolve_map_is_normalised_and_checked() -> None:
    policy = NetworkPolicy(
        allow=["files.test"],
        resolve={"Files.Test.": "127.0.0.1", "two.test": ["[::1]", "::ffff:10.0.0.1"]},
    )
    assert policy.resolve == {"files.test": "127.0.0.1", "two.test": ["::1", "10.0.0.1"]}
    assert policy.pinned("FILES.test.") == ["127.0.0.1"]
    assert policy.pinned("other.test") is None
    with pytest.raises(ValidationError, match=r"'files.test' -> 'localhost' is not an IP"):
        NetworkPolicy(resolve={"files.test": "localhost"})
    with pytest.raises(ValidationError, match=r"'\*.test' is not a valid host name"):
        NetworkPolicy(resolve={"*.test": "10.0.0.1"})
    with pytest.raises(ValidationError, match="needs at least one address"):
        NetworkPolicy(resolve={"files.test": []})


def test_a_policy_survives_a_round_trip_through_json() -> None:
    policy = NetworkPolicy(allow=["*.example.com:443", "[::1]:8080"], resolve={"a.test": "::1"})
    again = NetworkPolicy.model_validate_json(policy.model_dump_json())
    assert again == policy and again.rules == policy.rules
    assert NetworkPolicy().rules == ()


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "host", "port", "matches"),
    [
        ("api.example.com", "api.example.com", 443, True),
        ("api.example.com", "API.EXAMPLE.COM", 80, True),
        ("api.example.com", "api.example.com.", 80, True),
        ("API.example.com.", "api.example.com", 80, True),
        ("api.example.com", "example.com", 443, False),
        ("api.example.com", "x.api.example.com", 443, False),
        ("api.example.com", "api.example.com.evil.test", 443, False),
        ("api.example.com:443", "api.example.com", 443, True),
        ("api.example.com:443", "api.example.com", 80, False),
        ("*.example.com", "a.example.com", 1, True),
        ("*.example.com", "a.b.example.com", 443, True),
        ("*.example.com", "A.Example.Com.", 443, True),
        ("*.example.com", "example.com", 443, False),
        ("*.example.com", "badexample.com", 443, False),
        ("*.example.com", "example.com.evil.test", 443, False),
        ("*.example.com:443", "a.example.com", 443, True),
        ("*.example.com:443", "a.example.com", 8443, False),
        ("10.0.0.0/8", "ten.example.com", 80, False),  # address rules never match names
    ],
)
def test_name_matching(rule: str, host: str, port: int, matches: bool) -> None:
    name = normalise_name(host)
    assert name is not None
    assert parse_rule(rule).matches_name(name, port) is matches


# -- addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "127.0.0.1",
        "127.8.9.10",
        "169.254.169.254",  # cloud metadata
        "169.254.1.1",
        "100.64.0.1",  # carrier-grade NAT
        "100.127.255.254",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",  # multicast
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.0.9",
        "192.0.2.1",
        "198.18.0.1",
        "198.51.100.1",
        "203.0.113.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",  # site-local
        "ff00::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b:1::1",  # local-use NAT64
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2001::1",  # Teredo
        "2001:db8::1",
        "100::1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert is_public(address) is False
    assert is_public(ipaddress.ip_address(address)) is False


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "172.32.0.1",  # just past 172.16/12
        "100.128.0.1",  # just past 100.64/10
        "11.0.0.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001::1",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8
        "2002:808:808::1",  # 6to4 of 8.8.8.8
    ],
)
def test_public_addresses(address: str) -> None:
    assert is_public(address) is True


def test_address_forms() -> None:
    assert parse_address("[::1]") == ipaddress.ip_address("::1")
    assert parse_address("::ffff:127.0.0.1") == ipaddress.ip_address("127.0.0.1")
    assert parse_address("example.com") is None
    assert parse_address("fe80::1%eth0") is None
    assert embedded_ipv4(ipaddress.ip_address("64:ff9b::a00:1")) == ipaddress.ip_address("10.0.0.1")
    assert embedded_ipv4(ipaddress.ip_address("2002:a00:1::")) == ipaddress.ip_address("10.0.0.1")
    assert embedded_ipv4(ipaddress.ip_address("2606:4700::1")) is None
    with pytest.raises(ValueError):
        is_public("not-an-address")


def test_check_address() -> None:
    rules = NetworkPolicy(allow=["127.0.0.1", "10.0.0.0/8:80", "[::1]:8080", "x.test"]).rules
    # Through a name: public addresses pass, others need an address rule (port included).
    assert check_address(rules, "8.8.8.8", 443, via_name=True).allowed
    assert check_address(rules, "127.0.0.1", 5, via_name=True).rule == "127.0.0.1"
    assert check_address(rules, "::ffff:127.0.0.1", 5, via_name=True).rule == "127.0.0.1"
    assert check_address(rules, "10.1.2.3", 80, via_name=True).rule == "10.0.0.0/8:80"
    refused = check_address(rules, "10.1.2.3", 443, via_name=True)
    assert not refused.allowed
    assert refused.reason == "10.1.2.3, a private address no rule names"
    assert check_address(rules, "::1", 8080, via_name=True).allowed
    assert not check_address(rules, "::1", 8081, via_name=True).allowed
    metadata = check_address(rules, "169.254.169.254", 80, via_name=True)
    assert "link-local (cloud metadata)" in metadata.reason
    # An IP literal needs an address rule, even a public one.
    assert not check_address(rules, "8.8.8.8", 443, via_name=False).allowed
    literal = check_address(rules, "169.254.169.254", 80, via_name=False)
    assert (
        literal.reason == "no rule allows 169.254.169.254:80, a link-local (cloud metadata) address"
    )
    assert check_address(rules, "127.0.0.1", 1, via_name=False).allowed
    assert not check_address(rules, "127.0.0.2", 1, via_name=False).allowed
    assert not check_address(rules, "nonsense", 1, via_name=False).allowed


# -- decisions ------------------------------------------------------------------------------


async def test_decide_a_name_through_the_resolve_map() -> None:
    policy = NetworkPolicy(
        allow=["files.test", "127.0.0.1", "evil.test", "public.test:443"],
        resolve={
            "files.test": "127.0.0.1",
            "evil.test": ["10.1.2.3"],
            "public.test": ["10.9.9.9", "93.184.216.34", "93.184.216.34"],
        },
    )
    allowed = await decide(policy, "FILES.test.", 8080)
    assert allowed.allowed and allowed.addresses == ["127.0.0.1"] and allowed.rule == "files.test"

    refused = await decide(policy, "evil.test", 80)
    assert not refused.allowed and refused.addresses == [] and refused.rule is None
    assert refused.reason == "evil.test resolves to 10.1.2.3, a private address no rule names"

    # The private address is dropped, the public one kept (once).
    mixed = await decide(policy, "public.test", 443)
    assert mixed.allowed and mixed.addresses == ["93.184.216.34"]
    assert (await decide(policy, "public.test", 80)).reason == "no rule allows public.test:80"

    unknown = await decide(policy, "other.test", 443)
    assert not unknown.allowed and unknown.reason == "no rule allows other.test:443"


async def test_decide_an_ip_literal() -> None:
    policy = NetworkPolicy(allow=["127.0.0.1:8080", "[::1]", "fd00::/8"])
    assert (await decide(policy, "127.0.0.1", 8080)).addresses == ["127.0.0.1"]
    assert not (await decide(policy, "127.0.0.1", 8081)).allowed
    assert (await decide(policy, "[::1]", 1)).addresses == ["::1"]
    assert (await decide(policy, "::ffff:127.0.0.1", 8080)).addresses == ["127.0.0.1"]
    assert (await decide(policy, "fd00::5", 22)).rule == "fd00::/8"
    public = await decide(policy, "8.8.8.8", 443)
    assert not public.allowed and public.reason == "no rule allows 8.8.8.8:443"
    metadata = await decide(policy, "169.254.169.254", 80)
    assert not metadata.allowed and "169.254.169.254:80" in metadata.reason


async def test_decide_with_a_resolver() -> None:
    calls = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append((host, port))
        if host == "gone.lab.test":
            raise OSError("Name or service not known")
        found = {"pub.lab.test": ["2606:4700::1", "8.8.8.8"], "loop.lab.test": ["127.0.0.1"]}
        return found.get(host, [])

    policy = NetworkPolicy(allow=["*.lab.test", "pinned.test"], resolve={"pinned.test": "1.1.1.1"})
    assert (await decide(policy, "pub.lab.test", 443, resolver=resolver)).addresses == [
        "2606:4700::1",
        "8.8.8.8",
    ]
    loop = await decide(policy, "loop.lab.test", 443, resolver=resolver)
    assert loop.reason == "loop.lab.test resolves to 127.0.0.1, a loopback address no rule names"
    gone = await decide(policy, "gone.lab.test", 443, resolver=resolver)
    assert gone.reason == "gone.lab.test could not be resolved: Name or service not known"
    assert (await decide(policy, "none.lab.test", 443, resolver=resolver)).reason == (
        "none.lab.test resolves to no address"
    )
    # The resolve map wins; names no rule allows are never looked up.
    assert (await decide(policy, "pinned.test", 443, resolver=resolver)).addresses == ["1.1.1.1"]
    await decide(policy, "not-allowed.example", 443, resolver=resolver)
    assert [host for host, _ in calls] == [
        "pub.lab.test",
        "loop.lab.test",
        "gone.lab.test",
        "none.lab.test",
    ]


async def test_decide_refuses_bad_input() -> None:
    policy = NetworkPolicy(allow=["*.example.com"])
    assert "not a valid host name" in (await decide(policy, "bad host", 443)).reason
    assert "not a valid host name" in (await decide(policy, "", 443)).reason
    assert "port out of range" in (await decide(policy, "a.example.com", 0)).reason
    assert "port out of range" in (await decide(policy, "a.example.com", 70000)).reason
    assert not (await decide(NetworkPolicy(), "a.example.com", 443)).allowed
