import pytest

from gateway.config.model import Backoff, Retry
from gateway.core.attempts import Outcome, backoff_delay, should_retry

RETRY = Retry(attempts=3, on=frozenset({503, 429, "timeout", "connect"}), backoff=Backoff(1.0, 2.0, 10.0, 0.5))


def decide(outcome, attempt=1, method="GET", key=False, replayable=True, retry=RETRY):
    return should_retry(retry, attempt, outcome, method=method, idempotency_key=key, replayable=replayable)


def test_listed_statuses_and_failures_are_retried_until_attempts_run_out():
    assert decide(Outcome(status=503))
    assert decide(Outcome(failure="timeout"), attempt=2)
    assert not decide(Outcome(status=503), attempt=3)


def test_unlisted_statuses_are_final():
    assert not decide(Outcome(status=500))
    assert not decide(Outcome(status=200))
    assert not decide(Outcome(status=404))


def test_post_and_patch_that_reached_the_vendor_need_an_idempotency_key():
    assert not decide(Outcome(status=503), method="POST")
    assert not decide(Outcome(failure="timeout"), method="PATCH")
    assert decide(Outcome(status=503), method="POST", key=True)
    assert decide(Outcome(status=503), method="PUT")


def test_a_request_that_never_reached_the_vendor_is_retried_whatever_its_method():
    assert decide(Outcome(failure="connect", sent=False), method="POST")


def test_no_retry_without_a_retry_section_or_with_a_streamed_body():
    assert not decide(Outcome(failure="connect", sent=False), retry=Retry())
    assert not decide(Outcome(status=503), replayable=False)


def test_a_retry_after_longer_than_the_backoff_cap_goes_to_the_caller():
    assert decide(Outcome(status=429, retry_after=5))
    assert not decide(Outcome(status=429, retry_after=30))


@pytest.mark.parametrize("attempt, jitter, expected", [(1, 0.0, 1.0), (2, 0.0, 2.0), (3, 0.5, 4.25), (10, 0.0, 10.0)])
def test_backoff_grows_exponentially_up_to_the_cap_plus_jitter(attempt, jitter, expected):
    assert backoff_delay(RETRY.backoff, attempt, jitter) == pytest.approx(expected)


def test_retry_after_is_a_floor_for_the_delay():
    assert backoff_delay(RETRY.backoff, 1, 0.0, retry_after=7) == 7
    assert backoff_delay(RETRY.backoff, 3, 0.0, retry_after=1) == 4
