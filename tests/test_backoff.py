"""The one reconnect and retry delay the Python side uses (the client's reconnects, the providers'
rate-limit retries)."""

from __future__ import annotations

from agentwire.backoff import Backoff, doubling
from agentwire.providers._llm import RetryPolicy


def test_doubling_from_the_first_delay_to_the_cap() -> None:
    assert [doubling(n, 0.25, 15) for n in range(1, 10)] == [0.25, 0.5, 1, 2, 4, 8, 15, 15, 15]


def test_jitter_stays_within_its_fraction_and_reset_starts_over() -> None:
    backoff = Backoff(first=1, cap=8, jitter=0.2)
    delays = [backoff.next_delay() for _ in range(200)]
    assert 0.8 <= delays[0] <= 1.2 and 1.6 <= delays[1] <= 2.4
    assert all(8 * 0.8 <= d <= 8 * 1.2 for d in delays[3:])
    assert len({round(d, 6) for d in delays[3:]}) > 1  # jittered, not one fixed delay
    backoff.reset()
    assert 0.8 <= backoff.next_delay() <= 1.2 and backoff.attempt == 1
    exact = Backoff(first=1, cap=8, jitter=0)
    assert [exact.next_delay() for _ in range(5)] == [1, 2, 4, 8, 8]


def test_rate_limit_retries_double_the_same_way_unless_the_server_says_when() -> None:
    policy = RetryPolicy(retries=5, base_s=1.0, cap_s=5.0)
    assert [policy.delay(n, None) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert policy.delay(1, 2.5) == 2.5 and policy.delay(1, 60) == 5.0
