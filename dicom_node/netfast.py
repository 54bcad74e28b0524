"""Presentation contexts and receive-path tuning for the pynetdicom acceptor.

The tuning replaces pynetdicom internals, so it holds for :data:`PYNETDICOM_VERSION` only
(pinned in ``pyproject.toml``; a test fails on any other version). Against stock pynetdicom it
receives 1.2-1.9x as many images per second (``bench/receive.py --receiver stock --receiver
tuned``, figures in ``docs/benchmarks.md``); re-measure before moving the pin.

Where the time went (2-core machine, bench/receive.py; profiled with py-spy and strace):

* ``AssociationSocket.recv`` reads in 4 KiB pieces: ~130 ``recv`` calls, each a GIL release and
  re-acquire, per 512x512 CT slice. When associations overlap, every re-acquire can wait for
  another thread's switch interval, which is how throughput collapses (pynetdicom #917, #367).
  :mod:`dicom_node.pdu_read` reads ahead on plain TCP and fills each PDU's buffer with
  ``recv_into``: about 6 system calls per slice instead of 20, and header and body in one buffer.
* pynetdicom deep-copies the server's supported contexts for every association, re-validating
  each UID with a regular expression: with every storage class in every transfer syntax
  (~180 x 45 UIDs) that is tens of milliseconds of GIL time per association.
  :class:`SharedContexts` hands every association the same list (contexts are only read
  during negotiation).
* Both reactor threads of an association poll with fixed 1 ms sleeps, ~3 ms per instance:
  :mod:`dicom_node.reactor` makes them event-driven.
* Negotiating an association turns every proposed abstract and transfer syntax into a pydicom
  UID, checked against two regular expressions each time: a sender proposing ~120 SOP classes
  in 3 syntaxes costs ~20 ms of GIL time per association, which concurrent associations pay
  one after another. :func:`cache_uid_checks` remembers each checked value (the same few hundred
  UIDs come in every association), and passes conformant SOP Instance UIDs with one expression.
* Each C-STORE-RSP command set was encoded twice by pydicom's generic writer (group length, then
  the message): more GIL time than the whole store handler. :class:`FastDIMSE` writes the six
  elements of a Success response by hand (PS3.7 9.3.1.2, implicit VR little endian) and sends
  the PDU straight from the thread that served the request instead of queueing it for the DUL thread
  (0.3-0.6 ms less per instance: one thread hand-over and pynetdicom's state machine);
  failures, other messages and debug logging still go through pynetdicom.
* Decoding each C-STORE request into pynetdicom's primitives (command set through pydicom, the
  data set copied fragment by fragment into a growing buffer, UIDs validated, the service class
  and event machinery) was most of the interpreter time left per instance:
  :mod:`dicom_node.store_path` assembles C-STORE requests from the P-DATA values itself and hands
  every other message to pynetdicom.
"""
from __future__ import annotations

import functools
import re
import socket
from typing import Any

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless,
                         RLELossless)
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context
from pynetdicom import ae as pynetdicom_ae
from pynetdicom import dimse_primitives, evt, pdu_items, pdu_primitives, presentation, utils
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

from dicom_node.pdu_read import MAX_PDU, FastSocket  # noqa: F401 - MAX_PDU: what scp.make_ae announces
from dicom_node.reactor import EventDUL
from dicom_node.reactor_association import EventAssociation
from dicom_node.store_path import StoreAssembler, send_success_now

#: The pynetdicom release whose internals :mod:`dicom_node.reactor` copies and this module
#: subclasses, and against which the tuning was measured.
PYNETDICOM_VERSION = "3.0.4"

#: The acceptor picks the first of these that the requestor proposes for a context: native
#: syntaxes first (no decoding later, VRs kept), lossless before lossy, big endian last.
_PREFERRED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
              JPEGLSLossless, JPEG2000Lossless, RLELossless, JPEGLosslessSV1]


def transfer_syntaxes() -> list[str]:
    rest = [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in _PREFERRED and ts != ExplicitVRBigEndian]
    return [str(ts) for ts in _PREFERRED + rest + [ExplicitVRBigEndian]]


def storage_uids() -> list[str]:
    """pynetdicom's storage SOP classes plus the storage classes of pydicom's UID dictionary that
    pynetdicom does not list (protocol, inventory, implant template, DICOS, ...)."""
    uids = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    known = set(uids)
    for uid, (name, kind, _, retired, _) in UID_dictionary.items():
        if (kind == "SOP Class" and "Storage" in name and uid not in known and not retired
                and "Storage Commitment" not in name and "Media Storage" not in name):
            uids.append(uid)
    return uids


