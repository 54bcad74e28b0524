"""HL7 v2.5.1 ORU^R01 over MLLP: the message (built and checked by hl7apy), the framing, the ACK.

Message layout (segments, fields this node fills)::

    MSH  3-6 applications/facilities (notify.hl7[].sending_*, receiving_*), 7 time,
         9 ORU^R01^ORU_R01, 10 control ID (same on every retry), 11 P, 12 2.5.1
    PID  3 patient ID, 5 patient name (DICOM PN and HL7 XPN share the family^given order)
    ORC  1 RE, 3 accession number (filler order number), 5 CM
    OBR  1 1, 3 accession number, 4 DURAL^AI SDH/EDH detection^99DURAL, 5 priority,
         18 accession number (IHE RAD), 22 result time, 25 F (final) or C (correction)
    TQ1  9 priority (table 0485), mapped per category by notify.hl7[].priority
    OBX  study instance UID (DCM 110180); per class one group sharing a sub-ID (OBX-4):
         presence (Y/N), volume mL, maximum thickness mm, side when present; the triage
         category; why there is no result (not_analysed/failed), or what limits it (an
         interrupted transfer); the model; SR and SEG
         instance UIDs. OBX-11 is F, or C for a correction.

No standard field carries an AI priority, hence the per-site mapping.
"""
from __future__ import annotations

import socket
import time
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from dicom_node.notify.notice import CLASSES, Notice
from dicom_node.worklist_config import Hl7Endpoint

__all__ = ["AckError", "START_BLOCK", "END_BLOCK", "build_oru", "frame", "parse_ack", "send_mllp", "unframe"]

VERSION = "2.5.1"
#: MLLP framing (HL7 v2 implementation guide, "Minimal Lower Layer Protocol").
START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"
#: Code system of this node's local observation codes.
LOCAL = "99DURAL"
_CLASS_TEXT = {"SDH": "Subdural hematoma", "EDH": "Epidural hematoma"}


class AckError(RuntimeError):
    """The RIS did not accept the message (AE, AR, a bad or missing ACK)."""


def _st(text: object) -> str:
    """Free text escaped for ER7 (HL7 v2 section 2.7.4: |, ^, &, ~ and the escape character), so
    a name or description holding one cannot shift the fields after it."""
    out = str(text).replace("\\", "\\E\\")
    for char, code in (("|", "F"), ("^", "S"), ("&", "T"), ("~", "R")):
        out = out.replace(char, f"\\{code}\\")
    return out.replace("\r", " ").replace("\n", " ")


def _hl7_time(when: float) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.localtime(when))


def _obx(group: Any, index: int, value_type: str, code: str, text: str, value: Any, *, sub_id: str = "",
         units: str = "", status: str = "F", when: str = "") -> None:
    obx = group.add_group("ORU_R01_OBSERVATION").obx
    obx.obx_1 = str(index)
    obx.obx_2 = value_type
    obx.obx_3 = f"{code}^{text}^{LOCAL if code != '110180' else 'DCM'}"
    if sub_id:
        obx.obx_4 = sub_id
    if value_type in ("ST", "NM"):
        obx.obx_5 = _st(value)
    else:
        obx.obx_5 = value  # coded values are ours, already in ER7 form
    if units:
        obx.obx_6 = f"{units}^{units}^UCUM"
    obx.obx_11 = status
    if when:
        obx.obx_14 = when


