"""Thrasher: two `blockstore serve` hosts over one SeaweedFS, a journaled verifying NBD client per
disk, and a seeded random schedule of faults; after every fault each disk is read back through
its current owner and checked against the client's journal (issue #14).

How to run:

    .venv/bin/python bench/thrash.py --seed 1 --cycles 200            # or: make thrash
    .venv/bin/python bench/thrash.py --seed 7 --cycles 20 --minutes 3 --disks 3

It starts its own `weed mini` (tests/system/test_thrash.py hands it the test session's instead),
host A (`blockstore serve`, reaching the store through a fault-injecting proxy,
tests/support/faultproxy.py) and host B (straight to the store), each with its own home under
the work directory, and creates `--disks` disks cycling through the caching modes none,
readonly, readwrite. Every process it started is stopped at the end (also on Ctrl-C or SIGTERM).

Each cycle: the clients write for 0.5-2 s, one fault from the seeded schedule is applied while
they write (kill -9 of a disk's nbdkit; kill -9 of a host's service, sometimes with its disks
force-attached to the other host while it is down, then a restart on the same home; SIGSTOP of
the store for 1-6 s; 5xx, resets, truncated bodies, stalls or "store down" on host A's store
path for 1-6 s; force-attach to the other host while the old client keeps writing; caching
PATCH; a clean detach and attach on a random host; online grow; snapshot), then every disk is
read back through its owner and checked. At the end every disk is detached cleanly, attached
on the other host and checked once more.

How to read it: one line per fault cycle (`cycle 12/200 kill_nbdkit d2@b(readwrite) ...`), then

    200 fault cycles, 51234 writes verified, 0 lost

and exit status 0; or the violations, each with the seed and the cycle, and exit status 1.
The work directory keeps `events.jsonl` (every write issued, acknowledged or failed, every
flush, every fault and check, with monotonic times), `summary.json`, and the two hosts'
`*-serve.log` and `run/*.sock.log` (nbdkit) files; it is removed after a clean run unless
`--keep`. The seed fixes the fault schedule (which fault, which disk, which host, how long),
not thread timing, so a second run of a seed hits the same faults at slightly different writes.

What is checked (DESIGN.md, durability contract and ownership invariants). Every 512-byte
sector a client writes carries (disk tag, write id, sector) and a filler derived from them.

- lost: a sector reads older than the newest write to it that had to survive. In `none` and
  `readonly` every acknowledged write must survive; in `readwrite` too across a kill -9 of
  nbdkit or of the service (the journal stays on the host and is replayed), but across a
  force-attach to another host only writes acknowledged before a successful flush, a FUA
  write itself, or writes covered by a successful detach or snapshot (both flush first). After
  such a force-attach the new owner must show a prefix of the writes: the newest write it shows
  is K, and every acknowledged write up to K must be there; writes after K are then "discarded".
- fenced: a sector shows a write the old owner's client issued after the force-attach to the
  other host returned, or a discarded write (resurrected later, e.g. by a journal replay).
- garbage: a sector holds bytes no one wrote (not zeros, not a write issued to that sector).
- also: a flush or FUA acknowledged by a fenced export for writes issued after the fence,
  a wrong size after an online resize. Warnings (not failures): a fenced export still running
  10 s later, a client stuck in one request for more than 90 s, API calls that failed.

EIO, EPERM and dropped connections are not failures by themselves: a write that was not
acknowledged may or may not have landed, and either is accepted.

What it found, now fixed and covered by tests: the fault proxy answered HEAD with
Content-Length 0, which the engine reads as a torn segment (tests/store/test_faultproxy.py), and a
restarted export's attachment lost its socket and URI (tests/control/test_ownership.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nbd

from blockstore.host.embedded import Credentials, EmbeddedSeaweed
from blockstore.store.s3 import S3Config, S3Store
from tests.support.faultproxy import FaultProxy
from tests.support.servehost import ServeHost

SECTOR = 512
MiB = 1 << 20
MODES = ("none", "readonly", "readwrite")
ISSUED, ACKED, FAILED = "issued", "acked", "failed"
BUCKET = "thrash"
READ_CHUNK = 1 * MiB  # verification reads

# Fault kinds and their weights in the schedule.
FAULTS: tuple[tuple[str, int], ...] = (
    ("kill_nbdkit", 4),
    ("kill_serve", 2),
    ("store_pause", 1),
    ("proxy", 2),
    ("force_attach", 4),
    ("caching", 2),
    ("detach_attach", 2),
    ("resize", 1),
    ("snapshot", 1),
)


def sector_bytes(tag: int, wid: int, sector: int) -> bytes:
    head = struct.pack("<QQQ", tag, wid, sector)
    return head + bytes([(wid * 31 + sector * 7 + tag) & 0xFF or 1]) * (SECTOR - len(head))


@dataclass
class Write:
    wid: int
    first: int
    n: int
    session: int
    fua: bool
    state: str = ISSUED
    durable: str | None = None  # why this write alone is durable (ack in none/readonly, FUA)
    fenced: bool = False  # issued by an old owner's client after a force-attach returned
    discarded: str | None = None  # lost by a force-attach (readwrite, after the prefix)
    reported: int = 0  # the cycle it was reported lost in (then no longer required)
    seen_fenced: int = 0  # the cycle it was reported visible though fenced or discarded


@dataclass
class Session:
    """One client connection to one export lifetime."""

    sid: int
    host: str
    mode: str
    pid: int | None
    socket: str
    fenced_at: float | None = None


@dataclass
class StoreHandle:
    """The object store the hosts share: endpoint, credentials, and how to SIGSTOP it."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    server: EmbeddedSeaweed


