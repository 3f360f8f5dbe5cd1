"""The log rule: which objects of a volume's segment log count, decided one position at a time.

Place: used by `blockstore/engine/volume.py` everywhere a log is read or taken over: replay at every
open (writable, read-only, snapshot-free views), a new writer's fence, and a writer that resumes
after its own torn PUT. There is exactly one rule, `LogRule.judge`, so every reader and every
fencer that looks at the same immutable objects in the same order reaches the same verdicts
(docs/format.md, "Fencing", has the argument).

What a position can hold: nothing (the log ends there), a segment or fence of some epoch (a
fence is a segment with no records), or a *torn* object (empty: SeaweedFS keeps one when a PUT
dies before its body). The rule keeps three things: the log epoch E (the highest epoch applied),
the first fence of every epoch, and whether E's run is *broken* by a torn object of E's writer.

Guarantees, given the writer rules (P) bounded reach and (Q) in-order acknowledgement of
docs/format.md:

- an object of an epoch above E is that epoch's first fence: it is applied and starts its run;
- an object of an epoch below E is void (a fenced writer's late PUT);
- a torn object inside E's fence span (the `FENCE_SPAN` positions from E's first fence, where
  E's writer only ever PUT fences) is void and harmless; elsewhere it breaks E's run: its writer
  acknowledged nothing from there on, so E's later objects are void, until E's writer *resumes*
  with a fence of its own epoch at least `FENCE_WINDOW` positions after the torn one (beyond
  everything it could still have in flight), or a newer epoch's first fence takes the log;
- a torn object never ends the log by itself; only a missing position does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blockstore.format.segment import SegmentHeader

# Part of the format. A writer never has a segment PUT outstanding more than FENCE_WINDOW
# positions past the last position it has accepted (acknowledged, fenced or replayed).
FENCE_WINDOW = 8
# Part of the format. A new writer holds (or has seen held) every position of [F, F + FENCE_SPAN)
# before it writes data at F + FENCE_SPAN, F being its first fence. Openers fence in batches of
# FENCE_SPAN positions, so an older opener still fencing reaches at most F + FENCE_SPAN - 1.
FENCE_SPAN = 32


@dataclass
class LogRule:
    """The verdict state of one reading of the log (see the module docstring)."""

    epoch: int = 0  # the log epoch E: highest epoch applied so far
    fences: list[int] = field(default_factory=list)  # first fence position of every epoch
    broken_at: int = 0  # position of the torn object that broke E's run (0: not broken)

    def in_span(self, pos: int) -> bool:
        """Whether `pos` lies in the current epoch's fence span."""
        return bool(self.fences) and self.fences[-1] <= pos < self.fences[-1] + FENCE_SPAN

    def judge(self, pos: int, hdr: SegmentHeader | None) -> bool:
        """Take the object at `pos` (None: torn) into the state; True when it is applied.
        Positions must be judged in order, each once, none skipped."""
        if hdr is None:
            if not self.broken_at and not self.in_span(pos):
                self.broken_at = pos
            return False
        if hdr.epoch > self.epoch:
            self.epoch = hdr.epoch
            self.fences.append(pos)
            self.broken_at = 0
            return True
        if hdr.epoch < self.epoch:
            return False
        if self.broken_at:
            if not hdr.records and pos >= self.broken_at + FENCE_WINDOW:
                self.broken_at = 0  # E's writer resumed here
                return True
            return False
        return True
