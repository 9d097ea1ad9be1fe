"""Click commands for the model zoo: ``skysieve train``, ``evaluate``, ``compare``, ``ood-fit``.

Registered in ``pipeline/cli/__init__.py``; each command parses its options and calls one
plain function (:func:`pipeline.training.fit.train`, :func:`pipeline.training.evaluate.evaluate`,
:func:`pipeline.training.compare.compare`, :func:`pipeline.training.ood.fit_checkpoint_ood`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pipeline.cli.base import CONTEXT, one_line_errors

__all__ = ["compare", "evaluate", "ood_fit", "parse_floats", "train"]

_EXISTING = click.Path(exists=True, path_type=Path)
_NEW = click.Path(path_type=Path)


def _weights(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """A bundled model's name (``default``) as its checkpoint, or an existing file as it is."""
    if value is None:
        return None
    from pipeline import bundled

    if value in bundled.names():
        return bundled.resolve(value)
    path = Path(value).expanduser()
    if not path.is_file():
        raise click.BadParameter(f"{value!r} is neither a bundled model "
                                 f"({', '.join(bundled.names())}) nor an existing file")
    return path


#: Exit status of a ``train`` stopped at its time limit, state saved (EX_TEMPFAIL: try again).
EXIT_STOPPED = 75

_user_errors = one_line_errors()  # TrainingError, EvaluationError, CompareError, StoreError, ...


def parse_floats(text: str, *, option: str) -> tuple[float, ...]:
    """Parse a comma-separated list of numbers (``"0,0.5,1"``) for ``option``.

    Raises
    ------
    click.BadParameter
        An item is not a number.
    """
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers "
                                 f"(e.g. 0,0.5,1,2,4)", param_hint=option) from exc


@click.command(context_settings=CONTEXT)
@click.argument("store", type=_EXISTING)
@click.option("--arch", default="smallcnn", show_default=True, help="Registered architecture.")
@click.option("--out", required=True, type=_NEW, help="Checkpoint to write (MODEL.pt + MODEL.json).")
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=3e-3, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Initialisation/augmentation seed.")
@click.option("--split-seed", type=int, default=None,
              help="Seed of the validation split only (default: --seed).")
@click.option("--image-size", type=int, default=None, help="Model input size (default: the stamp).")
@click.option("--split-by", type=click.Choice(["exposure", "frame", "field", "source"]),
              default="exposure", show_default=True,
              help="Validation split: whole exposures/frames, whole fields (exposures of the "
                   "same field joined), or sources.")
@click.option("--val-fraction", default=0.2, show_default=True)
@click.option("--train-fraction", default=1.0, show_default=True,
              help="Train on this seeded, class-stratified share of the training split only "
                   "(a learning-curve point; the validation split is unchanged).")
@click.option("--patience", default=8, show_default=True, help="Early-stopping patience in epochs.")
@click.option("--init", callback=_weights, default=None,
              help="Start from these weights (a bundled model such as 'default', a skysieve "
                   "checkpoint, or a local state-dict file such as ImageNet-style weights): "
                   "pretraining -> fine-tuning.")
@click.option("--init-sha256", default=None,
              help="Expected sha256 of a --init file that has no card.")
@click.option("--teacher", callback=_weights, default=None,
              help="Distil from this skysieve checkpoint or bundled model (soft targets).")
@click.option("--kd-alpha", default=0.5, show_default=True,
              help="Weight of the distillation loss (0 = labels only, 1 = teacher only).")
@click.option("--kd-temperature", default=4.0, show_default=True,
              help="Softmax temperature of the distillation loss.")
@click.option("--augment",
              type=click.Choice(["full", "geometric", "robust", "photometric", "clipped",
                                 "elongated"]),
              default="full",
              show_default=True,
              help="full: flips, shifts, PSF blur and dimming; geometric: flips and shifts "
                   "only; robust: as full with blur on 40% of the stamps, sigma up to 4 px; "
                   "photometric: flips, shifts and deep dimming, no blur (star/galaxy); "
                   "clipped: robust, and 40% of the stamps clipped as 8-bit previews are; "
                   "elongated: clipped, and 40% trailed first (elongated PSFs).")