class EventLog:
    def __init__(self, path: Path) -> None:
        self.f = open(path, "a", buffering=1 << 16)  # noqa: SIM115 - closed by close()
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def __call__(self, ev: str, **fields: Any) -> None:
        rec = {"t": round(time.monotonic() - self.t0, 4), "ev": ev, **fields}
        line = json.dumps(rec, default=str)
        with self.lock:
            self.f.write(line + "\n")

    def close(self) -> None:
        with self.lock:
            self.f.close()


@dataclass
class Findings:
    """What one check of a disk image found."""

    garbage: list[str]
    lost: dict[int, list[int]]  # required write id -> sectors that do not show it
    fenced: dict[int, list[int]]  # fenced or discarded write id -> sectors showing it
    back: set[int]  # writes reported lost earlier, visible again
    obs: list[int]  # per sector: the write id read, 0 for zeros, -1 for garbage
    k: int | None  # the prefix a lossy check found
    discarded: int
    verified: int


class Disk:
    """A disk, its write journal (the oracle), and where it is served now."""

    def __init__(self, name: str, tag: int, size: int, mode: str, log: EventLog) -> None:
        self.name = name
        self.tag = tag
        self.size = size
        self.record_mode = mode  # the record's caching (what the next attach will use)
        self.vm = f"vm-{name}"
        self.log = log
        self.lock = threading.Lock()
        self.writes: dict[int, Write] = {}
        self.next_wid = 1
        self.durable_upto = 0  # every acknowledged write <= this is durable
        self.barriers: list[tuple[int, str]] = []
        self.owner: str | None = None
        self.att: dict[str, Any] | None = None
        self.session: Session | None = None
        self.sessions = 0
        self.stats: Counter[str] = Counter()
        self.violations: list[str] = []  # found by the client itself (fenced flush acks)

    @property
    def mode(self) -> str:
        if self.session:
            return self.session.mode
        return str((self.att or {}).get("caching") or "?")

    def issue(self, first: int, n: int, sess: Session, fua: bool) -> Write:
        with self.lock:
            w = Write(self.next_wid, first, n, sess.sid, fua, fenced=sess.fenced_at is not None)
            self.next_wid += 1
            self.writes[w.wid] = w
        self.stats["issued"] += 1
        return w

    def acked(self, w: Write, sess: Session) -> None:
        with self.lock:
            w.state = ACKED
            if sess.mode in ("none", "readonly"):
                w.durable = f"ack in {sess.mode} (session {sess.sid} on {sess.host})"
            elif w.fua:
                w.durable = f"FUA in readwrite (session {sess.sid} on {sess.host})"
        self.stats["acked"] += 1
        self.stats[f"acked_{sess.mode}"] += 1
        if w.fenced:
            self.stats["acked_fenced"] += 1
            if w.durable:
                self.violations.append(
                    f"{self.name}: write {w.wid} issued after the fence was acknowledged as "
                    f"durable ({w.durable}) by the fenced export"
                )
        self.log("ack", d=self.name, wid=w.wid, first=w.first, n=w.n, fua=w.fua, sess=sess.sid,
                 fenced=w.fenced)  # fmt: skip

    def failed(self, w: Write, sess: Session, err: str) -> None:
        with self.lock:
            w.state = FAILED
        self.stats["failed"] += 1
        self.log("fail", d=self.name, wid=w.wid, first=w.first, n=w.n, sess=sess.sid, err=err)

    def barrier(self, upto: int, why: str) -> None:
        """Every acknowledged write <= upto is durable now (flush, detach, snapshot)."""
        with self.lock:
            if upto > self.durable_upto:
                self.durable_upto = upto
                self.barriers.append((upto, why))
        self.log("barrier", d=self.name, upto=upto, why=why)

    def flushed(self, upto: int, sess: Session) -> None:
        self.stats["flushes"] += 1
        if sess.fenced_at is not None:
            with self.lock:
                # Only this session's writes: a flush covers what its own export took, not
                # what an earlier fenced export acknowledged into its cache (readwrite may, in
                # the moment before it sees the fence; those are never durable).
                bad = [w.wid for w in self.writes.values()
                       if w.fenced and w.state == ACKED and w.wid <= upto
                       and w.session == sess.sid]  # fmt: skip
            if bad:
                self.violations.append(
                    f"{self.name}: a flush covering writes {bad[:5]} (issued after the fence) "
                    f"was acknowledged by the fenced export (session {sess.sid} on {sess.host})"
                )
        self.barrier(upto, f"flush by session {sess.sid} on {sess.host} ({sess.mode})")

    def verify(self, img: bytes, lossy: bool, cycle: int) -> Findings:
        """Check an image of the disk read through its owner against the journal (the pure
        part of the thrasher's check; see the module docstring for the rules). With `lossy`
        (readwrite, after a force-attach), unflushed writes may be missing as long as the
        image is a prefix of the writes; the ones after that prefix are marked discarded."""
        nsect = len(img) // SECTOR
        zero = bytes(SECTOR)
        obs = [0] * nsect
        garbage: list[str] = []
        with self.lock:
            writes = self.writes
            for s in range(nsect):
                raw = img[s * SECTOR : (s + 1) * SECTOR]
                if raw == zero:
                    continue
                tag, wid, sec = struct.unpack_from("<QQQ", raw)
                w = writes.get(wid)
                if (tag != self.tag or sec != s or w is None or not w.first <= s < w.first + w.n
                        or raw != sector_bytes(self.tag, wid, s)):  # fmt: skip
                    obs[s] = -1
                    garbage.append(f"sector {s} (reads tag {tag:x} write {wid} sector {sec})")
                    continue
                obs[s] = wid
            k: int | None = None
            if lossy:
                k = max((o for o in obs if o > 0 and not writes[o].fenced), default=0)
            req = [0] * nsect
            for w in writes.values():
                if w.state != ACKED or w.fenced or w.discarded or w.reported:
                    continue
                if k is not None and w.wid > k and not (w.durable or w.wid <= self.durable_upto):
                    continue
                end = min(w.first + w.n, nsect)
                if end > w.first:
                    req[w.first : end] = [w.wid] * (end - w.first)
            lost: dict[int, list[int]] = {}
            fenced: dict[int, list[int]] = {}
            back: set[int] = set()
            for s in range(nsect):
                o = obs[s]
                if o < 0:
                    continue
                w = writes.get(o) if o else None
                if w is not None and w.reported and o >= req[s]:
                    back.add(o)
                if w is not None and (w.fenced or w.discarded):
                    if not w.seen_fenced:  # reported once; the disk holds it from now on
                        fenced.setdefault(o, []).append(s)
                elif o < req[s]:
                    lost.setdefault(req[s], []).append(s)
            verified = sum(1 for w in writes.values()
                           if w.state == ACKED and not w.fenced and not w.discarded)  # fmt: skip
            newly_discarded = 0
            if k is not None:
                for w in writes.values():
                    if (
                        w.wid > k
                        and not w.fenced
                        and not w.discarded
                        and not (w.durable or w.wid <= self.durable_upto)
                    ):
                        w.discarded = f"after prefix {k} at a force-attach (cycle {cycle})"
                        newly_discarded += 1
        return Findings(garbage, lost, fenced, back, obs, k, newly_discarded, verified)

    def why_durable(self, w: Write) -> str:
        if w.durable:
            return w.durable
        for upto, why in self.barriers:
            if w.wid <= upto:
                return why
        return "acknowledged (not flushed)"


