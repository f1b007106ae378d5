"""Cache decisions with the clock passed in."""

from multidict import CIMultiDict

from gateway.core.cache import Entry, cache_key, entry_for, skips_read, storable


def test_the_key_changes_with_what_changes_the_answer():
    base = ("v", "GET", "/companies/1", "a=1", CIMultiDict({"Accept": "application/json"}), None)
    key = cache_key(*base)
    assert key == cache_key(*base) and len(key) == 64
    assert key != cache_key("v", "GET", "/companies/1", "a=2", base[4], None)
    assert key != cache_key("v", "GET", "/companies/1", None, base[4], None)  # no "?" is not an empty query
    assert key != cache_key("v", "HEAD", *base[2:])
    assert key != cache_key("v", "GET", "/companies/1", "a=1", CIMultiDict({"Accept": "text/csv"}), None)
    assert key != cache_key("v", "GET", "/companies/1", "a=1", CIMultiDict({**base[4], "Accept-Encoding": "gzip"}), None)
    twice = CIMultiDict([("Accept", "a"), ("Accept", "b")])
    assert cache_key("v", "GET", "/", None, twice, None) != cache_key("v", "GET", "/", None, CIMultiDict(Accept="a"), None)
    post = cache_key("v", "POST", "/search", None, CIMultiDict(), b'{"q":"a"}')
    assert post != cache_key("v", "POST", "/search", None, CIMultiDict(), b'{"q":"b"}')


def test_what_may_be_stored_and_what_skips_the_read():
    assert storable(200, [], []) and storable(404, ["max-age=60"], ["Accept"])
    assert not storable(500, [], []) and not storable(302, [], [])
    assert not storable(200, ["private, no-store"], [])
    assert not storable(200, [], ["Accept, *"])
    assert skips_read(["no-cache"], []) and skips_read([], ["no-cache"]) and skips_read(["max-age=0, no-store"], [])
    assert not skips_read(["max-age=60"], [])


def test_an_entry_is_fresh_then_not_and_keeps_its_vendors_lasting_headers():
    vendor_headers = [("Content-Type", "a/b"), ("Set-Cookie", "s=1"), ("Content-Length", "2"),
                      ("X-RateLimit-Remaining", "0"), ("RateLimit", '"a";r=0;t=9'), ("Retry-After", "9")]
    entry = entry_for(200, "OK", vendor_headers, b"{}",
                      CIMultiDict({"Accept-Language": "de"}), ["Accept-Language"], now=1000.0, ttl=60, stale_if_error=30)
    assert entry.headers == (("Content-Type", "a/b"), ("Content-Length", "2"))  # one moment's headers are not kept
    assert entry.fresh(1059.9) and not entry.fresh(1060.0)
    assert entry.age(1042.7) == 42 and entry.keep_for == 90
    assert entry.matches(CIMultiDict({"Accept-Language": "de"})) and not entry.matches(CIMultiDict())
    assert Entry.from_bytes(entry.to_bytes()) == entry
    assert Entry.from_bytes(b"not an entry") is None and Entry.from_bytes(b'{"status": 1}\nbody') is None