@click.option("--stretch", type=click.Choice(["asinh", "linear"]), default=None,
              help="Input stretch of the model, recorded in its card [default: asinh].")
@click.option("--softening", type=float, default=None,
              help="Stretch softening in units of the noise [default: 3].")
@click.option("--exclude-class", "exclude_classes", multiple=True, metavar="LABEL",
              help="Leave the sources of this label out (repeatable), e.g. Galaxy Zoo's "
                   "'uncertain'.")
@click.option("--psf-pixels", type=float, default=None, metavar="K",
              help="Resample every stamp so its PSF FWHM (the store's psf_fwhm) spans K px, "
                   "in training and wherever the model runs (recorded in the card).")
@click.option("--psf-min-zoom", type=float, default=None, metavar="M",
              help="With --psf-pixels: never shrink a stamp below M (0.2-1; 1 magnifies "
                   "sharp PSFs to K px and leaves wider ones as they are).")
@click.option("--resume", is_flag=True,
              help="Save the training state after every epoch (MODEL.resume.pt) and go on from "
                   "it when it is there: a killed or stopped run continues where it stopped.")
@click.option("--time-limit", type=float, default=None, metavar="MINUTES",
              help="With --resume: stop after the epoch that passes MINUTES, state saved, exit "
                   "status 75 (rerun the same command to go on; for batch-job time limits).")
@_user_errors
def train(store: Path, arch: str, out: Path, epochs: int, batch_size: int, lr: float, seed: int,
          split_seed: int | None, image_size: int | None, split_by: str, val_fraction: float,
          train_fraction: float, patience: int, init: Path | None, init_sha256: str | None,
          teacher: Path | None,
          kd_alpha: float, kd_temperature: float, augment: str, stretch: str | None,
          softening: float | None, exclude_classes: tuple[str, ...],
          psf_pixels: float | None, psf_min_zoom: float | None, resume: bool,
          time_limit: float | None) -> None:
    """Train ARCH on the labelled cutouts in STORE and write a checkpoint with its card."""
    from pipeline.errors import TrainingStopped
    from pipeline.training.fit import train as run_train

    if time_limit is not None and not resume:
        raise click.UsageError("--time-limit needs --resume (the state must be saved to go on)")
    if psf_min_zoom is not None and psf_pixels is None:
        raise click.UsageError("--psf-min-zoom needs --psf-pixels K (the PSF width stamps are "
                               "resampled to)")
    scale = None if psf_pixels is None else {"mode": "psf", "fwhm_px": psf_pixels}
    if psf_min_zoom is not None:
        scale["min_zoom"] = psf_min_zoom
    try:
        card = run_train(store, arch=arch, out=out, epochs=epochs, batch_size=batch_size, lr=lr,
                         seed=seed, split_seed=split_seed, image_size=image_size,
                         split_by=split_by, val_fraction=val_fraction, patience=patience,
                         train_fraction=train_fraction, init=init, init_sha256=init_sha256,
                         teacher=teacher, kd_alpha=kd_alpha,
                         kd_temperature=kd_temperature, augment=augment,
                         stretch={k: v for k, v in (("name", stretch), ("softening", softening))
                                  if v is not None} or None,
                         exclude_classes=exclude_classes,
                         input_scale=scale,
                         resume=resume,
                         time_limit_s=None if time_limit is None else 60.0 * time_limit)
    except TrainingStopped as stop:
        click.echo(str(stop), err=True)
        sys.exit(EXIT_STOPPED)
    m = card.metrics
    click.echo(f"wrote {out} (sha256 {card.sha256[:12]}…): validation accuracy "
               f"{m.get('accuracy', float('nan')):.4f}, balanced accuracy "
               f"{m.get('balanced_accuracy', float('nan')):.4f}, ECE "
               f"{m.get('ece_calibrated', float('nan')):.4f} (T={card.temperature:.3f})")