class Client(threading.Thread):
    """QD1 libnbd client of one disk: random writes (some FUA) and flushes, each journaled."""

    def __init__(self, disk: Disk, rng: random.Random, rate: float) -> None:
        super().__init__(name=f"client-{disk.name}", daemon=True)
        self.disk = disk
        self.rng = rng
        self.rate = rate
        self.cv = threading.Condition()
        self.h: nbd.NBD | None = None
        self.sess: Session | None = None
        self.hsize = 0
        self.paused = True
        self.idle = True
        self.stopping = False

    def run(self) -> None:
        while True:
            with self.cv:
                while (self.paused or self.h is None) and not self.stopping:
                    self.idle = True
                    self.cv.notify_all()
                    self.cv.wait()
                if self.stopping:
                    self.idle = True
                    self.cv.notify_all()
                    return
                self.idle = False
                h, sess, size = self.h, self.sess, self.hsize
            assert h is not None and sess is not None
            self.one(h, sess, size)
            time.sleep(self.rng.uniform(0, 2.0 / self.rate))

    def one(self, h: nbd.NBD, sess: Session, size: int) -> None:
        d, r = self.disk, self.rng.random()
        if r < 0.08:
            with d.lock:
                upto = d.next_wid - 1
            try:
                h.flush()
            except nbd.Error as e:
                d.stats["flush_failed"] += 1
                d.log("flush_fail", d=d.name, sess=sess.sid, err=str(e.errno or e))
                self.error(h, e)
                return
            d.log("flush", d=d.name, sess=sess.sid, upto=upto)
            d.flushed(upto, sess)
            return
        nsect = size // SECTOR
        n = min(self.rng.choice([1, 1, 2, 8, 8, 16, 32]), nsect)
        first = self.rng.randrange(0, nsect - n + 1)
        fua = r > 0.95
        w = d.issue(first, n, sess, fua)
        data = b"".join(sector_bytes(d.tag, w.wid, s) for s in range(first, first + n))
        try:
            h.pwrite(data, first * SECTOR, nbd.CMD_FLAG_FUA if fua else 0)
        except nbd.Error as e:
            d.failed(w, sess, str(e.errno or e))
            self.error(h, e)
            return
        d.acked(w, sess)

    def error(self, h: nbd.NBD, e: nbd.Error) -> None:
        self.disk.stats[f"err_{e.errno or 'conn'}"] += 1
        dead = True
        with contextlib.suppress(Exception):
            dead = h.aio_is_dead() or h.aio_is_closed()
        if dead:
            with self.cv:
                if self.h is h:
                    self.h = None
        time.sleep(0.05)

    def pause(self, timeout: float = 90.0) -> bool:
        with self.cv:
            self.paused = True
            return self.cv.wait_for(lambda: self.idle, timeout)

    def resume(self) -> None:
        with self.cv:
            self.paused = False
            self.cv.notify_all()

    def disconnect(self) -> None:
        """Shut the connection down cleanly (the client must be paused)."""
        with self.cv:
            h, self.h = self.h, None
        if h is not None:
            with contextlib.suppress(nbd.Error):
                h.shutdown()
            with contextlib.suppress(Exception):
                h.close()

    def connect(self, sess: Session) -> int:
        h = nbd.NBD()
        h.connect_unix(sess.socket)
        size = int(h.get_size())
        with self.cv:
            self.h, self.sess, self.hsize = h, sess, size
        return size

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify_all()


@dataclass
class Result:
    seed: int
    cycles: int = 0
    writes_verified: int = 0
    lost: int = 0
    fenced_visible: int = 0
    garbage: int = 0
    other: int = 0
    harness_errors: int = 0
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    wall_seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    workdir: str = ""

    def line(self) -> str:
        if not self.violations:
            return f"{self.cycles} fault cycles, {self.writes_verified} writes verified, 0 lost"
        return (
            f"{self.cycles} fault cycles, {self.writes_verified} writes verified, {self.lost} "
            f"lost, {self.fenced_visible} fenced writes visible, {self.garbage} sectors of "
            f"garbage, {self.other} other violations (seed {self.seed})"
        )