def storage_contexts() -> list[PresentationContext]:
    """Verification plus every storage SOP class, each in every transfer syntax."""
    syntaxes = transfer_syntaxes()
    return [build_context(Verification)] + [build_context(uid, syntaxes) for uid in storage_uids()]


class SharedContexts(list):  # type: ignore[type-arg]
    """The server's supported contexts, handed to every association as they are.

    pynetdicom deep-copies them for each association; acceptor negotiation only reads them
    (it builds new contexts for its answer), so one list serves all.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> "SharedContexts":
        return self


class FastDIMSE(DIMSEServiceProvider):
    """Sends C-STORE-RSP Success hand-encoded from the thread that served the request
    (:func:`dicom_node.store_path.send_success_now`); everything else as pynetdicom does."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if (type(primitive) is C_STORE and primitive.Status == 0x0000
                and primitive.MessageIDBeingRespondedTo is not None
                and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
                and send_success_now(self.assoc, context_id, int(primitive.MessageIDBeingRespondedTo),
                                     str(primitive.AffectedSOPClassUID), str(primitive.AffectedSOPInstanceUID))):
            return
        super().send_msg(primitive, context_id)


_UNCACHED_SET_UID = utils.set_uid

#: A conformant UID (PS3.5 9.1: dot-separated numbers without leading zeros, at most 64 characters)
#: passes both of pynetdicom's checks, which take two regular expressions and a warning check.
_CONFORMANT_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


@functools.lru_cache(maxsize=8192)
def _checked_uid(value: str | bytes | None, name: str, allow_empty: bool, allow_none: bool, validate: bool) -> Any:
    return _UNCACHED_SET_UID(value, name, allow_empty, allow_none, validate)


def _set_uid(value: Any, name: str, allow_empty: bool = True, allow_none: bool = True, validate: bool = True) -> Any:
    kind = type(value)
    if "Instance" in name:
        # SOP Instance UIDs come once each (remembering them would only push the syntaxes out),
        # two or three times per C-STORE: conformant ones skip the regular expressions.
        if kind is str and len(value) <= 64 and _CONFORMANT_UID.fullmatch(value):
            return UID(value)
        return _UNCACHED_SET_UID(value, name, allow_empty, allow_none, validate)
    if value is None or kind in (str, bytes):
        return _checked_uid(value, name, allow_empty, allow_none, validate)
    if kind is UID and not vars(value):
        # Decoded PDU items hand over plain UIDs; one carrying state (a private syntax's
        # encoding) is never shared.
        return _checked_uid(str(value), name, allow_empty, allow_none, validate)
    return _UNCACHED_SET_UID(value, name, allow_empty, allow_none, validate)


def cache_uid_checks() -> None:
    """Make pynetdicom's ``set_uid`` remember its result per value (UIDs are immutable; a value
    that fails its check raises every time, as before: exceptions are not cached)."""
    for module in (utils, pdu_items, pdu_primitives, presentation, dimse_primitives, pynetdicom_ae):
        module.set_uid = _set_uid  # type: ignore[attr-defined]


class _RequestHandler(RequestHandler):
    def _create_association(self) -> Any:
        assoc = super()._create_association()
        # Threads are not started yet; the DUL thread's target was bound at construction.
        if type(assoc) is Association and type(assoc.dul) is DULServiceProvider:
            assoc.__class__ = EventAssociation
            assoc._serving_setup()
            assoc.dul.__class__ = EventDUL
            assoc.dul._wake_setup()
            assoc.dul._target = make_target(assoc.dul.run_reactor)
            assoc.before_release = getattr(self.server, "before_release", None)
            store = getattr(self.server, "store_function", None)
            if store is not None:
                assoc.store_function = store
                assoc.store_assembler = StoreAssembler(lambda: {
                    cid: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                    for cid, cx in assoc._accepted_cx.items()})
        if type(assoc.dimse) is DIMSEServiceProvider:
            assoc.dimse.__class__ = FastDIMSE
        sock = assoc.dul.socket
        if type(sock) is AssociationSocket:
            sock.__class__ = FastSocket
        self.assoc = assoc  # the connection's request thread waits for it (counting_server)
        return assoc


def tune_server(server: ThreadedAssociationServer) -> None:
    """Apply the receive-path tuning to a started server (before its first association)."""
    cache_uid_checks()
    server.contexts = SharedContexts(server.contexts)
    server.RequestHandlerClass = _RequestHandler
    # Replies are one small PDU per instance; without TCP_NODELAY a response can wait for the
    # peer's delayed ACK (the 40 ms stalls seen with dcmtk's defaults).
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