@click.command("ood-fit", context_settings=CONTEXT)
@click.argument("model")
@click.argument("store", type=_EXISTING)
@click.option("--out", required=True, type=_NEW,
              help="Checkpoint to write (NEW.pt, a byte-identical copy of the weights, + NEW.json "
                   "+ NEW.ood.npz); may be MODEL itself.")
@click.option("--split-by", type=click.Choice(["exposure", "frame", "field", "source"]),
              default=None, help="Validation split [default: the card's].")
@click.option("--val-fraction", type=float, default=None, help="[default: the card's]")
@click.option("--split-seed", type=int, default=None, help="[default: the card's]")
@click.option("--threshold", default=0.99, show_default=True,
              help="ood_score above which classify sets FLAG_OOD.")
@click.option("--batch-size", default=256, show_default=True)
@_user_errors
def ood_fit(model: str, store: Path, out: Path, split_by: str | None, val_fraction: float | None,
            split_seed: int | None, threshold: float, batch_size: int) -> None:
    """Fit out-of-distribution statistics for MODEL on the labelled cutouts in STORE (no retraining)."""
    from pipeline.training.ood import fit_checkpoint_ood

    card = fit_checkpoint_ood(model, store, out, split_by=split_by, val_fraction=val_fraction,
                              split_seed=split_seed, threshold=threshold, batch_size=batch_size)
    q = card.ood.get("val_knn_quantiles", {})
    click.echo(f"wrote {out} (weights sha256 {card.sha256[:12]}… unchanged) and "
               f"{card.ood['file']} (sha256 {card.ood['sha256'][:12]}…): "
               f"{card.ood['n_train']} training / {card.ood['n_val']} validation stamps, "
               f"{card.ood['dim']} features; ood_score = {card.ood.get('score', '?')}; "
               f"validation kNN distance median {q.get('0.5', float('nan')):.3f}, "
               f"99% {q.get('0.99', float('nan')):.3f}")


@click.command(context_settings=CONTEXT)
@click.argument("model")
@click.argument("store", type=_EXISTING)
@click.option("--out", required=True, type=_NEW, help="Directory for evaluation.json and the PNGs.")
@click.option("--blur-sweep", default="0,0.5,1,2,4", show_default=True,
              help="Added Gaussian blur, FWHM in units of the PSF FWHM.")
@click.option("--subset", type=click.Choice(["auto", "val", "all"]), default="auto",
              show_default=True,
              help="auto: the card's validation exposures when STORE is its training store.")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--no-speed", is_flag=True, help="Skip the ms/sample and cutouts/s timing.")
@_user_errors
def evaluate(model: str, store: Path, out: Path, blur_sweep: str, subset: str, batch_size: int,
             no_speed: bool) -> None:
    """Evaluate MODEL (bundled name or checkpoint) on the labelled cutouts in STORE."""
    from pipeline.training.evaluate import evaluate as run_evaluate

    result = run_evaluate(model, store, out=out,
                          blur_sweep=parse_floats(blur_sweep, option="--blur-sweep"),
                          subset=subset, batch_size=batch_size, speed=not no_speed,
                          progress=True)
    m = result.get("metrics", {})
    click.echo(f"{result.get('n', '?')} sources: accuracy {m.get('accuracy', float('nan')):.4f}, "
               f"balanced accuracy {m.get('balanced_accuracy', float('nan')):.4f}; "
               f"wrote {out / 'evaluation.json'} and PNGs")


@click.command(context_settings=CONTEXT)
@click.argument("store", type=_EXISTING)
@click.option("--archs", required=True,
              help="Comma-separated architectures; NAME+kd = NAME distilled from the teacher.")
