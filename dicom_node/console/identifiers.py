"""Patient and order identifiers of a study, read from its own spooled header when shown.

The ledger keeps no PHI, so the worklist reads the accession number, patient name and ID,
study date and description from one spooled instance of the study the first time it is shown,
and keeps them in this process's memory only (bounded, least recently used dropped). A study
whose files were purged by retention shows none. Nothing here logs a value it read.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom

_TAGS = ["SpecificCharacterSet", "AccessionNumber", "PatientName", "PatientID", "StudyDate", "StudyDescription"]


@dataclass(frozen=True)
class StudyIdentifiers:
    """What a reader recognises a study by; empty strings when unknown."""

    accession_number: str = ""
    patient_name: str = ""
    patient_id: str = ""
    study_date: str = ""  # YYYY-MM-DD when the header had a valid DA
    study_description: str = ""
    readable: bool = True  # False when no spooled instance of the study could be read

    def to_dict(self) -> dict[str, str | bool]:
        return {"accession_number": self.accession_number, "patient_name": self.patient_name,
                "patient_id": self.patient_id, "study_date": self.study_date,
                "study_description": self.study_description, "header_readable": self.readable}


UNKNOWN = StudyIdentifiers(readable=False)


def _date(value: object) -> str:
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else ""


def read_identifiers(paths: Iterable[Path]) -> StudyIdentifiers:
    """Identifiers from the first readable file among ``paths`` (header only), or :data:`UNKNOWN`."""
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        except Exception:  # noqa: BLE001 - purged, partial or foreign file: try the next one
            continue
        return StudyIdentifiers(accession_number=str(ds.get("AccessionNumber", "") or "").strip(),
                                patient_name=str(ds.get("PatientName", "") or "").strip(),
                                patient_id=str(ds.get("PatientID", "") or "").strip(),
                                study_date=_date(ds.get("StudyDate")),
                                study_description=str(ds.get("StudyDescription", "") or "").strip())
    return UNKNOWN


class IdentifierCache:
    """Study UID -> :class:`StudyIdentifiers`, read once through ``paths_of(study_uid)``.

    Parameters
    ----------
    paths_of:
        Candidate files of a study (a few are enough; the first readable one is used).
    max_studies:
        Studies kept in memory; the least recently used go first.
    """

    def __init__(self, paths_of: Callable[[str], list[Path]], max_studies: int = 20000) -> None:
        self._paths_of = paths_of
        self._max = max_studies
        self._items: OrderedDict[str, StudyIdentifiers] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, study_uid: str) -> StudyIdentifiers:
        with self._lock:
            found = self._items.get(study_uid)
            if found is not None:
                self._items.move_to_end(study_uid)
                return found
        found = read_identifiers(self._paths_of(study_uid))
        if found.readable:  # an unreadable study may become readable (files still arriving)
            with self._lock:
                self._items[study_uid] = found
                while len(self._items) > self._max:
                    self._items.popitem(last=False)
        return found