class Thrasher:
    def __init__(
        self,
        *,
        seed: int,
        cycles: int,
        minutes: float | None,
        disks: int,
        workdir: Path,
        store: StoreHandle | None = None,
        rate: float = 40.0,
        size: int = 8 * MiB,
        max_size: int = 24 * MiB,
        say: Any = print,
    ) -> None:
        self.seed = seed
        self.cycles = cycles
        self.deadline = None if minutes is None else time.monotonic() + minutes * 60
        self.ndisks = disks
        self.workdir = workdir
        self.sched = random.Random(seed)
        self.rate = rate
        self.size0 = size
        self.max_size = max_size
        self.say = say
        self.given_store = store
        self.store: StoreHandle | None = store
        self.weed: EmbeddedSeaweed | None = None
        self.proxy: FaultProxy | None = None
        self.hosts: dict[str, ServeHost] = {}
        self.disks: list[Disk] = []
        self.clients: dict[str, Client] = {}
        self.result = Result(seed=seed, workdir=str(workdir))
        self.cycle = 0
        self.sid = 0
        self.warn_counts: Counter[str] = Counter()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = EventLog(workdir / "events.jsonl")

    # -- set-up and tear-down ------------------------------------------------------------

    def setup(self) -> None:
        if self.store is None:
            creds = Credentials("thrashkey", "thrash-secret-not-a-real-one")
            self.weed = EmbeddedSeaweed(self.workdir / "seaweed", creds)
            self.weed.start()
            self.store = StoreHandle(self.weed.endpoint, BUCKET, creds.access_key,
                                     creds.secret_key, self.weed)  # fmt: skip
        st = self.store
        s3 = S3Store(S3Config(st.endpoint, st.bucket, st.access_key, st.secret_key))
        s3.ensure_bucket()
        s3.close()
        self.proxy = FaultProxy(st.endpoint)
        # Its injected resets would print a traceback each; the proxy's own stats count them.
        self.proxy.server.handle_error = lambda *_: None  # type: ignore[method-assign]
        prefix = f"thrash-{self.seed}-{os.getpid()}-{int(time.time())}/"
        for name, endpoint in (("a", self.proxy.endpoint), ("b", st.endpoint)):
            self.hosts[name] = ServeHost(
                self.workdir / name, endpoint=endpoint, bucket=st.bucket, prefix=prefix,
                access_key=st.access_key, secret_key=st.secret_key, retry_seconds=4.0,
            )  # fmt: skip
            self.hosts[name].start()
        tags = random.Random(self.seed * 7919 + 1)
        for i in range(self.ndisks):
            mode = MODES[i % 3]
            d = Disk(f"d{i}", tags.getrandbits(63), self.size0, mode, self.log)
            body = {"name": d.name, "size_bytes": d.size, "caching": mode,
                    "kind": "os" if mode == "readwrite" else "data"}  # fmt: skip
            self.hosts["a"].ok("POST", "/v1/disks", body)
            self.disks.append(d)
            c = Client(d, random.Random(f"{self.seed}-{d.name}"), self.rate)
            c.start()
            self.clients[d.name] = c
            host = self.sched.choice("ab")
            att = self.api(host, "POST", f"/v1/disks/{d.name}/attach", {"vm": d.vm})
            assert att is not None, f"could not attach {d.name}"
            self.took(d, host, att)
            self.reconnect(d)

    def teardown(self) -> None:
        for c in self.clients.values():
            c.stop()
        for c in self.clients.values():
            c.join(30)
            c.disconnect()
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.server.resume()
        if self.proxy is not None:
            self.proxy.clear()
        for h in self.hosts.values():
            try:
                h.stop()
            except Exception:
                h.kill9()
        # An export of a killed service may outlive it (seen: minutes, --exit-with-parent
        # notwithstanding); it is this run's process, so it goes too, and is reported.
        for pid, cmd in processes_under(self.workdir):
            self.warn(f"nbdkit {pid} still ran after its service stopped: {cmd[:120]}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proxy is not None:
            self.proxy.close()
        if self.weed is not None:
            self.weed.stop()
        self.log.close()

    # -- helpers -------------------------------------------------------------------------

    def api(self, host: str, method: str, path: str, body: Any = None,
            ok: tuple[int, ...] = (200, 201, 202)) -> Any:  # fmt: skip
        try:
            status, out = self.hosts[host].call(method, path, body)
        except OSError as e:
            status, out = -1, str(e)
        self.log("api", host=host, method=method, path=path, body=body, status=status,
                 out=out if status not in ok else None)  # fmt: skip
        if status in ok:
            return out
        self.warn(f"{method} {path} on {host}: {status} {out}")
        return None

    def warn(self, msg: str, key: str | None = None) -> None:
        """A warning; one with a `key` is printed the first 3 times, then only counted."""
        if key is not None:
            self.warn_counts[key] += 1
            if self.warn_counts[key] > 3:
                self.log("warning", msg=msg, key=key)
                return
        text = f"seed {self.seed} cycle {self.cycle}: {msg}"
        self.result.warnings.append(text)
        self.log("warning", msg=text)
        self.say(f"  warning: {msg}")

    def violation(self, kind: str, msg: str) -> None:
        text = f"seed {self.seed} cycle {self.cycle}: {kind}: {msg}"
        self.result.violations.append(text)
        setattr(self.result, kind, getattr(self.result, kind) + 1)
        self.log("violation", kind=kind, msg=text)
        self.say(f"  VIOLATION {kind}: {msg}")

    def other(self, name: str) -> str:
        return "b" if name == "a" else "a"

    def took(self, d: Disk, host: str, att: dict[str, Any]) -> None:
        """Host `host` serves `d` now, with the attachment `att` (a new export lifetime). The
        mode is read from the export's own command line (cache=...): the attachment may not
        say it."""
        missing = [k for k in ("socket", "pid", "caching") if not att.get(k)]
        att = dict(att)
        if missing:
            self.warn(f"{d.name}: attach on {host} returned an attachment without {missing}",
                      key="attachment-missing")  # fmt: skip
            if not att.get("socket") and d.att and d.owner == host:
                att["socket"] = d.att.get("socket")
            if att.get("socket") and not att.get("pid"):
                att["pid"] = find_nbdkit(att["socket"])
        real = nbdkit_mode(att.get("pid"))
        if real and att.get("caching") and real != att["caching"]:
            self.warn(f"{d.name}: the attachment says caching {att['caching']}, its export "
                      f"runs cache={real}", key="mode-mismatch")  # fmt: skip
        att["caching"] = real or att.get("caching") or d.record_mode
        d.owner, d.att = host, att
        self.log("owner", d=d.name, host=host, pid=att.get("pid"), mode=att.get("caching"),
                 epoch=att.get("epoch"))  # fmt: skip

    def reconnect(self, d: Disk, tries: int = 20) -> bool:
        """Pause the client, drop its connection, connect it to the current owner's socket."""
        c = self.clients[d.name]
        self.pause(c)
        c.disconnect()
        assert d.att is not None and d.owner is not None
        self.sid += 1
        sess = Session(self.sid, d.owner, d.att.get("caching") or d.record_mode,
                       d.att.get("pid"), d.att["socket"])  # fmt: skip
        for _ in range(tries):
            try:
                size = c.connect(sess)
                break
            except nbd.Error as e:
                last = e
                time.sleep(0.5)
        else:
            self.warn(f"{d.name}: cannot connect to {sess.socket} on {d.owner}: {last}")
            d.session = None
            return False
        d.session = sess
        if size != d.size:
            self.violation("other", f"{d.name}: a new connection sees {size} bytes, the disk "
                           f"has {d.size}")  # fmt: skip
        self.log("connect", d=d.name, sess=sess.sid, host=sess.host, mode=sess.mode,
                 pid=sess.pid, size=size)  # fmt: skip
        return True

    def pause(self, c: Client) -> None:
        if c.pause(90):
            return
        sess = c.disk.session
        self.warn(f"{c.disk.name}: client stuck in one request for 90 s (session "
                  f"{sess.sid if sess else '?'}); killing its nbdkit")  # fmt: skip
        if sess and sess.pid:
            self.kill_nbdkit_pid(sess.pid, sess.socket)
        if not c.pause(60):
            raise RuntimeError(f"{c.disk.name}: client still stuck after its nbdkit was killed")

    def kill_nbdkit_pid(self, pid: int, sock: str) -> bool:
        """SIGKILL the nbdkit serving `sock`, after checking that `pid` is that process."""
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return False
        if not cmd or not cmd[0].endswith(b"nbdkit") or sock.encode() not in cmd:
            self.warn(f"pid {pid} is not the nbdkit of {sock}: not killed")
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return True

    def serve_again(self, d: Disk, dead_pid: int | None = None) -> bool:
        """Ask the owner to serve `d` (attach with the same VM: it waits for, or does, the
        restart of a dead export) and connect the client to it."""
        assert d.owner is not None
        for _ in range(10):
            att = self.api(d.owner, "POST", f"/v1/disks/{d.name}/attach", {"vm": d.vm})
            if att is not None:
                pid = att.get("pid")
                if pid and pid != dead_pid and pid_alive(pid):
                    self.took(d, d.owner, att)
                    return self.reconnect(d)
                sock = att.get("socket") or (d.att or {}).get("socket")
                live = find_nbdkit(sock) if sock else None
                if live and live != dead_pid:
                    self.warn(f"{d.name}: attach on {d.owner} returned pid {pid} (not the "
                              f"running export {live})", key="stale-pid")  # fmt: skip
                    self.took(d, d.owner, {**att, "socket": sock, "pid": live})
                    return self.reconnect(d)
            time.sleep(1)
        self.warn(f"{d.name}: {d.owner} does not serve it again")
        return False

    # -- the check -----------------------------------------------------------------------

    def read_image(self, d: Disk) -> bytes | None:
        assert d.att is not None
        for attempt in range(4):
            h = nbd.NBD()
            try:
                h.connect_unix(d.att["socket"])
                size = h.get_size()
                if size != d.size:
                    self.violation("other", f"{d.name}: the owner serves {size} bytes, the "
                                   f"disk has {d.size}")  # fmt: skip
                img = b"".join(self.read_chunk(h, o, min(READ_CHUNK, size - o))
                               for o in range(0, size, READ_CHUNK))  # fmt: skip
                with contextlib.suppress(nbd.Error):
                    h.shutdown()
                return img
            except nbd.Error as e:
                self.log("read_fail", d=d.name, attempt=attempt, err=str(e))
                time.sleep(1.5)
                if attempt == 1 and d.owner:
                    self.serve_again(d)
            finally:
                with contextlib.suppress(Exception):
                    h.close()
        self.warn(f"{d.name}: could not read it back through {d.owner}")
        return None

    def read_chunk(self, h: nbd.NBD, offset: int, n: int) -> bytes:
        """One read, tried three times: a cold read of a fragmented area through the proxy can
        outlast one request's deadline (EIO) on a busy machine."""
        for attempt in range(3):
            try:
                return bytes(h.pread(n, offset))
            except nbd.Error as e:
                if attempt == 2 or h.aio_is_dead() or h.aio_is_closed():
                    raise
                self.log("read_retry", offset=offset, err=str(e))
                time.sleep(1)
        raise AssertionError("unreachable")

    def check(self, d: Disk, why: str, lossy: bool = False) -> bool:
        """Read `d` through its owner (its client paused) and check every sector. With
        `lossy` (readwrite, after a force-attach), unflushed writes may be missing as long as
        the disk shows a prefix of the writes; the ones after it are discarded."""
        c = self.clients[d.name]
        self.pause(c)
        img = self.read_image(d)
        if img is None:
            return False
        f = d.verify(img, lossy, self.cycle)
        garbage, lost, fenced, back, obs, k = f.garbage, f.lost, f.fenced, f.back, f.obs, f.k
        where = f"{d.name} through {d.owner} ({d.mode}), after {why}"
        for line in garbage[:5]:
            self.violation("garbage", f"{where}: {line}")
        if len(garbage) > 5:
            self.violation("garbage", f"{where}: {len(garbage) - 5} more sectors of garbage")
        if back:
            self.warn(f"{where}: writes reported lost before are visible again: "
                      f"{sorted(back)[:8]}", key="reappeared")  # fmt: skip
        for wid, secs in sorted(lost.items()):
            w = d.writes[wid]
            w.reported = self.cycle
            seen = sorted({obs[s] for s in secs})
            self.violation(
                "lost",
                f"{where}: write {wid} (sectors {w.first}-{w.first + w.n - 1}, session "
                f"{w.session}, durable by: {d.why_durable(w)}) missing on {len(secs)} "
                f"sector(s) {secs[:4]}, which read write(s) {seen[:4]} instead",
            )
        for wid, secs in sorted(fenced.items()):
            w = d.writes[wid]
            w.seen_fenced = self.cycle
            what = "issued after the fence" if w.fenced else f"discarded ({w.discarded})"
            self.violation(
                "fenced_visible",
                f"{where}: write {wid} (session {w.session}, {what}) visible on "
                f"{len(secs)} sector(s) {secs[:4]}",
            )
        for msg in d.violations:
            self.violation("other", msg)
        d.violations.clear()
        if k is not None:
            with d.lock:
                top = k
            d.barrier(top, f"prefix {k} shown by the new owner after a force-attach")
        self.log("check", d=d.name, why=why, owner=d.owner, mode=d.mode, k=k,
                 discarded=f.discarded, verified=f.verified, lost=len(lost),
                 fenced=len(fenced), garbage=len(garbage))  # fmt: skip
        self.result.writes_verified = sum(self.verified_count(x) for x in self.disks)
        return not (lost or fenced or garbage)

    @staticmethod
    def verified_count(d: Disk) -> int:
        with d.lock:
            return sum(1 for w in d.writes.values()
                       if w.state == ACKED and not w.fenced and not w.discarded)  # fmt: skip

    def check_all(self, why: str) -> None:
        for d in self.disks:
            if d.att is not None:
                self.check(d, why)
        for d in self.disks:  # a connection that died meanwhile (its export was restarted)
            pid = (d.att or {}).get("pid")
            if d.owner and (self.clients[d.name].h is None or not (pid and pid_alive(pid))):
                self.serve_again(d, dead_pid=pid if pid and not pid_alive(pid) else None)
        for d in self.disks:
            if d.session is not None:
                self.clients[d.name].resume()

    # -- faults --------------------------------------------------------------------------

    def pick_disk(self) -> Disk:
        return self.sched.choice(self.disks)

    def f_kill_nbdkit(self) -> str:
        d = self.pick_disk()
        assert d.att is not None and d.owner is not None
        pid: int | None = d.att.get("pid")
        mode = d.mode
        delay = self.sched.uniform(0, 1.5)
        killed = pid is not None and self.kill_nbdkit_pid(pid, d.att["socket"])
        time.sleep(delay)
        self.serve_again(d, dead_pid=pid)
        return f"{d.name}@{d.owner}({mode}) pid {pid} killed={killed}, now {d.mode}"

    def f_kill_serve(self) -> str:
        name = self.sched.choice("ab")
        host = self.hosts[name]
        owned = [d for d in self.disks if d.owner == name]
        move = [d for d in owned if self.sched.random() < 0.4]
        delay = self.sched.uniform(0, 2)
        pids = [(d.att or {}).get("pid") for d in owned]
        host.kill9()  # its clients' writes are in flight: the connections die under them
        for pid in pids:
            if pid:
                deadline = time.monotonic() + 10
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if pid_alive(pid):
                    self.warn(f"nbdkit {pid} outlived its killed service by 10 s")
        moved = []
        for d in move:  # taken by the other host while this one is down
            self.force_to(d, self.other(name), window=0.0)
            moved.append(d.name)
        time.sleep(delay)
        try:
            host.start()
        except AssertionError as e:
            self.warn(f"host {name} did not come back: {e}; trying another port")
            from blockstore.host.embedded import free_ports

            host.port = free_ports(1)[0]
            host.start()
        for d, pid in zip(owned, pids, strict=True):
            if d.name not in moved:
                self.serve_again(d, dead_pid=pid)
        return f"host {name} (owned {[d.name for d in owned]}, moved {moved})"

    def force_to(self, d: Disk, target: str, window: float) -> bool:
        """Force-attach `d` on `target`; the old client keeps writing for `window` seconds
        (every write it issues from now on is fenced), then the new owner is checked."""
        old_sess, old_mode = d.session, d.mode
        att = self.api(target, "POST", f"/v1/disks/{d.name}/attach", {"vm": d.vm, "force": True})
        if att is None:
            return False
        if old_sess is not None:
            with d.lock:
                old_sess.fenced_at = time.monotonic()
        self.log("fence", d=d.name, old=old_sess.sid if old_sess else None, to=target)
        old_pid = (d.att or {}).get("pid")
        old_sock = (d.att or {}).get("socket")
        time.sleep(window)
        c = self.clients[d.name]
        self.pause(c)
        c.disconnect()
        d.session = None
        self.took(d, target, att)
        if old_pid and old_sess is not None and old_sess.host != target:
            deadline = time.monotonic() + 10
            while pid_alive(old_pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if pid_alive(old_pid):
                self.warn(f"{d.name}: fenced export pid {old_pid} ({old_sock}) still runs "
                          "10 s after the force-attach")  # fmt: skip
        self.check(d, f"force-attach to {target} (was {old_mode})", lossy=old_mode == "readwrite")
        return self.reconnect(d)

    def f_force_attach(self) -> str:
        d = self.pick_disk()
        src = d.owner or "?"
        target = self.other(src)
        window = self.sched.uniform(0.3, 2.5)
        mode = d.mode
        ok = self.force_to(d, target, window)
        return f"{d.name} {src}->{target} ({mode}, old client writes {window:.1f} s more) ok={ok}"

    def f_store_pause(self) -> str:
        assert self.store is not None
        secs = self.sched.uniform(1, 6)
        self.store.server.pause()
        try:
            time.sleep(secs)
        finally:
            self.store.server.resume()
        time.sleep(0.5)
        self.recover_all()
        return f"SIGSTOP store {secs:.1f} s"

    def f_proxy(self) -> str:
        assert self.proxy is not None
        kind = self.sched.choice(["503", "500", "reset", "truncate", "stall", "down"])
        path = self.sched.choice([None, "/seg/", "/record/"])
        methods = self.sched.choice([None, {"PUT"}, {"GET"}])
        secs = self.sched.uniform(1, 6)
        self.proxy.stall_seconds = secs + 2
        self.proxy.arm(kind, path=path, methods=methods)
        try:
            time.sleep(secs)
        finally:
            self.proxy.clear()
        time.sleep(0.5)
        self.recover_all()
        return f"host a's store: {kind} path={path} methods={methods} for {secs:.1f} s"

    def harness_error(self, what: str, e: Exception) -> None:
        """An unexpected exception in the thrasher itself (not a product violation): logged
        with its traceback, then every host is made to run and every disk served again."""
        import traceback

        self.result.harness_errors += 1
        self.log("harness_error", what=what, tb=traceback.format_exc())
        self.warn(f"harness error in {what}: {e!r} (traceback in events.jsonl)")
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.server.resume()
        if self.proxy is not None:
            self.proxy.clear()
        for name, host in self.hosts.items():
            if host.proc is None or host.proc.poll() is not None:
                try:
                    host.start()
                except AssertionError as err:
                    self.warn(f"host {name} does not start: {err}")
        for d in self.disks:
            if d.owner is None:
                continue
            try:
                self.serve_again(d)
            except Exception as err:
                self.warn(f"{d.name}: not served again after a harness error: {err!r}")

    def recover_all(self) -> None:
        """After a store outage: a client whose connection died is connected again (its
        export may have been restarted by the supervisor)."""
        for d in self.disks:
            c = self.clients[d.name]
            if c.h is None and d.owner is not None:
                self.serve_again(d)

    def f_caching(self) -> str:
        d = self.pick_disk()
        mode = self.sched.choice([m for m in MODES if m != d.record_mode])
        host = self.sched.choice("ab")
        if self.api(host, "PATCH", f"/v1/disks/{d.name}", {"caching": mode}) is not None:
            d.record_mode = mode
        return f"{d.name} record caching -> {mode} via {host} (export keeps {d.mode})"

    def f_detach_attach(self) -> str:
        d = self.pick_disk()
        src = d.owner
        assert src is not None
        c = self.clients[d.name]
        self.pause(c)
        c.disconnect()
        d.session = None
        with d.lock:
            upto = d.next_wid - 1
        detached = False
        for _ in range(6):
            status, out = self.hosts[src].call("POST", f"/v1/disks/{d.name}/detach")
            self.log("api", host=src, method="POST", path="detach", status=status, out=out)
            if status == 200:
                detached = True
                break
            time.sleep(1)
        if not detached:
            self.warn(f"{d.name}: detach on {src} failed: {status} {out}")
            self.serve_again(d)
            return f"{d.name} detach on {src} failed ({status})"
        d.barrier(upto, f"detach from {src}")
        d.att, d.owner = None, None
        target = self.sched.choice("ab")
        att = self.api(target, "POST", f"/v1/disks/{d.name}/attach", {"vm": d.vm})
        if att is None:
            target = self.other(target)
            att = self.api(target, "POST", f"/v1/disks/{d.name}/attach", {"vm": d.vm})
        if att is None:
            raise RuntimeError(f"{d.name}: could not attach it anywhere after a detach")
        self.took(d, target, att)
        self.reconnect(d)
        return f"{d.name} {src}->{target} now {d.mode}"

    def f_resize(self) -> str:
        d = self.pick_disk()
        if d.size + MiB > self.max_size:
            return f"{d.name} at its maximum size"
        new = d.size + self.sched.choice([1, 2]) * MiB
        assert d.owner is not None
        if self.api(d.owner, "PATCH", f"/v1/disks/{d.name}", {"size_bytes": new}) is None:
            return f"{d.name} grow failed"
        d.size = new
        self.reconnect(d)  # a new connection sees the new size; the client writes all of it
        return f"{d.name} grown to {new >> 20} MiB on {d.owner}"

    def f_snapshot(self) -> str:
        d = self.pick_disk()
        assert d.owner is not None
        with d.lock:
            upto = d.next_wid - 1  # acknowledged before the call: covered by its flush
            inflight = d.writes.get(upto)
            if inflight is not None and inflight.state != ACKED:
                upto -= 1
        snap = f"s{self.cycle}"
        out = self.api(d.owner, "POST", f"/v1/disks/{d.name}/snapshots", {"name": snap})
        if out is None:
            return f"{d.name} snapshot failed"
        d.barrier(upto, f"snapshot {snap} on {d.owner}")
        return f"{d.name} snapshot {snap} on {d.owner}"

    # -- the run -------------------------------------------------------------------------

    def run(self) -> Result:
        t0 = time.monotonic()
        try:
            self.setup()
            for d in self.disks:
                self.clients[d.name].resume()
            weights = [w for _, w in FAULTS]
            names = [n for n, _ in FAULTS]
            for cycle in range(1, self.cycles + 1):
                self.cycle = cycle
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self.say(f"time is up after {self.cycle - 1} cycles")
                    break
                time.sleep(self.sched.uniform(0.5, 2.0))
                fault = self.sched.choices(names, weights)[0]
                self.log("fault", cycle=self.cycle, fault=fault)
                try:
                    what = getattr(self, f"f_{fault}")()
                except Exception as e:  # the harness's own failure: say so, carry on
                    self.harness_error(fault, e)
                    what = f"harness error {e!r}"
                self.result.faults[fault] += 1
                self.result.cycles = self.cycle
                try:
                    self.check_all(fault)
                except Exception as e:
                    self.harness_error(f"check after {fault}", e)
                acked = sum(d.stats["acked"] for d in self.disks)
                self.say(f"cycle {self.cycle}/{self.cycles} {fault}: {what}; {acked} acked, "
                         f"{len(self.result.violations)} violations")  # fmt: skip
            self.final()
        finally:
            self.result.wall_seconds = time.monotonic() - t0
            self.result.stats = {d.name: dict(d.stats) for d in self.disks}
            self.teardown()
        return self.result

    def final(self) -> None:
        """Flush, detach every disk cleanly, attach it on the other host, check everything."""
        self.cycle += 1
        for d in self.disks:
            c = self.clients[d.name]
            self.pause(c)
            c.disconnect()
            d.session = None
            src = d.owner
            assert src is not None
            with d.lock:
                upto = d.next_wid - 1
            for _ in range(6):
                status, out = self.hosts[src].call("POST", f"/v1/disks/{d.name}/detach")
                if status == 200:
                    break
                time.sleep(1)
            else:
                self.warn(f"{d.name}: final detach on {src} failed: {status} {out}")
                continue
            d.barrier(upto, f"final detach from {src}")
            att = self.api(self.other(src), "POST", f"/v1/disks/{d.name}/attach", {"vm": d.vm})
            if att is None:
                continue
            self.took(d, self.other(src), att)
            self.sid += 1
            d.session = Session(self.sid, self.other(src), att.get("caching") or "?",
                                att.get("pid"), att["socket"])  # fmt: skip
            self.check(d, "final detach and attach on the other host")


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (not a zombie); a process exiting while /proc is read counts as gone
    (tests/support/servehost.py's version lets that ProcessLookupError through)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "State:\tZ" not in status


def nbdkit_mode(pid: int | None) -> str | None:
    """The cache= argument of a running export (none for a disk without a host cache)."""
    if not pid:
        return None
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # ProcessLookupError included
        return None
    for arg in cmd:
        if arg.startswith(b"cache="):
            return arg[6:].decode()
    return "none" if cmd and cmd[0].endswith(b"nbdkit") else None


def _nbdkits(naming: str) -> Iterator[tuple[int, list[bytes]]]:
    """(pid, command line) of every live nbdkit with an argument containing `naming`."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        named = any(naming.encode() in a for a in cmd)
        if cmd and cmd[0].endswith(b"nbdkit") and named and pid_alive(int(p.name)):
            yield int(p.name), cmd


def processes_under(workdir: Path) -> list[tuple[int, str]]:
    """nbdkit processes whose command line names a path under `workdir`."""
    return [(pid, b" ".join(cmd).decode(errors="replace")) for pid, cmd in _nbdkits(str(workdir))]


def find_nbdkit(sock: str) -> int | None:
    """The pid of the nbdkit whose command line names `sock`, if one runs."""
    return next((pid for pid, cmd in _nbdkits(sock) if sock.encode() in cmd), None)


def summary(res: Result) -> dict[str, Any]:
    return {
        "seed": res.seed,
        "cycles": res.cycles,
        "writes_verified": res.writes_verified,
        "lost": res.lost,
        "fenced_visible": res.fenced_visible,
        "garbage": res.garbage,
        "other": res.other,
        "harness_errors": res.harness_errors,
        "violations": res.violations,
        "warnings": res.warnings,
        "faults": dict(res.faults),
        "wall_seconds": round(res.wall_seconds, 1),
        "per_disk": res.stats,
        "machine": {"nproc": os.cpu_count(), "uname_r": os.uname().release},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cycles", type=int, default=200)
    p.add_argument("--minutes", type=float, default=None, help="stop after this long")
    p.add_argument("--disks", type=int, default=3, help="disks; modes cycle none/readonly/rw")
    p.add_argument("--rate", type=float, default=40.0, help="client requests per second per disk")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the work directory after a clean run")
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"thrash-{args.seed}-"))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    t = Thrasher(seed=args.seed, cycles=args.cycles, minutes=args.minutes, disks=args.disks,
                 workdir=workdir, rate=args.rate, say=lambda s: print(s, flush=True))  # fmt: skip
    res = t.run()
    (workdir / "summary.json").write_text(json.dumps(summary(res), indent=2, default=str))
    print(f"faults: {dict(res.faults)}; wall {res.wall_seconds:.0f} s; work dir {workdir}")
    for w in res.warnings:
        print(f"warning: {w}")
    for v in res.violations:
        print(f"violation: {v}")
    print(res.line())
    if res.violations:
        print(f"seed {res.seed}: {len(res.violations)} violations; logs kept in {workdir}")
        return 1
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
