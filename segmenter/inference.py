"""Inference API: load the CSR-UNet once, segment volumes on their own grid.

``Segmenter.load()`` builds the model from the shipped weights (SHA-256 checked against the
manifest), ``predict(volume_hu, spacing_mm, row_direction)`` returns a ``Prediction`` whose
labels lie exactly on the input grid. The network sees each slice as acquired, so a
gantry-tilted or unevenly spaced series is not resampled; ``slab_mm`` and ``positions`` carry
its true geometry into the volumes and laterality (``predict_series`` passes them).

Memory: ``predict`` runs the network, the return to the source grid and the label map a run of
slices at a time, and the clean-up on the slices that hold bleed, so a long thin series needs
no more working memory than a short one beyond its one-byte-a-voxel label map.

Speed: ``torch.inference_mode``, channels-last memory, slices in small batches, and on CPU
bf16 autocast when the weights' manifest records that bf16 agreed with fp32 on a held-out set
(``bench/inference.py`` measures it).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .csr_unet import CSRUNet, CSRUNetConfig
from .findings import ModelInfo, Prediction
from .postprocess import findings_from_label_map
from .preprocess import Crop, head_crop, resample_hu, to_channels
from .probabilities import GRID_CHUNK_SLICES, labels_from_score_chunks
from .slab_volume import SlabVolume
from .weights import SHIPPED_WEIGHTS, load_model, read_manifest, sha256_file

logger = logging.getLogger(__name__)

MODEL_NAME = "CSR-UNet"


class Segmenter:
    """A loaded model plus its input description; create with ``Segmenter.load``.

    Parameters
    ----------
    model:
        The network, already on ``device`` and in eval mode.
    config:
        Its ``CSRUNetConfig`` (windows, 2.5D context, input size).
    info:
        Provenance for ``Prediction.model``.
    device:
        Where the model runs.
    bf16:
        Run under bf16 autocast (CPU only).
    batch_size:
        Slices per forward pass.
    bleed_threshold:
        Decision threshold on P(SDH) + P(EDH) (``postprocess.label_map``); None: argmax.
    """

    def __init__(self, model: CSRUNet, config: CSRUNetConfig, info: ModelInfo, device: torch.device,
                 bf16: bool = False, batch_size: int = 4, bleed_threshold: float | None = None) -> None:
        self.model = model
        self.config = config
        self.info = info
        self.device = device
        self.bf16 = bool(bf16 and device.type == "cpu")
        self.batch_size = batch_size
        self.bleed_threshold = bleed_threshold

    @classmethod
    def load(cls, weights_path: str | Path | None = None, device: str | torch.device | None = None,
             threads: int | None = None, bf16: bool | None = None, sha256: str | None = None,
             batch_size: int = 4, bleed_threshold: float | None | str = "manifest") -> "Segmenter":
        """Load weights (default: the shipped ones) once.

        Parameters
        ----------
        weights_path:
            Checkpoint; its manifest is the ``.json`` next to it when present.
        device:
            ``"cpu"``, ``"cuda"``...; default CUDA when available.
        threads:
            CPU threads for torch (default: leave torch's setting, one per physical core).
        bf16:
            Force bf16 autocast on or off on CPU; default: the manifest's ``bf16_cpu``.
        sha256:
            Expected hash; default the manifest's. Loading fails on a mismatch.
        bleed_threshold:
            Decision threshold (see ``Segmenter``); default the manifest's ``bleed_threshold``
            (argmax when the manifest has none).
        """
        path = Path(weights_path) if weights_path is not None else SHIPPED_WEIGHTS
        manifest: dict[str, Any] = {}
        if path.with_suffix(".json").is_file():
            manifest = read_manifest(path.with_suffix(".json"))
        sha = sha256 or manifest.get("sha256")
        if threads:
            torch.set_num_threads(threads)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, cfg, _ = load_model(path, sha)
        model = model.to(dev).eval().to(memory_format=torch.channels_last)
        info = ModelInfo(MODEL_NAME, str(manifest.get("version", "unversioned")), sha or sha256_file(path))
        use_bf16 = bool(manifest.get("bf16_cpu", False)) if bf16 is None else bf16
        logger.info("loaded %s %s (sha256 %s) on %s, bf16=%s", MODEL_NAME, info.version,
                    info.weights_sha256[:12], dev, use_bf16 and dev.type == "cpu")
        if bleed_threshold == "manifest":
            bleed_threshold = manifest.get("bleed_threshold")
        return cls(model, cfg, info, dev, use_bf16, batch_size, bleed_threshold)

    @torch.inference_mode()
    def scores(self, volume_hu: np.ndarray) -> tuple[torch.Tensor, Any]:
        """Class logits at model scale (Z, C, S, S) and the head crop used."""
        crop = self.crop(volume_hu)
        return torch.cat(list(self.score_chunks(volume_hu, crop))), crop

    def crop(self, volume_hu: Any) -> Crop:
        """The box around the head that every slice is cropped to (``preprocess.head_crop``)."""
        return head_crop(volume_hu)

    def _chunk_slices(self) -> int:
        # A whole number of batches, so the forward passes are the ones a whole volume gets.
        return max(1, GRID_CHUNK_SLICES // self.batch_size) * self.batch_size

    @torch.inference_mode()
    def score_chunks(self, volume_hu: Any, crop: Any, clock: list[float] | None = None) -> Iterator[torch.Tensor]:
        """Class logits (n, C, S, S) of successive runs of slices, in order.

        Each run is read, cropped, resized and windowed on its own (with its 2.5D neighbours),
        so nothing the size of the volume is made; ``volume_hu`` may be a ``SlabVolume``.
        ``clock[0]``, when given, accumulates the seconds spent here.
        """
        depth, k = volume_hu.shape[0], self.config.context_slices
        step = self._chunk_slices()
        for z0 in range(0, depth, step):
            t0 = time.perf_counter()
            z1 = min(depth, z0 + step)
            lo, hi = max(0, z0 - k), min(depth, z1 + k)
            small = resample_hu(np.asarray(volume_hu[lo:hi]), crop, self.config.input_size)
            x = to_channels(small, self.config.windows, k)[z0 - lo:z1 - lo]
            outs = []
            for i in range(0, x.shape[0], self.batch_size):
                xb = x[i:i + self.batch_size].to(self.device).contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                    outs.append(self.model(xb).float().cpu())
            if clock is not None:
                clock[0] += time.perf_counter() - t0
            yield torch.cat(outs)

    def predict(self, volume_hu: np.ndarray, spacing_mm: Sequence[float],
                row_direction: Sequence[float] = (1.0, 0.0, 0.0), *, slab_mm: Sequence[float] | None = None,
                positions: np.ndarray | None = None) -> Prediction:
        """Segment one volume.

        Parameters
        ----------
        volume_hu:
            float (Z, rows, cols) in HU, slices sorted along the normal.
        spacing_mm:
            ``(dz, dy, dx)``.
        row_direction:
            LPS direction cosines of increasing column (the series' first IOP triplet).
        slab_mm:
            Per slice, the width along the slice normal it stands for (see
            ``segmenter.spacing.slabs_mm``); None: every slice stands for ``dz``.
        positions:
            ImagePositionPatient per slice, shape (Z, 3), for laterality in patient coordinates.

        Returns
        -------
        Prediction
            uint8 labels (Z, rows, cols) on the input grid, one ``Finding`` per class.
        """
        if not isinstance(volume_hu, SlabVolume):
            volume_hu = np.asarray(volume_hu)
        if volume_hu.ndim != 3:
            raise ValueError(f"volume_hu must be 3-D (z, y, x); got shape {volume_hu.shape}")
        if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be three positive numbers (dz, dy, dx); got {spacing_mm}")
        n_slices = volume_hu.shape[0]
        if slab_mm is not None and np.shape(slab_mm) != (n_slices,):
            raise ValueError(f"slab_mm must have one value per slice ({n_slices}); got shape {np.shape(slab_mm)}")
        if positions is not None and np.shape(positions) != (n_slices, 3):
            raise ValueError(f"positions must have shape ({n_slices}, 3); got {np.shape(positions)}")
        t0 = time.perf_counter()
        crop = self.crop(volume_hu)
        network = [0.0]
        with torch.inference_mode():
            raw_labels, confidence = labels_from_score_chunks(
                self.score_chunks(volume_hu, crop, network), crop, n_slices, self.bleed_threshold)
        labels, findings, excluded = findings_from_label_map(
            raw_labels, confidence, spacing_mm, crop.left + crop.side / 2.0, row_direction, volume_hu=volume_hu,
            slab_mm=slab_mm, positions=positions)
        total = time.perf_counter() - t0
        return Prediction(labels, findings, self.info,
                          {"network_s": round(network[0], 3), "postprocess_s": round(total - network[0], 3),
                           "total_s": round(total, 3)}, excluded)

    def predict_series(self, series: Any) -> Prediction:
        """Segment a ``segmenter.dicom_io.CTSeries`` with its true slice geometry."""
        return self.predict(series.volume_hu, series.spacing_mm, series.row_direction,
                            slab_mm=series.slab_mm, positions=series.positions)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m segmenter predict SERIES_DIR --out FILE.npz``."""
    import argparse

    from .dicom_io import read_series

    p = argparse.ArgumentParser(prog="python -m segmenter predict")
    p.add_argument("series_dir")
    p.add_argument("--out", required=True, help=".npz with labels, sop_instance_uids, findings_json")
    p.add_argument("--weights")
    p.add_argument("--threads", type=int)
    p.add_argument("--device")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    seg = Segmenter.load(a.weights, a.device, a.threads)
    series = read_series(a.series_dir)
    pred = seg.predict_series(series)
    findings = {k: f.to_dict() for k, f in pred.findings.items()}
    np.savez_compressed(a.out, labels=pred.labels, sop_instance_uids=np.array(series.sop_instance_uids),
                        findings_json=json.dumps(findings),
                        excluded_json=json.dumps(pred.excluded), model_json=json.dumps(pred.model.to_dict()))
    print(json.dumps({"out": a.out, "findings": findings, "excluded": pred.excluded, "timings_s": pred.timings_s},
                     indent=2))
    return 0
