"""The vendors' own signals, read from real answer shapes into our budgets' terms."""

import json

import pytest
from multidict import CIMultiDict

from gateway.config.vendor_signals import SIGNALS, Follow
from gateway.core.budget import BUCKET, FIXED, ROLLING, Adjustment, BudgetState, Charge, adjust, level
from gateway.core.signals import (
    BudgetWindow,
    Reading,
    combine,
    is_quota_refusal,
    read,
    read_follow,
    refusal_body_size,
    smaller_limit,
)
from gateway.core.structured import parse_list

NOW = 1_800_000_000.0
TEN_S = BudgetWindow(ROLLING, 10.0, 1, 10.0)
DAILY_ROLLING = BudgetWindow(ROLLING, 86400.0, 1, 86000.0)
DAILY_FIXED = BudgetWindow(FIXED, 86400.0, 1, 7200.0)
HUBSPOT_DAILY_429 = json.dumps({
    "status": "error", "message": "You have reached your daily limit.", "errorType": "RATE_LIMIT",
    "correlationId": "c0ffee00-0000-4000-8000-000000000000", "policyName": "DAILY", "groupName": "api-calls",
}).encode()
HUBSPOT_INTERVAL_429 = json.dumps({
    "status": "error", "message": "You have reached your ten_secondly_rolling limit.", "errorType": "RATE_LIMIT",
    "policyName": "TEN_SECONDLY_ROLLING",
}).encode()
SALESFORCE_403 = b'[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]'
SALESFORCE_CONCURRENT = b'[{"message":"ConcurrentPerOrgLongTxn Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]'


def headers(*pairs):
    return CIMultiDict(pairs)


