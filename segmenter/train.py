"""Training loop for the CSR-UNet: checkpoints every epoch, resume, validation, metrics JSON.

Determinism: the model is initialised from ``seed``, and every epoch reseeds torch and numpy
from ``(seed, epoch)``, so a run resumed from the checkpoint of epoch ``k`` continues exactly
as the uninterrupted run would have (same thread count assumed).
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .csr_unet import CSRUNet, CSRUNetConfig
from .data import SamplerConfig, SliceBank, build_bank, patient_split, sample_batch
from .mixsampler import MixConfig, sample_mixed_batch
from .pseudomask import IGNORE
from .preprocess import to_channels
from .trainsources import load_init, real_banks, selection_score, validate_real
from .synthetic import PHANTOM_VERSION, PHANTOM_VERSIONS, parse_kind_weights

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved in every checkpoint)."""

    dataset: str = "synthetic"
    data_root: str | None = None
    count: int = 200
    seed: int = 0
    val_fraction: float = 0.1
    val_cases: int = 10
    epochs: int = 20
    iters_per_epoch: int = 200
    batch: int = 12
    lr: float = 1e-3
    lr_min: float = 1e-5
    dice_weight: float = 1.0
    workers: int = 1
    threads: int | None = None
    device: str | None = None
    init_from: str | None = None
    kind_weights: dict[str, float] | None = None  # synthetic kinds drawn with these weights
    phantoms: int = PHANTOM_VERSION  # synthetic generator version (segmenter.synthetic.PHANTOM_VERSIONS)
    model: CSRUNetConfig = field(default_factory=CSRUNetConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    real_root: str | None = None  # an ich-boxes folder: train/ is trained on, valid/ selects
    backgrounds: tuple[str, ...] = ()  # DICOM folders of bleed-free real slices for lesion insertion
    ct_phantoms: int = 0  # phantoms of segmenter.phantom_ct added to the phantom bank
    mix: MixConfig = field(default_factory=MixConfig)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


def training_data(cfg: TrainConfig) -> tuple[Iterable[Any], list[Any]]:
    """(train cases, validation cases) for the configured dataset, split by patient.

    Synthetic phantoms are yielded lazily (a full-resolution phantom is ~40 MB; only its
    model-scale slices are kept); each phantom is its own patient, and the last
    ``val_fraction`` of the indices are the validation patients.
    """
    if cfg.dataset == "synthetic":
        from .synthetic import KINDS, PhantomRanges, iter_phantoms

        n_val = max(1, int(round(cfg.val_fraction * cfg.count)))
        val_idx = range(cfg.count - min(n_val, cfg.val_cases), cfg.count)
        ranges = PhantomRanges.training(cfg.phantoms)
        # Validation kinds are cycled so every kind (EDH included) is validated.
        train_cases: Iterable[Any] = iter_phantoms(range(cfg.count - n_val), cfg.seed, ranges, workers=cfg.workers,
                                                   kind_weights=cfg.kind_weights)
        val_cases = list(iter_phantoms(val_idx, cfg.seed, ranges, kinds=list(KINDS)))
        if cfg.ct_phantoms:
            from .phantom_ct import CtPhantomRanges, iter_ct_phantoms

            ct_val = min(len(KINDS), max(1, cfg.ct_phantoms // 10))
            ct_ranges = CtPhantomRanges.training()
            train_cases = itertools.chain(train_cases, iter_ct_phantoms(
                range(cfg.ct_phantoms - ct_val), cfg.seed, ct_ranges, kind_weights=cfg.kind_weights,
                workers=cfg.workers))
            val_cases += list(iter_ct_phantoms(range(cfg.ct_phantoms - ct_val, cfg.ct_phantoms), cfg.seed,
                                               ct_ranges, kinds=list(KINDS)))
        return train_cases, val_cases
    if cfg.data_root is None:
        raise ValueError(f"--data-root must be given for dataset {cfg.dataset!r}")
    from . import realdata

    if cfg.dataset == "ctich":
        cases, stats = realdata.load_ctich(cfg.data_root)
        logger.info("CT-ICH: %s", stats)
    elif cfg.dataset == "dicom-nifti":
        cases = realdata.load_dicom_nifti(cfg.data_root)
    else:
        raise ValueError(f"dataset must be synthetic, ctich or dicom-nifti; got {cfg.dataset!r}")
    train_cases, val_cases = patient_split(cases, cfg.val_fraction, cfg.seed)
    return train_cases, val_cases[: cfg.val_cases]


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the batch on the bleed classes (labels 1..C-1).

    Pixels labelled ``IGNORE`` (inside a box, outside its pseudo-mask) count in neither term.
    """
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
    known = (target != IGNORE).unsqueeze(1).float()
    probs = logits.float().softmax(1)[:, 1:] * known
    onehot = F.one_hot(target.masked_fill(target == IGNORE, 0), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + dice_weight * (1.0 - dice.mean())


@torch.inference_mode()
def validate(model: CSRUNet, bank: SliceBank, mcfg: CSRUNetConfig, device: torch.device) -> dict[str, float]:
    """Per-case 3D Dice per class at model scale, averaged over cases that contain the class."""
    model.eval()
    dices: dict[int, list[float]] = {1: [], 2: []}
    for case in np.unique(bank.case_of):
        idx = np.flatnonzero(bank.case_of == case)
        hu = bank.hu[idx].float()
        x = to_channels(hu, mcfg.windows, mcfg.context_slices)
        pred = torch.cat([model(x[i:i + 8].to(device)).argmax(1).cpu() for i in range(0, len(idx), 8)])
        truth = bank.labels[idx].long()
        for c in (1, 2):
            t, p = truth == c, pred == c
            if t.any():
                dices[c].append(float(2 * (t & p).sum() / (t.sum() + p.sum())))
    model.train()
    return {f"val_dice_{n}": float(np.mean(dices[c])) if dices[c] else float("nan")
            for c, n in ((1, "sdh"), (2, "edh"))}


def _save(path: Path, **payload: Any) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
          cases: Sequence[Any] | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Train, writing ``last.pt``, ``best.pt`` and ``metrics.json`` into ``out_dir`` every epoch.

    Parameters
    ----------
    cfg:
        The run configuration.
    out_dir:
        Output folder (created).
    resume:
        Continue from ``out_dir/last.pt`` when it exists.
    cases:
        Cases to use instead of loading ``cfg.dataset`` (tests).
    stop_after:
        Run at most this many epochs in this call (a time-boxed slice of a longer run; the
        schedule still spans ``cfg.epochs``, so a later ``resume`` continues it exactly).

    Returns
    -------
    dict
        The metrics history and the best epoch.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    model = CSRUNet.from_config(cfg.model).to(device)
    if cfg.init_from:  # fine-tuning: start from another run's weights, fresh optimizer
        load_init(model, cfg.init_from, cfg.model, device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history: list[dict[str, Any]] = []
    start, best = 0, -1.0
    if resume and (out / "last.pt").exists():
        ckpt = torch.load(out / "last.pt", map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, history, best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"]
        logger.info("resumed from epoch %d", ckpt["epoch"])
    t0 = time.time()
    cache = out / "bank.pt"
    if cases is None and cache.exists():  # resuming: skip regenerating the data
        banks = torch.load(cache, weights_only=False)
        bank, val_bank = banks["train"], banks["val"]
    else:
        if cases is not None:
            train_cases, val_cases = patient_split(list(cases), cfg.val_fraction, cfg.seed)
            val_cases = val_cases[: cfg.val_cases]
        else:
            train_cases, val_cases = training_data(cfg)
        bank = build_bank(train_cases, cfg.model.input_size)
        val_bank = build_bank(val_cases, cfg.model.input_size) if val_cases else None
        del train_cases, val_cases
        if cases is None:
            torch.save({"train": bank, "val": val_bank}, cache)
    logger.info("data ready in %.0f s: %d train slices (%d with bleed, %d hard-negative pixels)",
                time.time() - t0, len(bank.hu), int(bank.positive.sum()), len(bank.hard))
    real_train, real_val, backgrounds = real_banks(cfg.real_root, cfg.backgrounds, cfg.model.input_size,
                                                   cfg.mix.negative_backgrounds)
    mixed = real_train is not None or backgrounds is not None
    if mixed and cfg.model.context_slices:
        raise ValueError(f"context_slices must be 0 when training on real 2-D slices; got {cfg.model.context_slices}")
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    total = cfg.epochs * cfg.iters_per_epoch
    end = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)
    for epoch in range(start, end):
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        rng = np.random.default_rng([cfg.seed, epoch])
        model.train()
        losses = []
        bar = tqdm(range(cfg.iters_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", mininterval=5.0)
        for it in bar:
            step = epoch * cfg.iters_per_epoch + it
            lr = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * step / total))
            for group in opt.param_groups:
                group["lr"] = lr
            if mixed:
                x, y = sample_mixed_batch(bank, real_train, backgrounds, cfg.batch, rng, cfg.model.windows,
                                          cfg.sampler, cfg.mix)
            else:
                x, y = sample_batch(bank, cfg.batch, rng, cfg.model.windows, cfg.model.context_slices, cfg.sampler)
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = segmentation_loss(model(x), y, cfg.dice_weight)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{lr:.1e}")
        metrics: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": lr,
                                   "elapsed_s": round(time.time() - t0, 1)}
        if val_bank is not None:
            metrics.update(validate(model, val_bank, cfg.model, device))
        if real_val is not None:
            metrics.update(validate_real(model, real_val, cfg.model, device))
        score = selection_score(metrics) if val_bank is not None or real_val is not None else -metrics["loss"]
        history.append(metrics)
        logger.info("epoch %d: %s", epoch, json.dumps(metrics))
        state = {"model": model.state_dict(), "config": cfg.model.to_dict(), "train_args": cfg.to_dict(),
                 "epoch": epoch, "history": history}
        if score > best:
            best = score
            _save(out / "best.pt", **state, best=best)
        _save(out / "last.pt", **state, optimizer=opt.state_dict(), best=best)
        (out / "metrics.json").write_text(json.dumps({"config": cfg.to_dict(), "history": history,
                                                      "best_score": best}, indent=2) + "\n")
    return {"history": history, "best_score": best}


def _parse_mix(text: str, **options: Any) -> MixConfig:
    parts = [float(v) for v in text.split(",")]
    if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
        raise SystemExit(f"--mix must be three non-negative shares (phantoms,real,inserted); got {text!r}")
    return MixConfig(*parts, **options)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m segmenter train``: parse arguments, set up logging to ``--out``, train."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m segmenter train", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["synthetic", "ctich", "dicom-nifti"], default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--count", type=int, default=200, help="synthetic cases to generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--iters", type=int, default=200, help="iterations per epoch")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--init", help="checkpoint whose weights start this run (fine-tuning)")
    p.add_argument("--kind-weights", help="synthetic kinds' weights, e.g. sdh=1,edh=1,both=2,negative=0.5,iph=1 "
                   "(default: segmenter.synthetic.KINDS)")
    p.add_argument("--phantoms", type=int, choices=PHANTOM_VERSIONS, default=PHANTOM_VERSION,
                   help="synthetic generator version; older ones reproduce older runs exactly")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--base-width", type=int, default=16)
    p.add_argument("--input-size", type=int, default=256)
    p.add_argument("--windows", default="brain,subdural")
    p.add_argument("--context-slices", type=int, default=0)
    p.add_argument("--skip-attention", action="store_true")
    p.add_argument("--real-root", help="an ich-boxes folder: its train/ split is trained on (pseudo-masks from "
                   "boxes) and valid/ selects the checkpoint")
    p.add_argument("--backgrounds", action="append", default=[],
                   help="DICOM folder of bleed-free real slices to draw lesions into (repeatable)")
    p.add_argument("--ct-phantoms", type=int, default=0, help="phantoms of segmenter.phantom_ct to add")
    p.add_argument("--mix", default="0.35,0.35,0.30",
                   help="batch shares of phantoms, real boxed slices, real backgrounds with drawn lesions")
    p.add_argument("--rim-fraction", type=float, default=0.0,
                   help="share of negative real crops centred on the inner table")
    p.add_argument("--negative-backgrounds", action="store_true",
                   help="keep background slices without room for a lesion (vertex, skull base) as negatives")
    p.add_argument("--val-cases", type=int, default=10)
    p.add_argument("--workers", type=int, default=1, help="processes generating phantoms")
    p.add_argument("--threads", type=int)
    p.add_argument("--device")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stop-after", type=int, help="epochs to run in this invocation")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.FileHandler(out / "train.log"), logging.StreamHandler(sys.stderr)])
    model = CSRUNetConfig(base_width=a.base_width, input_size=a.input_size, windows=tuple(a.windows.split(",")),
                          context_slices=a.context_slices, skip_attention=a.skip_attention)
    cfg = TrainConfig(dataset=a.dataset, data_root=a.data_root, count=a.count, seed=a.seed, epochs=a.epochs,
                      iters_per_epoch=a.iters, batch=a.batch, lr=a.lr, val_cases=a.val_cases,
                      workers=a.workers, threads=a.threads, device=a.device, init_from=a.init, model=model,
                      kind_weights=parse_kind_weights(a.kind_weights) if a.kind_weights else None, phantoms=a.phantoms,
                      sampler=SamplerConfig(crop=a.crop), real_root=a.real_root, backgrounds=tuple(a.backgrounds),
                      ct_phantoms=a.ct_phantoms,
                      mix=_parse_mix(a.mix, rim_fraction=a.rim_fraction, negative_backgrounds=a.negative_backgrounds))
    logger.info("command: python -m segmenter train %s", " ".join(argv if argv is not None else sys.argv[1:]))
    result = train(cfg, out, resume=a.resume, stop_after=a.stop_after)
    logger.info("done: best score %.4f", result["best_score"])
    return 0
