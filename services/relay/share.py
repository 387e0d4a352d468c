"""Which slots this relay should hold: a fair share among the live relays (pure decisions).

Every relay heartbeats a membership document (``services/relay/members.py``) and reads the
live ones, each with the number of slots it holds. The shares are computed the same way by
every relay from the same list: the members ranked by the slots they hold (most first, then by
instance id), the first ``slots mod live`` of them take ``ceil(slots/live)`` slots and the
others ``floor(slots/live)``, so the shares always add up to ``slots``. Ranking by what is held
keeps slots where they are: the relay that already holds the larger share keeps it, and only
the surplus moves (a relay that resumes after a pause does not take its slots back). A relay
above its share releases slots (each after the round in flight is finished and marked); a
relay below it takes free ones (released, or expired because their holder died). Nothing here
decides *who may publish*: that is each slot's lease (``services/relay/lease.py``); a relay
that briefly sees another membership than its peers can only fail to take a held slot.

Relays that disagree on ``RELAY_SLOTS`` (one started with another value) do not share: the
value most held slots are under prevails (then the one more relays have, then the smaller, so
every relay names the same one). A relay with another value is left out of everyone's share
and neither takes nor gives up a slot; the others keep or take every slot between them. So a
relay started with the wrong value can never leave a slot without a holder.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping


def fair_share(held: Mapping[str, int], me: str, slots: int) -> int:
    """How many of ``slots`` the relay ``me`` should hold among the live members ``held``
    (instance -> how many slots it holds now).

    ``me`` counts whether or not it is listed. Deterministic: every relay computes the same
    shares from the same membership, and they add up to ``slots``.
    """
    counts = {**held, me: held.get(me, 0)}
    ranked = sorted(counts, key=lambda instance: (-counts[instance], instance))
    base, extra = divmod(slots, len(ranked))
    return base + (1 if ranked.index(me) < extra else 0)


def prevailing_slot_count(members: Mapping[str, tuple[int, int]]) -> int:
    """The ``RELAY_SLOTS`` the relays go by, among ``members`` (instance -> (its RELAY_SLOTS,
    how many slots it holds)): the value the most held slots are under, then the value of the
    most relays, then the smaller one. Held slots come first so that relays already
    publishing are never overruled by newcomers; the last rule only makes the answer the same
    everywhere (a fresh start with as many relays on each value)."""
    if not members:
        raise ValueError("no member: at least the relay asking is one")
    weight: dict[int, tuple[int, int]] = {}
    for count, held in members.values():
        slots, relays = weight.get(count, (0, 0))
        weight[count] = (slots + held, relays + 1)
    return min(weight, key=lambda count: (-weight[count][0], -weight[count][1], count))


def dissenters(members: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """The members whose ``RELAY_SLOTS`` is not the prevailing one, with their value."""
    prevailing = prevailing_slot_count(members)
    return {instance: count for instance, (count, _) in members.items() if count != prevailing}


def to_release(held: Collection[int], share: int) -> list[int]:
    """The slots to give up to come down to ``share``: the highest numbered ones (any choice
    would do; a fixed one keeps two relays from trading the same slot back and forth)."""
    surplus = len(held) - share
    return sorted(held, reverse=True)[:surplus] if surplus > 0 else []


def to_acquire(free: Iterable[int], held_count: int, share: int) -> list[int]:
    """Free slots to try to take, lowest first, to come up to ``share``."""
    wanted = share - held_count
    return sorted(free)[:wanted] if wanted > 0 else []
