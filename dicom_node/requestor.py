"""A race-free reactor pause for pynetdicom's requestor associations.

Every ``send_*`` method of a pynetdicom 3.0.4 association pauses the association's reactor thread
before it sends a request, so that the reactor cannot take the response off the DIMSE queue (it
would discard it as an unexpected message): it clears ``_reactor_checkpoint``, then waits until
``_is_paused`` is true. The reactor sets ``_is_paused = True`` *before* it waits at the checkpoint
and ``False`` only after passing it, so a ``send_*`` that clears the checkpoint just after the
reactor passed it reads a stale True, sends, and when the response arrives before the reactor's
next look at the queue (a fast peer, a busy machine) the reactor takes it. The ``send_*`` then
waits its whole ``dimse_timeout`` for a response that already came, and the association hangs
(pynetdicom #435). With 20 concurrent associations on 2 cores while a worker analysed, one
association in 20 hung this way within a minute.

:func:`guard` closes the window on an established association: ``_is_paused`` reads false from the
moment the reactor passes the checkpoint until it returns to it, and the reactor's own look at the
queue takes nothing once the checkpoint is cleared. Whichever of the two threads runs first, the
response goes to the ``send_*`` that waits for it.
"""
from __future__ import annotations

from typing import Any

from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider


class _GuardedAssociation(Association):
    @property  # type: ignore[override]
    def _is_paused(self) -> bool:
        return not self.__dict__.get("_reactor_busy", False)

    @_is_paused.setter
    def _is_paused(self, paused: bool) -> None:
        self.__dict__["_reactor_busy"] = not paused


class _GuardedDIMSE(DIMSEServiceProvider):
    def get_msg(self, block: bool = False) -> Any:
        # Only the reactor reads without blocking (pynetdicom 3.0.4); a send_* reads blocking.
        if not block and not self.assoc._reactor_checkpoint.is_set():
            return None, None
        return super().get_msg(block)


def guard(assoc: Association) -> Association:
    """Make ``assoc`` (a requestor, from ``AE.associate``) pause its reactor without the race;
    returns it. Safe while its reactor thread runs: both classes are looked up on every use."""
    if type(assoc) is Association:
        assoc.__class__ = _GuardedAssociation
    if type(assoc.dimse) is DIMSEServiceProvider:
        assoc.dimse.__class__ = _GuardedDIMSE
    return assoc