# (signal, status, headers, body, budget) -> the Reading.
TABLE = [
    # IETF draft-10: one policy.
    ("ietf", 200, headers(("RateLimit", '"default";r=0;t=5'), ("RateLimit-Policy", '"default";q=100;w=10')), b"",
     TEN_S, Reading(remaining=0, reset=5, limit=100, window=10)),
    ("ietf", 200, headers(("RateLimit", '"default";r=50;t=30')), b"", TEN_S, Reading(remaining=50, reset=30)),
    # Several policies: the one over the budget's span wins, even when another is tighter.
    ("ietf", 200, headers(("ratelimit", '"burst";r=3;t=2, "daily";r=900;t=40000'),
                          ("ratelimit-policy", '"burst";q=10;w=10, "daily";q=1000;w=86400')), b"",
     DAILY_ROLLING, Reading(remaining=900, reset=40000, limit=1000, window=86400)),
    # ... sent as separate field lines, and no policy over the budget's span: the tightest.
    ("ietf", 200, headers(("RateLimit", '"burst";r=3;t=2'), ("RateLimit", '"daily";r=900;t=40000'),
                          ("RateLimit-Policy", '"burst";q=10;w=10'), ("RateLimit-Policy", '"daily";q=1000;w=86400')),
     b"", BudgetWindow(BUCKET, 60.0, 1, 0.0), Reading(remaining=3, reset=2, limit=10, window=10)),
    # A policy counting bytes is not ours.
    ("ietf", 200, headers(("RateLimit", '"bytes";r=0;t=9, "req";r=7;t=3'),
                          ("RateLimit-Policy", '"bytes";q=1000;w=10;qu="content-bytes", "req";q=10;w=10')), b"",
     TEN_S, Reading(remaining=7, reset=3, limit=10, window=10)),
    # The older drafts' fields.
    ("ietf", 200, headers(("RateLimit-Limit", "100"), ("RateLimit-Remaining", "42"), ("RateLimit-Reset", "7")), b"",
     TEN_S, Reading(remaining=42, reset=7, limit=100)),
    ("ietf", 200, headers(("RateLimit-Limit", "10, 10;w=1, 1000;w=3600"), ("RateLimit-Remaining", "4"),
                          ("RateLimit-Reset", "1")), b"", TEN_S, Reading(remaining=4, reset=1, limit=10, window=1)),
    # Broken structured fields say nothing (then the older fields are read).
    ("ietf", 200, headers(("RateLimit", '"default";r=;t=5'), ("RateLimit-Remaining", "9")), b"", TEN_S,
     Reading(remaining=9)),
    ("ietf", 200, headers(("RateLimit", '"default";r=-1;t=5')), b"", TEN_S, Reading()),
    ("ietf", 200, headers(("RateLimit", '"default";r=1;t=5,')), b"", TEN_S, Reading()),
    ("x-ratelimit", 200, headers(("X-RateLimit-Limit", "10000"), ("X-RateLimit-Remaining", "9321"),
                                 ("X-RateLimit-Reset", "1800")), b"", TEN_S, Reading(remaining=9321, reset=1800, limit=10000)),
    # A Unix time where seconds were expected (GitHub, Outreach): read as one.
    ("x-ratelimit", 200, headers(("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", str(int(NOW) + 120))), b"",
     TEN_S, Reading(remaining=0, reset=120)),
    ("x-ratelimit", 200, headers(("X-RateLimit-Remaining", "lots"), ("X-RateLimit-Reset", "nan"),
                                 ("X-RateLimit-Limit", "1e400")), b"", TEN_S, Reading()),
    ("hubspot-interval", 200, headers(("X-HubSpot-RateLimit-Interval-Milliseconds", "10000"),
                                      ("X-HubSpot-RateLimit-Max", "190"), ("X-HubSpot-RateLimit-Remaining", "187"),
                                      ("X-HubSpot-RateLimit-Secondly", "19"),
                                      ("X-HubSpot-RateLimit-Secondly-Remaining", "18")), b"",
     TEN_S, Reading(remaining=187, reset=10, limit=190, window=10)),
    ("hubspot-interval", 429, headers(("X-HubSpot-RateLimit-Interval-Milliseconds", "10000"),
                                      ("X-HubSpot-RateLimit-Max", "100"), ("X-HubSpot-RateLimit-Remaining", "0")),
     HUBSPOT_INTERVAL_429, TEN_S, Reading(remaining=0, reset=10, limit=100, window=10)),
    ("hubspot-secondly", 200, headers(("X-HubSpot-RateLimit-Secondly", "19"),
                                      ("X-HubSpot-RateLimit-Secondly-Remaining", "18")), b"",
     TEN_S, Reading(remaining=18, reset=1, limit=19, window=1)),
    ("hubspot-daily", 200, headers(("X-HubSpot-RateLimit-Daily", "250000"),
                                   ("X-HubSpot-RateLimit-Daily-Remaining", "249000")), b"",
     DAILY_ROLLING, Reading(remaining=249000, limit=250000, window=86400)),
    # OAuth calls carry no daily headers: nothing said.
    ("hubspot-daily", 200, headers(("X-HubSpot-RateLimit-Remaining", "99")), b"", DAILY_ROLLING, Reading()),
    # Spent: nothing goes before the budget's reset (a fixed window: its end).
    ("hubspot-daily", 200, headers(("X-HubSpot-RateLimit-Daily-Remaining", "0")), b"", DAILY_FIXED,
     Reading(remaining=0, reset=7200)),
    # The daily refusal: paused until the budget's reset, a rolling one's too.
    ("hubspot-daily", 429, headers(), HUBSPOT_DAILY_429, DAILY_FIXED, Reading(reset=7200, pause=7200, refused=True)),
    ("hubspot-daily", 429, headers(), HUBSPOT_DAILY_429, DAILY_ROLLING, Reading(reset=86000, pause=86000, refused=True)),
    ("hubspot-daily", 429, headers(), HUBSPOT_DAILY_429, BudgetWindow(BUCKET, 86400.0, 1, 0.5),
     Reading(reset=60, pause=60, refused=True)),
    # A body cut short still names its policy; another limit's 429 is not the daily refusal.
    ("hubspot-daily", 429, headers(), HUBSPOT_DAILY_429[:-20], DAILY_ROLLING,
     Reading(reset=86000, pause=86000, refused=True)),
    ("hubspot-daily", 429, headers(), HUBSPOT_INTERVAL_429, DAILY_ROLLING, Reading()),
    ("hubspot-daily", 200, headers(), HUBSPOT_DAILY_429, DAILY_ROLLING, Reading()),
    ("salesforce-daily", 200, headers(("Sforce-Limit-Info", "api-usage=10018/100000")), b"", DAILY_ROLLING,
     Reading(remaining=89982, limit=100000, window=86400)),
    ("salesforce-daily", 200, headers(("Sforce-Limit-Info", "api-usage=99998/100000; api-bursts=3/50")), b"",
     DAILY_ROLLING, Reading(remaining=2, limit=100000, window=86400)),
    ("salesforce-daily", 200, headers(("Sforce-Limit-Info", "per-app-api-usage=17/250(appName=x); api-usage=25/5000")),
     b"", DAILY_ROLLING, Reading(remaining=4975, limit=5000, window=86400)),
    ("salesforce-daily", 200, headers(("Sforce-Limit-Info", "api-usage=100002/100000")), b"", DAILY_ROLLING,
     Reading(remaining=0, reset=3600, limit=100000, window=86400)),
    ("salesforce-daily", 200, headers(("Sforce-Limit-Info", "api-usage=12/0")), b"", DAILY_ROLLING, Reading()),
    ("salesforce-daily", 200, headers(("Sforce-Limit-Info", "api-usage=a/b")), b"", DAILY_ROLLING, Reading()),
    # Over the limit: 403 REQUEST_LIMIT_EXCEEDED pauses a rolling quota an hour, a fixed one to its end.
    ("salesforce-daily", 403, headers(("Sforce-Limit-Info", "api-usage=100000/100000")), SALESFORCE_403,
     DAILY_ROLLING, Reading(remaining=0, reset=3600, pause=3600, limit=100000, window=86400, refused=True)),
    ("salesforce-daily", 403, headers(), SALESFORCE_403, DAILY_FIXED, Reading(reset=7200, pause=7200, refused=True)),
    # The concurrent long-running limit is a quota too, but not the daily one.
    ("salesforce-daily", 403, headers(), SALESFORCE_CONCURRENT, DAILY_ROLLING, Reading()),
    ("salesforce-daily", 403, headers(), b'[{"errorCode":"INSUFFICIENT_ACCESS"}]', DAILY_ROLLING, Reading()),
    ("apollo-minute", 200, headers(("x-rate-limit-minute", "200"), ("x-minute-usage", "1"),
                                   ("x-minute-requests-left", "199")), b"", TEN_S, Reading(remaining=199)),
    ("apollo-hour", 200, headers(("x-rate-limit-hourly", "400"), ("x-hourly-requests-left", "399")), b"", TEN_S,
     Reading(remaining=399)),
    ("apollo-day", 200, headers(("x-rate-limit-24-hour", "2000"), ("x-24-hour-requests-left", "0")), b"",
     DAILY_ROLLING, Reading(remaining=0)),
    ("apollo-day", 200, headers(("x-daily-requests-left", "295")), b"", DAILY_ROLLING, Reading(remaining=295)),
    ("apollo-day", 200, headers(("x-24-hour-requests-left", "-3")), b"", DAILY_ROLLING, Reading()),
]


