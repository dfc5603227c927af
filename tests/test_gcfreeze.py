"""GcFreezer (service/push/gcfreeze.py): freezes once the open streams settle, unfreezes once half have closed."""

from __future__ import annotations

import gc

from service.push.gcfreeze import MIN_GROWTH, GcFreezer


def test_freezes_after_streams_settle_and_unfreezes_when_half_have_closed() -> None:
    freezer = GcFreezer(lambda: 0, settle_seconds=2.0)
    gc.unfreeze()
    try:
        for count in (0, 500, 2000, 4000):  # a storm of new connections: no freeze mid-storm
            freezer.step(count, 0.5)
        assert freezer.freezes == 0 and gc.get_freeze_count() == 0
        for _ in range(4):  # steady for 2 s
            freezer.step(4000, 0.5)
        assert freezer.freezes == 1 and freezer.frozen_at == 4000 and gc.get_freeze_count() > 0
        for _ in range(10):  # still steady, nothing new: frozen once
            freezer.step(4010, 0.5)
        assert freezer.freezes == 1
        freezer.step(4000 + MIN_GROWTH + 50, 0.5)  # more streams settle: frozen again, with them
        for _ in range(4):
            freezer.step(4000 + MIN_GROWTH + 50, 0.5)
        assert freezer.freezes == 2
        freezer.step(2000, 0.5)  # half of them closed: their cycles must become collectable again
        assert freezer.unfreezes == 1 and freezer.frozen_at == 0 and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


def test_off_at_zero() -> None:
    freezer = GcFreezer(lambda: 10_000, settle_seconds=0)
    freezer.start()  # no task: nothing runs (start needs no loop when off)
    assert freezer._task is None
