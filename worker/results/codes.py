"""Every coded concept the result objects use, with where it comes from.

Standard concepts are taken from pydicom's copy of the DICOM PS3.16 dictionary
(``pydicom.sr.codedict.codes``) so that a typo cannot slip in; the context group (CID) each
one is listed in is given in the comment.  Concepts that the standard does not have live in
one documented private coding scheme, :data:`PRIVATE_SCHEME` ("99DURAL").

Why a private scheme for SDH and EDH
------------------------------------
Neither PS3.16 (e.g. CID 7151 Segmentation Property Types, CID 7194 Morphologically Abnormal
Structure Segmentation Property Types) nor pydicom's dictionary lists a subdural- or
epidural-hematoma concept, and the SNOMED CT numbers found on the web for them disagree.
An invented or mistyped SCT code is worse than a private one (a receiver would trust it), so
both segments are typed with the standard SCT 50960005 "Hemorrhage" and the distinction is
carried by the Segment Label ("SDH"/"EDH") and by a private type modifier.  Coding scheme
designators starting with "99" are reserved for private schemes (PS3.3 section 8.2); every
object that uses one lists it in its Coding Scheme Identification Sequence (0008,0110).
"""
from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from highdicom.coding_schemes import CodingSchemeIdentificationItem

#: Private coding scheme of this project.
PRIVATE_SCHEME = "99DURAL"


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


def coding_scheme_identification() -> list[CodingSchemeIdentificationItem]:
    """Items for the Coding Scheme Identification Sequence of an object using 99DURAL codes."""
    return [
        CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME,
            name="dural-node private codes for extra-axial hematoma results",
            responsible_organization="dural-node project",
        )
    ]


# --- Segmentation (PS3.3 C.8.20.2 Segment Description Macro) ---------------------------
#: CID 7150 Segmentation Property Categories.
SEGMENT_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
#: CID 7151 / CID 7194; the only listed type that fits both classes (see module notes).
SEGMENT_TYPE = codes.SCT.Hemorrhage  # SCT 50960005
#: CID 4031 Common Anatomic Regions: where the segmented structures are.
ANATOMIC_REGION = codes.SCT.Head  # SCT 69536005

#: Private type modifiers that tell the two hemorrhage segments apart.
HEMATOMA_TYPE: dict[str, Code] = {
    "SDH": _private("SDH", "Subdural hematoma"),
    "EDH": _private("EDH", "Epidural hematoma"),
}

# --- Algorithm identification --------------------------------------------------------------
#: CID 7162 Surface Processing Algorithm Families, which the Algorithm Identification macro
#: uses for Algorithm Family Code Sequence.  It is a DCM code, not SCT.
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence  # DCM 123110
#: CID 7005 Contributing Equipment Purposes of Reference.
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment  # DCM 109102

# --- Measurement report (TID 1500 and its sub-templates) ---------------------------------
#: Procedure Reported (TID 1500 row 4, CID 100, extensible).  LOINC 24725-4 is "CT Head"
#: (LOINC long common name); pydicom lists it as ``codes.LN.HeadCT``.
PROCEDURE_CT_HEAD = Code("24725-4", "LN", "CT Head")
#: TID 1411 Finding Category.
FINDING_CATEGORY = SEGMENT_CATEGORY
#: TID 1411 Finding (the same type as the SEG segment it describes).
FINDING_TYPE = SEGMENT_TYPE

#: CID 7472 Volume Measurements.
VOLUME = codes.SCT.Volume  # SCT 118565006
#: UCUM millilitre.  pydicom has no code for it; the UCUM case-sensitive form is "mL".
UNIT_ML = Code("mL", "UCUM", "mL")
#: UCUM millimetre.
UNIT_MM = codes.UCUM.Millimeter

#: Maximum thickness of the collection is reported as a linear measurement ("Width", CID 7470
#: Linear Measurements) with the derivation "Maximum" (CID 3488 Min/Max/Mean, the TID 300
#: Derivation row).  No generic "thickness" concept exists for CT: LOINC 59089-3 (listed by
#: pydicom as "Thickness") is "ROI thickness by US", an ultrasound concept.
THICKNESS = codes.SCT.Width  # SCT 103355008
DERIVATION_MAXIMUM = codes.SCT.Maximum  # SCT 56851009

#: CID 210 Qualitative Evaluation Modifier Types.
LATERALITY = codes.SCT.Laterality  # SCT 272741003
#: CID 244 Laterality, keyed by ``Finding.laterality``.
LATERALITY_VALUES: dict[str, Code] = {
    "left": codes.SCT.Left,  # SCT 7771000
    "right": codes.SCT.Right,  # SCT 24028007
    "bilateral": codes.SCT.Bilateral,  # SCT 51440002
}

#: CID 240 Present-Absent.  Values of the explicit presence statement for each class, whose
#: concept name is the class's :data:`HEMATOMA_TYPE` code.
PRESENT = codes.SCT.Present  # SCT 52101004
ABSENT = codes.SCT.Absent  # SCT 272519000

#: Triage category of the whole series; rule in ``dicom_node.triage.triage_category``.
TRIAGE_CATEGORY = _private("TRIAGE", "AI triage category")
TRIAGE_VALUES: dict[str, Code] = {
    "critical": _private("CRITICAL", "Critical: meets a surgical size threshold"),
    "positive": _private("POSITIVE", "Positive: extra-axial hematoma present"),
    "negative": _private("NEGATIVE", "Negative: no extra-axial hematoma detected"),
}

#: State of a series the model did not produce a result for (status SR).
ANALYSIS_STATUS = _private("STATUS", "AI analysis status")
ANALYSIS_STATUS_VALUES: dict[str, Code] = {
    "not_analysed": _private("NOTANALYSED", "Not analysed"),
    "failed": _private("FAILED", "Analysis failed"),
}
#: Free-text reason in a status SR (DCM 121106, the generic comment concept of PS3.16).
REASON = codes.DCM.Comment

# --- Key Object Selection ----------------------------------------------------------------
#: CID 7010 Key Object Selection Document Titles.
KOS_TITLE = codes.DCM.OfInterest  # DCM 113000