@pytest.mark.parametrize(("signal", "status", "answer_headers", "body", "budget", "expected"), TABLE)
def test_each_signal_reads_what_the_vendor_said(signal, status, answer_headers, body, budget, expected):
    assert read(signal, status, answer_headers, body, NOW, budget) == expected


@pytest.mark.parametrize("signal", SIGNALS)
def test_every_signal_the_config_names_has_a_reader_that_never_raises_on_garbage(signal):
    garbage = headers(*[(name, value) for name in (
        "RateLimit", "RateLimit-Policy", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
        "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-RateLimit-Limit", "X-HubSpot-RateLimit-Remaining",
        "X-HubSpot-RateLimit-Interval-Milliseconds", "X-HubSpot-RateLimit-Max", "X-HubSpot-RateLimit-Daily",
        "X-HubSpot-RateLimit-Daily-Remaining", "X-HubSpot-RateLimit-Secondly-Remaining", "Sforce-Limit-Info",
        "x-minute-requests-left", "x-hourly-requests-left", "x-24-hour-requests-left",
    ) for value in ('"', "(", ";;", ":!!:", "%\"\\xff\"", "\u00e9", "1" * 40, "-0", "=/", "")])
    for status in (200, 403, 429):
        for body in (b"", b"\xff\xfe", b"[" * 5000, b'{"policyName": 5}', b"null"):
            reading = read(signal, status, garbage, body, NOW, DAILY_ROLLING)
            assert reading.remaining is None and reading.limit is None and not reading.refused


def test_an_unknown_signal_is_a_programming_error():
    with pytest.raises(ValueError):
        read("nope", 200, headers(), b"", NOW, TEN_S)


def test_the_mapping_form_reads_its_own_headers_in_its_unit():
    said = headers(("Left", "12"), ("Back-In", "1500"), ("Back-At", str(int(NOW) + 30)))
    assert read_follow(Follow("Left", "Back-In", "ms"), 200, said, b"", NOW, TEN_S) == Reading(remaining=12, reset=1.5)
    assert read_follow(Follow("Left", "Back-At", "epoch"), 200, said, b"", NOW, TEN_S) == Reading(remaining=12, reset=30)
    assert read_follow(Follow("Left", None, "seconds"), 200, said, b"", NOW, TEN_S) == Reading(remaining=12)
    named = Follow(None, None, "seconds", signal="x-ratelimit")
    assert read_follow(named, 200, headers(("X-RateLimit-Remaining", "3")), b"", NOW, TEN_S) == Reading(remaining=3)


