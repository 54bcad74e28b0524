"""Deterministic UIDs for the result objects.

A result object is identified by what it was made from (the source series), by what made it
(the model version) and by what it is (its object type), so running the same model on the
same series again yields byte-for-byte different files with the *same* Series and SOP Instance
UIDs.  A PACS then treats a resend as the same object instead of filing a duplicate.

Notes
-----
The UIDs live under the ``2.25`` arc, whose integer must be a UUID (ISO/IEC 9834-8, DICOM
PS3.5 B.2).  The UUID is a name-based version-5 UUID (RFC 4122 section 4.3) of the inputs, so
no registered root is needed and the UID is valid as well as deterministic.

``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` looks like the obvious tool but
ignores ``entropy_srcs`` when ``prefix`` is ``None`` and returns a *random* UID (pydicom
3.0.2, ``uid.py``); with ``prefix="2.25."`` it returns a 59-digit integer that is not a UUID.
It also joins its sources without a separator, so ``["1.2", "3"]`` and ``["1.", "23"]``
collide.  Hence ``uuid.uuid5`` over separator-joined parts.
"""
from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence

from pydicom.uid import UID

__all__ = ["OBJECT_TYPES", "result_series_uid", "result_uid", "source_key", "tracking_uid"]

#: Namespace of every UUID this project derives (a fixed uuid5 of the project's name, so it
#: never changes between releases; changing it would re-identify every past result).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dural-node:result-objects")

#: Object types that get their own series.  The status SRs differ by state so that a
#: "failed" report and a later "not analysed" report for the same series never share a UID.
OBJECT_TYPES = frozenset({"SEG", "SR", "SC", "KO", "SR_FAILED", "SR_NOT_ANALYSED"})

# Unit separator: cannot occur in a UID, a version string from a manifest, or a type name.
_SEP = "\x1f"
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _check(source_series_uid: str, model_version: str, object_type: str) -> None:
    if not isinstance(source_series_uid, str) or not _UID_RE.match(source_series_uid):
        raise ValueError(f"source_series_uid must be a DICOM UID; got {source_series_uid!r}")
    if not isinstance(model_version, str) or not model_version.strip():
        raise ValueError(f"model_version must be a non-empty string; got {model_version!r}")
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {sorted(OBJECT_TYPES)}; got {object_type!r}")


def _uid(*parts: str) -> UID:
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, _SEP.join(parts)).int}")


def source_key(source_series_uid: str, sop_instance_uids: Sequence[str]) -> UID:
    """A UID naming exactly the analysed input: the series plus the set of its instances.

    Builders pass it as ``source_series_uid`` to the functions below. A resend of the same
    instances gives the same result UIDs (the PACS keeps one copy), while a series re-opened
    with more (or fewer) slices gives new ones, so its new result is not dropped by a PACS as
    a duplicate of the stale one.

    Parameters
    ----------
    source_series_uid:
        Series Instance UID of the analysed CT series.
    sop_instance_uids:
        SOP Instance UIDs of the instances used (any order; duplicates ignored).

    Returns
    -------
    pydicom.uid.UID
        A ``2.25.<uuid>`` UID.
    """
    _check(source_series_uid, "-", "SEG")
    if isinstance(sop_instance_uids, str) or not sop_instance_uids:
        raise ValueError(f"sop_instance_uids must be a non-empty sequence of UIDs; got {sop_instance_uids!r}")
    digest = hashlib.sha256("\n".join(sorted({str(u) for u in sop_instance_uids})).encode()).hexdigest()
    return _uid("source", source_series_uid, digest)


def result_series_uid(source_series_uid: str, model_version: str, object_type: str) -> UID:
    """Series Instance UID of the result series of one object type.

    Parameters
    ----------
    source_series_uid:
        Series Instance UID of the analysed CT series.
    model_version:
        ``ModelInfo.version``; a new model version gives new result series.
    object_type:
        One of :data:`OBJECT_TYPES`.

    Returns
    -------
    pydicom.uid.UID
        A ``2.25.<uuid>`` UID, at most 44 characters.

    Raises
    ------
    ValueError
        When an argument is not a UID, is empty, or names an unknown object type.
    """
    _check(source_series_uid, model_version, object_type)
    return _uid("series", source_series_uid, model_version, object_type)


def result_uid(source_series_uid: str, model_version: str, object_type: str, index: int = 0) -> UID:
    """SOP Instance UID of the ``index``-th instance of a result series.

    Parameters
    ----------
    source_series_uid, model_version, object_type:
        As for :func:`result_series_uid`.
    index:
        Position of the instance within its series (e.g. the key image number), ``>= 0``.

    Returns
    -------
    pydicom.uid.UID
        A ``2.25.<uuid>`` UID, at most 44 characters.

    Raises
    ------
    ValueError
        As for :func:`result_series_uid`, or when ``index`` is negative.
    TypeError
        When ``index`` is not an int.
    """
    _check(source_series_uid, model_version, object_type)
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"index must be an int; got {type(index).__name__}")
    if index < 0:
        raise ValueError(f"index must be >= 0; got {index}")
    return _uid("instance", source_series_uid, model_version, object_type, str(index))


def tracking_uid(source_series_uid: str, model_version: str, finding_name: str) -> UID:
    """Tracking UID shared by a SEG segment and the SR measurement group that describes it.

    Parameters
    ----------
    source_series_uid, model_version:
        As for :func:`result_series_uid`.
    finding_name:
        ``"SDH"`` or ``"EDH"``.

    Returns
    -------
    pydicom.uid.UID
        A ``2.25.<uuid>`` UID.
    """
    _check(source_series_uid, model_version, "SEG")
    if not isinstance(finding_name, str) or not finding_name:
        raise ValueError(f"finding_name must be a non-empty string; got {finding_name!r}")
    return _uid("tracking", source_series_uid, model_version, finding_name)
