"""Checks on the solver: effective step against the recipe the loss normalisation implies, batch of one."""
from __future__ import annotations

from typing import Optional

from ..caffe_env import caffe_pb2
from ..recipes import NORMALIZED, REFERENCE_PIXELS, STAGE_LR_FACTOR, SUMMED, sci
from .facts import (
    ALEXNET_STEP,
    STAGE_STEP_LOW,
    STEP_ERROR,
    STEP_SMALL_ERROR,
    STEP_SMALL_WARNING,
    STEP_WARNING,
    VGG_STEP,
    Finding,
    NetFacts,
    loss_heads,
    sci_text,
    times_text,
)


def loss_mode(loss) -> str:
    """Caffe's normalization of a loss layer: FULL, VALID, BATCH_SIZE or NONE."""
    lp = loss.loss_param
    if not lp.HasField("normalization") and lp.HasField("normalize"):
        return "VALID" if lp.normalize else "BATCH_SIZE"
    return caffe_pb2().LossParameter.NormalizationMode.Name(lp.normalization)


def solver_type(solver) -> str:
    """The solver's type name ('SGD', 'Adam', ...), from `type` or the old `solver_type` enum."""
    if solver.HasField("type") or not solver.HasField("solver_type"):
        return solver.type
    names = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
             "ADADELTA": "AdaDelta", "ADAM": "Adam"}
    return names[caffe_pb2().SolverParameter.SolverType.Name(solver.solver_type)]


def check_solver(n: NetFacts, solver, image_size: Optional[tuple[int, int]], batch: Optional[int]) -> list[Finding]:
    """Finding 6: effective step lr / (1 - momentum) against the reference recipe for the loss in use."""
    kind = solver_type(solver)
    if n.loss is None or kind not in ("SGD", "Nesterov"):
        return []
    mode = loss_mode(n.loss)
    lr, m = solver.base_lr, solver.momentum
    if lr <= 0 or not 0 <= m < 1:
        return [Finding("error", "solver-step", f"base_lr {lr:g} with momentum {m:g} cannot train.",
                        "Use base_lr > 0 and 0 <= momentum < 1.")]
    step = lr / (1 - m)
    summed = mode in ("BATCH_SIZE", "NONE")
    if summed:
        heads = loss_heads(n)
        stage = heads[0].skips if heads else 0
        recipe_lr = SUMMED.base_lr
        pixels = image_size[0] * image_size[1] if image_size else REFERENCE_PIXELS
        per = pixels * ((batch or 1) if mode == "NONE" else 1)
        size = f"{image_size[0]}×{image_size[1]}" if image_size else "~500×500 (assumed; image size unknown)"
        if per > pixels:
            size += f" × batch {batch}"
        ratio = step * per / VGG_STEP
        loss_text = (f"a loss summed over pixels (normalization {mode}), so every gradient is ~{per:,} times a "
                     f"pixel's for {size} images")
        ref = f"the VGG reference for a summed loss ({SUMMED.lr} at {SUMMED.momentum:g} on ~500×500 images)"
        mix = (f" An lr of {lr:g} belongs with a normalized loss (FCN-AlexNet: {NORMALIZED.lr}), not a summed one."
               if lr >= 1e-6 else "")
    else:
        stage, recipe_lr, per = 0, NORMALIZED.base_lr, 1
        ratio = step / ALEXNET_STEP
        loss_text = f"a normalized loss (averaged over pixels, normalization {mode})"
        ref = (f"the FCN-AlexNet reference for a normalized loss ({NORMALIZED.lr} at {NORMALIZED.momentum:g} = "
               f"{sci(NORMALIZED.step)})")
        mix = (f" Momentum {SUMMED.momentum:g} belongs to the VGG recipe, whose loss is summed over pixels and whose "
               f"lr is {SUMMED.lr}." if m >= SUMMED.momentum else "")
    if STEP_WARNING > ratio >= STEP_SMALL_WARNING * (1 - 1e-6):  # "beyond 100x" is strictly beyond
        return []
    ideal = (f"base_lr ≈ {sci_text(recipe_lr * REFERENCE_PIXELS / per)} with momentum {SUMMED.momentum:g} "
             "(normalize: false, as the VGG reference)" if summed
             else f"base_lr {NORMALIZED.lr} with momentum {NORMALIZED.momentum:g} (FCN-AlexNet)")
    other = (f"or switch to a normalized loss (normalization: VALID) with base_lr {NORMALIZED.lr}, momentum "
             f"{NORMALIZED.momentum:g}" if summed
             else f"or sum the loss (normalize: false) with base_lr ≈ {SUMMED.lr} × {REFERENCE_PIXELS} / (pixels "
             f"per image), momentum {SUMMED.momentum:g} (the VGG recipe)")
    howmuch = f"{times_text(ratio)} the step of" if ratio >= 1 else f"1/{times_text(1 / ratio)[:-1]} of the step of"
    message = (f"{kind} at base_lr {lr:g}, momentum {m:g} takes effective steps lr/(1−momentum) = "
               f"{sci_text(step)} on {loss_text}: {howmuch} {ref}.{mix}")
    if ratio >= STEP_WARNING:
        severity = "error" if ratio >= STEP_ERROR else "warning"
        message += " Steps that large overshoot: the loss jumps or the ReLUs die."
        return [Finding(severity, "solver-step", message, f"Pick one recipe: {ideal}, {other}.")]
    staged = [j for j in (1, 2) if summed and STAGE_STEP_LOW <= ratio / STAGE_LR_FACTOR ** j < STEP_WARNING]
    if staged and stage >= staged[0]:
        return []  # the reference's own staged fine-tuning: 16s at 1e-12 from 32s, 8s at 1e-14 from 16s
    if staged:
        message += (f" That is the step the reference uses for FCN-{(16, 8)[staged[0] - 1]}s, fine-tuning a net "
                    "whose earlier stage is already trained; from VGG16 the weights barely move.")
        return [Finding("info", "solver-step", message, f"For training from VGG16: {ideal}.")]
    severity = "error" if ratio <= STEP_SMALL_ERROR * (1 + 1e-6) else "warning"
    message += (" Steps that small barely move the weights: the loss sits near its start (ln K for a fresh "
                "head) for days.")
    return [Finding(severity, "solver-step", message, f"Pick one recipe: {ideal}, {other}.")]


def check_batch(batch: Optional[int], solver) -> list[Finding]:
    """Finding 7: one image per step and no gradient accumulation."""
    iter_size = solver.iter_size if solver is not None else 1
    if batch != 1 or iter_size != 1:
        return []
    return [Finding(
        "info", "batch-one",
        "Each step sees one image (batch_size 1, iter_size 1). The VGG reference does this on purpose with "
        f"momentum {SUMMED.momentum:g}, which averages ~100 steps; with lower momentum or Adam the steps are noisy.",
        "Raise batch_size (equal-size tiles), or accumulate with iter_size (FCN-AlexNet uses 20).")]