@click.option("--seeds", default=3, show_default=True, help="Seeds per architecture.")
@click.option("--out", required=True, type=_NEW, help="Directory for models, evaluations, table.")
@click.option("--epochs", default=15, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--image-size", type=int, default=None, help="Model input size (default: the stamp).")
@click.option("--teacher-arch", default="wide_resnet16_4", show_default=True)
@click.option("--teacher-epochs", type=int, default=None, help="Default: --epochs.")
@click.option("--teacher", "teacher_checkpoint", callback=_weights, default=None,
              help="A trained checkpoint to distil from instead of training --teacher-arch.")
@click.option("--pretrain-store", type=_EXISTING, multiple=True,
              help="Large store to pretrain on: adds the scratch vs pretrained+fine-tuned study "
                   "(repeat for one study per store).")
@click.option("--pretrain-arch", default=None, help="Default: the first architecture without +kd.")
@click.option("--pretrain-epochs", type=int, default=None, help="Default: --epochs.")
@click.option("--blur-sweep", default="0,0.5,1,2,4", show_default=True)
@click.option("--test-store", type=_EXISTING, default=None,
              help="Score every run on this store of held-out objects or fields "
                   "(default: the validation split that stops training).")
@click.option("--split-by", type=click.Choice(["exposure", "frame", "field", "source"]),
              default="exposure", show_default=True, help="How the validation split is held out.")
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--arch-lr", multiple=True, metavar="NAME=LR",
              help="A learning rate for one network instead of --lr (repeatable), e.g. "
                   "alexnet=3e-4.")
@click.option("--patience", type=int, default=8, show_default=True,
              help="Early stopping: epochs without a better validation balanced accuracy.")
@click.option("--augment", type=click.Choice(["full", "geometric", "robust"]), default="full",
              show_default=True)
@click.option("--softening", type=float, default=None,
              help="Stretch softening in units of the noise [default: 3].")
@click.option("--label-fractions", default="1", show_default=True,
              help="Pretraining study: shares of the training labels, e.g. 0.05,0.2,1.")
@click.option("--target", type=float, default=None,
              help="Pretraining study: the validation balanced accuracy to time "
                   "[default: 0.95 x the scratch runs' mean best].")
@click.option("--report-only", is_flag=True,
              help="Train nothing: write the tables from the runs finished so far, listing "
                   "the rest (an interim report of a long study).")
@_user_errors
def compare(store: Path, archs: str, seeds: int, out: Path, epochs: int, batch_size: int,
            image_size: int | None, teacher_arch: str, teacher_epochs: int | None,
            teacher_checkpoint: Path | None, pretrain_store: tuple[Path, ...],
            pretrain_arch: str | None, pretrain_epochs: int | None, blur_sweep: str,
            test_store: Path | None, split_by: str, lr: float, arch_lr: tuple[str, ...],
            patience: int, augment: str, softening: float | None, label_fractions: str,
            target: float | None, report_only: bool) -> None:
    """Train and evaluate several architectures over seeds on STORE; print the table."""
    from pipeline.training.compare import compare as run_compare

    rates = {}
    for item in arch_lr:
        name, _, value = item.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = float("nan")
        if not name.strip() or not rate > 0:
            raise click.BadParameter(f"{item!r}: give NAME=LR with a positive rate, e.g. "
                                     "alexnet=3e-4", param_hint="--arch-lr")
        rates[name.strip()] = rate

    result = run_compare(store, archs=[a.strip() for a in archs.split(",") if a.strip()],
                         seeds=seeds, out=out, epochs=epochs, batch_size=batch_size,
                         image_size=image_size, teacher_arch=teacher_arch,
                         teacher_epochs=teacher_epochs, teacher=teacher_checkpoint,
                         pretrain_store=list(pretrain_store) or None,
                         pretrain_arch=pretrain_arch, pretrain_epochs=pretrain_epochs,
                         blur_sweep=parse_floats(blur_sweep, option="--blur-sweep"),
                         test_store=test_store, split_by=split_by, lr=lr, patience=patience,
                         augment=augment, softening=softening,
                         label_fractions=parse_floats(label_fractions,
                                                      option="--label-fractions"),
                         target=target, report_only=report_only, arch_lr=rates)
    table = out / "compare.md"
    click.echo(table.read_text() if table.is_file() else json.dumps(result, indent=2, default=str))
