"""The QoS limiter's arithmetic on a fake clock (blockstore/host/qos.py): rates held, bursts
paid from credits and ended when they run out, credits earned back below the baseline, large
requests charged by size, changes applied at once. The same limiter under real fio over NBD:
tests/nbd/test_nbd_qos.py."""

from __future__ import annotations

import itertools

import pytest

from blockstore.errors import InvalidArgument
from blockstore.host.qos import IO_UNIT, MB, Limiter, QosLimits, cost

MiB = 1 << 20


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def limiter(t: FakeTime, **limits: float) -> Limiter:
    return Limiter(QosLimits(**limits), clock=t.clock, sleep=t.sleep)  # type: ignore[arg-type]


def stream(
    t: FakeTime, lim: Limiter, seconds: float, nbytes: int = 4096, service: float = 0.0001
) -> int:
    """A QD1 stream for `seconds` of fake time (each request also takes `service`); its count."""
    end, n = t.now + seconds, 0
    while t.now < end:
        lim.charge(nbytes)
        t.now += service
        n += 1
    return n


def test_cost_counts_256k_units_and_bytes() -> None:
    assert cost(4096, True) == (1, 4096)
    assert cost(IO_UNIT, True) == (1, IO_UNIT)
    assert cost(IO_UNIT + 1, True) == (2, IO_UNIT + 1)
    assert cost(MiB, True) == (4, MiB)
    assert cost(MiB, False) == (1, 0)  # a trim or zero of any size


def test_no_caps_never_waits() -> None:
    t = FakeTime()
    lim = limiter(t)
    assert all(lim.charge(MiB) == 0 for _ in range(1000))
    assert lim.counters()["throttled_requests"] == 0


@pytest.mark.parametrize("iops", [50, 500, 5000])
def test_a_stream_gets_its_iops_limit(iops: int) -> None:
    t = FakeTime()
    lim = limiter(t, iops_limit=iops)
    n = stream(t, lim, 30)
    assert n == pytest.approx(iops * 30, rel=0.005)


def test_queued_requests_are_spaced_at_the_rate() -> None:
    """32 requests at once (QD32): each reserves its turn; the waits grow by 1/rate."""
    t = FakeTime()
    lim = Limiter(QosLimits(iops_limit=100), clock=t.clock, sleep=lambda s: None)
    waits = [lim.charge(4096) for _ in range(32)]
    # the reservoir (RESERVOIR seconds of the rate: 5 requests) runs at once, then 10 ms apart
    assert waits[:5] == [0.0] * 5
    steps = [b - a for a, b in itertools.pairwise(waits[5:])]
    assert steps == pytest.approx([0.01] * len(steps))


def test_large_requests_are_charged_by_size() -> None:
    t = FakeTime()
    lim = limiter(t, iops_limit=100, mbps_limit=10)
    n = stream(t, lim, 30, nbytes=MiB)  # 10 MB/s of 1 MiB requests: 9.5 a second
    assert n * MiB / 30 == pytest.approx(10 * MB, rel=0.01)
    t2 = FakeTime()
    lim2 = limiter(t2, iops_limit=100)  # 1 MiB = 4 IOs: 25 requests a second
    assert stream(t2, lim2, 30, nbytes=MiB) == pytest.approx(25 * 30, rel=0.01)


def test_a_burst_lasts_what_the_credits_pay_then_falls_to_baseline() -> None:
    t = FakeTime()
    lim = limiter(t, iops_limit=100, burst_iops=300, burst_seconds=10)
    # full bucket: (300 - 100) x 10 = 2000 IOs of credit, drained at 200 a second: 10 s at 300
    assert stream(t, lim, 9) == pytest.approx(300 * 9, rel=0.01)
    assert lim.counters()["iops_now"] == 300
    stream(t, lim, 2)  # the credits run out in this second
    assert lim.counters()["iops_credits"] == pytest.approx(0, abs=1)
    assert stream(t, lim, 10) == pytest.approx(100 * 10, rel=0.01)
    assert lim.counters()["iops_now"] == 100


def test_credits_accrue_while_the_disk_runs_below_its_baseline() -> None:
    t = FakeTime()
    lim = limiter(t, iops_limit=100, burst_iops=300, burst_seconds=10)
    stream(t, lim, 12)  # empty the bucket
    assert lim.counters()["iops_credits"] == pytest.approx(0, abs=1)
    stream(t, lim, 5, service=1 / 40)  # 40 IOPS for 5 s: 60 a second unused
    assert lim.counters()["iops_credits"] == pytest.approx(300, rel=0.02)
    t.now += 100  # idle: the bucket fills up to its size and no further
    assert lim.counters()["iops_credits"] == pytest.approx(2000)


def test_a_change_applies_at_once_and_keeps_what_did_not_change() -> None:
    t = FakeTime()
    lim = limiter(t, iops_limit=1000, mbps_limit=4, burst_mbps=8, burst_seconds=100)
    stream(t, lim, 5, nbytes=64 * 1024)  # spends byte credits
    credits = lim.counters()["mbps_credits"]
    assert credits < 400
    lim.set(lim.limits.changed(iops_limit=50))
    assert lim.counters()["mbps_credits"] == pytest.approx(credits, rel=0.01)  # bytes untouched
    assert stream(t, lim, 10) == pytest.approx(50 * 10, rel=0.01)
    lim.set(QosLimits())
    assert lim.charge(MiB) == 0


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"iops_limit": -1}, "iops_limit must be a number >= 0"),
        ({"mbps_limit": True}, "mbps_limit must be a number"),
        ({"burst_iops": 500}, "burst_iops needs iops_limit"),
        ({"iops_limit": 500, "burst_iops": 100}, "must be at least iops_limit"),
        ({"mbps_limit": 10, "burst_seconds": 0}, "burst_seconds must be > 0"),
        ({"iops_limit": 1, "qos": 1}, "unknown QoS settings: qos"),
    ],
)
def test_bad_limits_are_refused_with_a_reason(given: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        QosLimits.from_dict(given)
