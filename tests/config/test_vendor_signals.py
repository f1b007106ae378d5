"""``follow`` by a signal's name, ``auth_failures`` and ``refund_on`` in a policy."""

import json
import subprocess
import sys

import jsonschema

from gateway.config.loader import Overrides, load_settings
from gateway.config.vendor_signals import SIGNALS, AuthFailures, Follow
from tests.config.test_loader import problems, write


def load(tmp_path):
    return load_settings(None, {}, Overrides(policies=str(tmp_path / "policies")))


def test_follow_takes_a_signal_by_name_or_the_mapping(tmp_path):
    write(tmp_path, "policies/a.yaml", """
        vendor: a
        upstream: https://a.example
        budgets:
          - {name: daily, limit: 100000, per: 1d, window: rolling, follow: salesforce-daily}
          - name: hourly
            limit: 10
            per: 1h
            follow: {remaining: X-Left, reset: X-Back, reset_unit: epoch}
          - {name: plain, limit: 1, per: 1s}
    """)
    policy = load(tmp_path).policies["a"]
    daily, hourly, plain = policy.budgets
    assert daily.follow == Follow(remaining=None, reset=None, reset_unit="seconds", signal="salesforce-daily")
    assert hourly.follow == Follow(remaining="X-Left", reset="X-Back", reset_unit="epoch", signal=None)
    assert plain.follow is None
    assert policy.signals == {"salesforce-daily"}


def test_an_unknown_signal_names_its_line_and_the_known_ones(tmp_path):
    path = write(tmp_path, "policies/a.yaml", """
        vendor: a
        upstream: https://a.example
        budgets:
          - name: daily
            limit: 10
            per: 1d
            follow: hubspot-weekly
          - {name: b, limit: 1, per: 1s, follow: [ietf]}
          - {name: c, limit: 1, per: 1s, follow: {reset: X-Back}}
    """)
    assert problems(tmp_path) == [
        f"{path}:7: budgets[0].follow: unknown signal 'hubspot-weekly' (known: {', '.join(SIGNALS)})",
        f"{path}:8: budgets[1].follow: expected a mapping, got a list",
        f"{path}:9: budgets[2].follow.remaining: required field is missing",
    ]


def test_auth_failures_and_refund_on_have_their_defaults(tmp_path):
    write(tmp_path, "policies/a.yaml", "vendor: a\nupstream: https://a.example\n")
    write(tmp_path, "policies/b.yaml", """
        vendor: b
        upstream: https://b.example
        auth_failures: {statuses: [401, 403], after: 1, probe_every: 2m}
        refund_on: [429]
    """)
    write(tmp_path, "policies/c.yaml", "vendor: c\nupstream: https://c.example\nauth_failures: {after: 5}\n")
    policies = load(tmp_path).policies
    assert policies["a"].auth_failures == AuthFailures(frozenset({401}), 3, 30.0)
    assert policies["a"].refund_on == frozenset()
    assert policies["b"].auth_failures == AuthFailures(frozenset({401, 403}), 1, 120.0)
    assert policies["b"].refund_on == {429}
    assert policies["c"].auth_failures == AuthFailures(frozenset({401}), 5, 30.0)


def test_auth_failures_out_of_bounds_are_problems(tmp_path):
    path = write(tmp_path, "policies/a.yaml", """
        vendor: a
        upstream: https://a.example
        auth_failures:
          statuses: [401, 429, 503]
          after: 0
          probe_every: 11m
        refund_on: [200]
    """)
    assert problems(tmp_path) == [
        f"{path}:4: auth_failures.statuses[2]: must be at most 499, got 503",
        f"{path}:5: auth_failures.after: must be at least 1, got 0",
        f"{path}:7: refund_on[0]: must be at least 400, got 200",
    ]
    write(tmp_path, "policies/a.yaml", """
        vendor: a
        upstream: https://a.example
        auth_failures: {statuses: [429], probe_every: 11m, colour: red}
    """)
    assert problems(tmp_path) == [
        f"{path}:3: auth_failures.colour: unknown field (expected one of: statuses, after, probe_every)",
    ]
    write(tmp_path, "policies/a.yaml", """
        vendor: a
        upstream: https://a.example
        auth_failures:
          statuses: [429]
          probe_every: 0s
    """)
    assert problems(tmp_path) == [f"{path}:5: auth_failures.probe_every: must be longer than zero"]
    write(tmp_path, "policies/a.yaml", """
        vendor: a
        upstream: https://a.example
        auth_failures:
          statuses: [429]
          probe_every: 11m
    """)
    assert problems(tmp_path) == [
        f"{path}:4: auth_failures.statuses: 429 is the vendor's rate limit, not a refused credential",
        f"{path}:5: auth_failures.probe_every: must be at most 10m (the probe interval doubles up to 10 minutes)",
    ]


def test_the_schema_knows_the_signals_and_the_new_sections():
    printed = subprocess.run([sys.executable, "-m", "gateway", "schema"], capture_output=True, text=True, check=True)
    validator = jsonschema.Draft202012Validator(json.loads(printed.stdout))
    base = {"vendor": "a", "upstream": "https://a.example"}
    for name in SIGNALS:
        assert validator.is_valid({**base, "budgets": [{"name": "b", "limit": 1, "per": "1s", "follow": name}]})
    assert validator.is_valid({**base, "budgets": [{"name": "b", "limit": 1, "per": "1s",
                                                    "follow": {"remaining": "X-Left"}}]})
    assert validator.is_valid({**base, "auth_failures": {"statuses": [401, 403], "after": 1, "probe_every": "1m"},
                               "refund_on": [429]})
    for bad in (
        {"budgets": [{"name": "b", "limit": 1, "per": "1s", "follow": "hubspot-weekly"}]},
        {"budgets": [{"name": "b", "limit": 1, "per": "1s", "follow": {"reset": "X-Back"}}]},
        {"auth_failures": {"after": 0}},
        {"auth_failures": {"statuses": [200]}},
        {"auth_failures": {"probe_every": "soon"}},
        {"refund_on": [200]},
    ):
        assert not validator.is_valid({**base, **bad}), bad
