"""A caller's `vendors: "*"` (or `["*"]`) lets it use every vendor, as CONTRACT.md says;
any other list keeps it to the vendors named."""

import pytest

from gateway.errors import ConfigError

ENV = {"ALL_KEY": "all-key-1", "LIST_KEY": "list-key-2", "ONE_KEY": "one-key-3"}


@pytest.mark.parametrize("everything", ["*", ["*"]])
async def test_a_caller_with_vendors_star_may_use_every_vendor(gateway, vendor, everything):
    client = await gateway(
        {"vendor": "v", "upstream": vendor.url},
        {"vendor": "w", "upstream": vendor.url},
        config={"callers": [
            {"name": "all", "key": "${ALL_KEY}", "vendors": everything},
            {"name": "one", "key": "${ONE_KEY}", "vendors": ["w"]},
        ]},
        env=ENV,
    )
    for prefix in ("/v/x", "/w/x"):
        assert (await client.get(prefix, headers={"X-Gateway-Key": "all-key-1"})).status == 200
    assert (await client.get("/w/x", headers={"X-Gateway-Key": "one-key-3"})).status == 200
    refused = await client.get("/v/x", headers={"X-Gateway-Key": "one-key-3"})
    assert refused.status == 403 and (await refused.json())["type"] == "forbidden"
    assert len(vendor.received) == 3


def test_vendors_as_some_other_string_is_a_problem(settings_from):
    with pytest.raises(ConfigError) as info:
        settings_from(
            {"vendor": "v", "upstream": "https://v.example"},
            config={"callers": [{"name": "c", "key": "${ALL_KEY}", "vendors": "v"}]},
            env=ENV,
        )
    [problem] = info.value.problems
    assert (problem.field, problem.message) == ("callers[0].vendors", 'expected a list, or "*" for all, got \'v\'')
