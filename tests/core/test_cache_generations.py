"""Which writes outdate which stored answers, with no storage and no clock but the one passed in."""

from gateway.config.model import CacheRule, Match
from gateway.core.cache import (
    GENERATION_MARGIN,
    Entry,
    Generations,
    generation_names,
    invalidations,
    next_generation,
    path_generation,
    rule_generation,
)
from gateway.config.paths import Glob


def match(path: str | None = None, *methods: str) -> Match:
    return Match(frozenset(methods) if methods else None, path, Glob(path) if path else None)


def rule(path: str, *invalidated_by: Match, methods: tuple[str, ...] = ("GET",), ttl: float = 600, stale: float = 3600) -> CacheRule:
    return CacheRule(match(path, *methods), ttl, stale, 1024, invalidated_by)


COMPANIES = rule("/companies/*", match("/companies/batch/**", "POST"))
PEOPLE = rule("/people/*", ttl=60, stale=0)
SEARCH = rule("/search", methods=("POST",))
RULES = (COMPANIES, PEOPLE, SEARCH)


def test_a_successful_write_bumps_its_paths_generation_for_as_long_as_an_answer_of_it_lives():
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for status in (200, 201, 204, 299):
            assert invalidations(RULES, method, "/companies/1", status) == {
                path_generation("/companies/1"): 600 + 3600 + GENERATION_MARGIN
            }


def test_failures_reads_and_lookups_bump_nothing():
    for status in (199, 301, 304, 400, 404, 409, 429, 500, 503):
        assert invalidations(RULES, "PATCH", "/companies/1", status) == {}
    for method in ("GET", "HEAD", "OPTIONS"):
        assert invalidations(RULES, method, "/companies/1", 200) == {}
    assert invalidations(RULES, "POST", "/search", 200) == {}  # a rule caches it: a lookup, not a write


def test_a_path_no_rule_may_have_stored_bumps_nothing_of_its_own():
    assert invalidations(RULES, "POST", "/companies", 201) == {}
    assert invalidations(RULES, "PATCH", "/companies/1/notes", 200) == {}
    assert invalidations((), "PATCH", "/companies/1", 200) == {}


def test_a_write_that_fits_invalidated_by_bumps_that_rules_generation_only():
    assert invalidations(RULES, "POST", "/companies/batch/upsert", 200) == {
        rule_generation(COMPANIES): 600 + 3600 + GENERATION_MARGIN
    }
    assert invalidations(RULES, "PUT", "/companies/batch/upsert", 200) == {}  # the methods are part of the match


def test_a_write_may_bump_its_path_and_several_rules():
    anywhere = match("/**", "DELETE")
    rules = (rule("/a/*", anywhere, ttl=10, stale=0), rule("/a/**", anywhere, methods=("HEAD",), ttl=100, stale=5))
    assert invalidations(rules, "DELETE", "/a/1", 204) == {
        path_generation("/a/1"): 105 + GENERATION_MARGIN,  # the longest-lived of the rules that cover it
        rule_generation(rules[0]): 10 + GENERATION_MARGIN,
        rule_generation(rules[1]): 105 + GENERATION_MARGIN,
    }


def test_names_are_stable_and_tell_rules_and_paths_apart():
    assert rule_generation(COMPANIES) == rule_generation(rule("/companies/*", ttl=1))  # a reload keeping the match
    assert rule_generation(COMPANIES) != rule_generation(rule("/companies/*", methods=("GET", "HEAD")))
    assert rule_generation(rule("/x", methods=())) != rule_generation(rule("/x"))
    assert generation_names(COMPANIES, "/companies/1") == (rule_generation(COMPANIES), path_generation("/companies/1"))
    assert path_generation("/c/ann%40example.com") == path_generation("/c/ann@example.com")
    assert path_generation("/companies/1") != path_generation("/companies/2")
    assert path_generation("") == path_generation("/")
    assert all(len(name) < 40 and "companies" not in name for name in generation_names(COMPANIES, "/companies/1"))


def test_a_generation_moves_on_with_the_clock_and_never_back():
    assert next_generation(0, 1000.0) == 1_000_000_000
    assert next_generation(1_000_000_000, 1000.0) == 1_000_000_001  # twice in one microsecond
    assert next_generation(5_000_000_000, 1000.0) == 5_000_000_001  # a clock set back
    # Forgotten (0 again) after its time: the next bump still comes out above what an
    # answer recorded before, since that was earlier by the clock.
    recorded = next_generation(0, 1000.0)
    assert next_generation(0, 1000.0 + 4260) > recorded


def test_an_answer_is_outdated_by_any_newer_generation_and_kept_over_a_forgotten_one():
    recorded = Generations(rule=5, path=7)
    assert recorded.covers(Generations(5, 7)) and recorded.covers(Generations(0, 0))
    assert recorded.covers(Generations(5, 0))
    assert not recorded.covers(Generations(6, 7)) and not recorded.covers(Generations(5, 8))
    assert Generations().covers(Generations()) and not Generations().covers(Generations(0, 1))


def test_an_entry_keeps_its_generations_and_an_older_one_reads_as_never_bumped():
    entry = Entry(200, "OK", (("A", "b"),), b"{}", 1000.0, 60, 0, (), Generations(1_700_000_000_000_000, 3))
    assert Entry.from_bytes(entry.to_bytes()) == entry
    head, _, body = entry.to_bytes().partition(b"\n")
    older = head.replace(b',"generations":[1700000000000000,3]', b"") + b"\n" + body
    assert Entry.from_bytes(older) == Entry(200, "OK", (("A", "b"),), b"{}", 1000.0, 60, 0, ())
    assert Entry.from_bytes(head.replace(b"[1700000000000000,3]", b"[1,2,3]") + b"\n") is None
