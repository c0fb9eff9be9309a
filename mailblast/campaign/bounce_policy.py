"""Which findings suppress an address: pure, and tested alone.

- A hard bounce, a complaint and an unsubscribe suppress at once.
- Soft bounces suppress once there are ``limit`` of them within ``days`` (3 in 30 by default):
  a full mailbox or a server down for a day is no reason to drop someone, a month of them is.
- A recipient delivered to again after soft bounces starts from zero (the store gives only the
  soft bounces after the last delivery).
- Auto-replies and unrelated mail change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailblast.campaign.bounce_kinds import Kind

DAY = 86_400.0
SOURCE_OF = {
    Kind.HARD: "bounce",
    Kind.SOFT: "bounce",
    Kind.COMPLAINT: "complaint",
    Kind.UNSUBSCRIBE: "unsubscribe",
}


@dataclass(frozen=True)
class SoftRule:
    limit: int = 3
    days: float = 30.0

    def __post_init__(self) -> None:
        if self.limit < 1 or not self.days > 0:
            raise ValueError("soft bounces: limit must be at least 1 and days more than 0")


@dataclass(frozen=True)
class Decision:
    suppress: bool
    why: str  # what the dry run and the summary say


def decide(kind: Kind, now: float, earlier_soft: Sequence[float], rule: SoftRule = SoftRule()) -> Decision:
    """What to do about one finding; ``earlier_soft`` are the address's soft bounces on record
    since its last delivery (times, any order), this one not among them."""
    if kind.ignored:
        return Decision(False, f"{kind}: ignored")
    if kind is not Kind.SOFT:
        return Decision(True, f"{kind}: suppressed at once")
    window_start = now - rule.days * DAY
    recent = sum(1 for at in earlier_soft if window_start < at <= now) + 1
    if recent >= rule.limit:
        return Decision(True, f"soft bounce {recent} of {rule.limit} within {rule.days:g} days: suppressed")
    return Decision(False, f"soft bounce {recent} of {rule.limit} within {rule.days:g} days: counted")