def build_oru(endpoint: Hl7Endpoint, notice: Notice, now: float | None = None) -> str:
    """The ORU^R01 for one notice, in ER7 with ``\\r`` between segments.

    Raises
    ------
    hl7apy.exceptions.ValidationError
        When the message breaks the v2.5.1 structure (a bug here, never bad input).
    """
    when = _hl7_time(now or time.time())
    status = "C" if notice.correction else "F"
    priority = endpoint.priority[notice.priority_category]
    msg = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = msg.msh
    for name, value in (("msh_3", endpoint.sending_application), ("msh_4", endpoint.sending_facility),
                        ("msh_5", endpoint.receiving_application), ("msh_6", endpoint.receiving_facility)):
        if value:
            getattr(msh, name).hd_1 = _st(value)
    msh.msh_7, msh.msh_9, msh.msh_10 = when, "ORU^R01^ORU_R01", notice.control_id
    msh.msh_11, msh.msh_12 = "P", VERSION
    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_3.cx_1 = _st(notice.patient_id)
    for index, part in enumerate(notice.patient_name.split("^")[:5], start=1):
        if part:
            setattr(pid.pid_5, f"xpn_{index}", _st(part))
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.orc.orc_1, order.orc.orc_5 = "RE", "CM"
    if notice.accession_number:
        order.orc.orc_3.ei_1 = _st(notice.accession_number)
        order.obr.obr_3.ei_1 = _st(notice.accession_number)
        order.obr.obr_18 = _st(notice.accession_number)
    obr = order.obr
    obr.obr_1, obr.obr_4, obr.obr_5 = "1", f"DURAL^AI SDH/EDH detection^{LOCAL}", priority
    obr.obr_22, obr.obr_25 = when, status
    order.add_group("ORU_R01_TIMING_QTY").tq1.tq1_9 = f"{priority}^^HL70485"
    rows: list[tuple[Any, ...]] = [("ST", "110180", "Study Instance UID", notice.study_uid, "", "")]
    for sub, name in enumerate(CLASSES, start=1):
        finding = notice.findings.get(name)
        if finding is None:
            continue
        present = "Y^Present^HL70136" if finding["present"] else "N^Absent^HL70136"
        rows += [("CWE", name, _CLASS_TEXT[name], present, str(sub), ""),
                 ("NM", f"{name}-VOL", f"{name} volume", finding["volume_ml"], str(sub), "mL"),
                 ("NM", f"{name}-THK", f"{name} maximum thickness", finding["max_thickness_mm"], str(sub), "mm")]
        if finding["present"] and finding.get("laterality"):
            rows.append(("ST", f"{name}-SIDE", f"{name} side", finding["laterality"], str(sub), ""))
    rows.append(("CWE", "TRIAGE", "AI triage category", f"{notice.category}^{notice.category}^{LOCAL}", "", ""))
    if notice.reason:
        rows.append(("ST", "REASON", "Why there is no result", notice.reason[:200], "", ""))
    if notice.caveat:
        rows.append(("ST", "CAVEAT", "What limits the result", notice.caveat[:200], "", ""))
    if notice.model:
        rows.append(("ST", "MODEL", "Algorithm", f"{notice.model.get('name', '')} {notice.model.get('version', '')}",
                     "", ""))
    for kind, text in (("sr", "SR instance UID"), ("seg", "SEG instance UID")):
        if kind in notice.objects:
            rows.append(("ST", f"{kind.upper()}-UID", text, notice.objects[kind], "", ""))
    for index, (vtype, code, text, value, sub, units) in enumerate(rows, start=1):
        _obx(order, index, vtype, code, text, value, sub_id=sub, units=units, status=status, when=when)
    msg.validate()
    return str(msg.to_er7())


def frame(message: str) -> bytes:
    return START_BLOCK + message.encode("utf-8") + END_BLOCK


def unframe(data: bytes) -> str:
    """The message inside one MLLP block; ``ValueError`` when the block is not complete."""
    start, end = data.find(START_BLOCK), data.find(END_BLOCK)
    if start < 0 or end < start:
        raise ValueError("not a complete MLLP block")
    return data[start + 1:end].decode("utf-8")


def send_mllp(host: str, port: int, message: str, timeout_s: float) -> str:
    """Send one message and return the reply; ``OSError``/``TimeoutError`` when the peer cannot
    be reached, closes without answering or takes longer than ``timeout_s`` overall."""
    deadline = time.monotonic() + timeout_s
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(frame(message))
        data = b""
        while END_BLOCK not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no ACK within {timeout_s:g} s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"no ACK within {timeout_s:g} s") from None
            if not chunk:
                raise ConnectionError("the RIS closed the connection without an ACK")
            data += chunk
    return unframe(data)


def parse_ack(reply: str, control_id: str) -> str:
    """The acknowledgment code of an ACK to ``control_id`` (``AA`` or ``CA``).

    Raises
    ------
    AckError
        On AE/AR/CE/CR (with the RIS's text), an ACK to another message, or a reply that is no ACK.
    """
    try:
        ack = parse_message(reply.replace("\n", "\r"), find_groups=False)
        msa = ack.msa
        code, acked = msa.msa_1.to_er7(), msa.msa_2.to_er7()
        text = msa.msa_3.to_er7() if msa.msa_3 else ""
    except Exception as exc:  # noqa: BLE001 - whatever the parser says, it is not a usable ACK
        raise AckError(f"reply is not an HL7 ACK ({type(exc).__name__})") from None
    if acked != control_id:
        raise AckError(f"ACK is for message {acked!r}, not {control_id!r}")
    if code not in ("AA", "CA"):
        raise AckError(f"RIS answered {code}" + (f": {text[:200]}" if text else ""))
    return code