def test_the_strictest_reading_wins_for_each_budget():
    # Nango PR #4428: a Retry-After and the vendor's counters on one answer; the longest
    # pause and the lowest remaining count.
    retry_after = Reading(pause=30)
    interval = read("hubspot-interval", 429, headers(("X-HubSpot-RateLimit-Interval-Milliseconds", "10000"),
                                                     ("X-HubSpot-RateLimit-Remaining", "0")), b"", NOW, TEN_S)
    ietf = read("ietf", 429, headers(("RateLimit", '"default";r=4;t=60')), b"", NOW, TEN_S)
    assert combine([interval, retry_after, ietf]) == Adjustment(pause=30, remaining=0, reset=10)
    assert combine([Reading(pause=90), retry_after]) == Adjustment(pause=90)
    # At equal remaining, the longer reset; no reset at all lasts longest.
    assert combine([Reading(remaining=5, reset=2), Reading(remaining=5, reset=9)]) == Adjustment(remaining=5, reset=9)
    assert combine([Reading(remaining=5, reset=9), Reading(remaining=5)]) == Adjustment(remaining=5)
    assert combine([Reading(limit=3), Reading()]) is None
    assert combine([]) is None


def test_a_combined_reading_holds_the_budget_back_until_the_latest_end():
    charge = Charge("burst", ROLLING, limit=100, per=10, cost=1)
    state = BudgetState()
    said = combine([Reading(pause=3), read("ietf", 200, headers(("RateLimit", '"d";r=0;t=5')), b"", NOW, TEN_S)])
    assert said is not None
    adjust(charge, state, NOW, said)
    assert level(charge, state, NOW).paused_for == 5


def test_salesforce_usage_leaves_at_most_what_salesforce_has_left():
    charge = Charge("daily", ROLLING, limit=100000, per=86400, cost=1)
    state = BudgetState()
    reading = read("salesforce-daily", 200, headers(("Sforce-Limit-Info", "api-usage=99998/100000")), b"", NOW,
                   BudgetWindow.of(charge, level(charge, state, NOW)))
    said = combine([reading])
    assert said is not None
    adjust(charge, state, NOW, said)
    assert level(charge, state, NOW).remaining == 2


def test_a_smaller_vendor_limit_over_the_same_span_lowers_ours():
    assert smaller_limit(Reading(limit=15000, window=86400), 100000, 86400) == 15000
    assert smaller_limit(Reading(limit=150000, window=86400), 100000, 86400) is None
    assert smaller_limit(Reading(limit=100, window=10), 250000, 86400) is None  # another span
    assert smaller_limit(Reading(limit=5000), 10000, 3600) == 5000  # the signal counts this budget
    assert smaller_limit(Reading(remaining=3), 10, 1) is None


def test_quota_refusals_are_told_apart_from_refused_credentials():
    hubspot, salesforce = {"hubspot-daily", "hubspot-interval"}, {"salesforce-daily"}
    assert is_quota_refusal(hubspot, 429, HUBSPOT_DAILY_429)
    assert not is_quota_refusal(hubspot, 429, HUBSPOT_INTERVAL_429)
    assert not is_quota_refusal({"hubspot-interval"}, 429, HUBSPOT_DAILY_429)
    assert is_quota_refusal(salesforce, 403, SALESFORCE_403)
    assert is_quota_refusal(salesforce, 403, SALESFORCE_CONCURRENT)
    assert is_quota_refusal(salesforce, 403, SALESFORCE_403[:-2])  # cut short
    assert not is_quota_refusal(salesforce, 401, SALESFORCE_403)
    assert not is_quota_refusal(salesforce, 403, b'[{"errorCode":"INVALID_SESSION_ID"}]')
    assert not is_quota_refusal(salesforce, 403, b'{"message": "REQUEST_LIMIT_EXCEEDED is not a code here"}')
    assert not is_quota_refusal(set(), 403, SALESFORCE_403)


def test_the_body_is_read_only_for_answers_that_may_be_quota_refusals():
    assert refusal_body_size({"salesforce-daily"}, 403) > len(SALESFORCE_403)
    assert refusal_body_size({"hubspot-daily"}, 429) > len(HUBSPOT_DAILY_429)
    assert refusal_body_size({"hubspot-daily", "salesforce-daily"}, 200) == 0
    assert refusal_body_size({"ietf"}, 429) == 0


@pytest.mark.parametrize(("lines", "expected"), [
    (['"default";r=0;t=5'], [("default", {"r": 0, "t": 5})]),
    (["a;q=1.5, b", "c;x"], [("a", {"q": 1.5}), ("b", {}), ("c", {"x": True})]),
    (['"es\\"c";k=?0, :aGk=:, @1700000000, %"caf%c3%a9"'],
     [('es"c', {"k": False}), (b"hi", {}), (1700000000, {}), ("caf\u00e9", {})]),
    (["(a b);w=1, x"], [([("a", {}), ("b", {})], {"w": 1}), ("x", {})]),
    (["a, "], None), (['"open'], None), (["a;Q=1"], None), (["1.2345"], None), (["1" * 16], None),
    (['%"%ff"'], None), ([":@@:"], None), (["(a"], None), (["a b"], None),
])
def test_structured_field_lists_parse_exactly(lines, expected):
    assert parse_list(lines) == expected
