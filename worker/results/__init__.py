"""Result objects sent back into the patient's study, and the PNG preview.

=====================  ==============================================================
``build_seg``          DICOM SEG (BINARY), one segment per present class ("SDH", "EDH")
``build_sr``           Comprehensive 3D SR rooted in TID 1500: presence of both classes,
                       volume, maximum thickness, laterality, triage category
                       (rule in ``dicom_node.triage``)
``build_status_sr``    SR for a series that was not analysed or whose analysis failed
``build_key_images``   Secondary Captures with the mask burned in, plus a KOS listing them
``render_preview_png`` PNG of the slice with the largest bleed and its neighbours
=====================  ==============================================================

A negative series gets an SR only (no SEG, no key images).  All UIDs are deterministic
(:mod:`.uids`), and every coded concept is in :mod:`.codes`.
"""
from .keyimages import build_key_images
from .preview import render_preview_png
from .seg import build_seg
from .sr import build_sr, build_status_sr

__all__ = ["build_key_images", "build_seg", "build_sr", "build_status_sr", "render_preview_png"]
