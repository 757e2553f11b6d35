"""Reading a training curve: Caffe's glog output (`caffe train ... 2> caffe.log`, or pycaffe's stderr) or fcnseg's
metrics.jsonl, and naming what it shows.

Patterns (codes `log-*`, docs/doctor.md, "Doctor findings"):
- the loss sits at ln K: the net predicts the uniform distribution (dead net, nothing learns);
- with a summed loss the same dead net gives a fixed value per image (pixels × ln K): the values recur;
- 87.3365 = −ln(FLT_MIN): SoftmaxWithLoss clamps log(0), so some labelled pixel has probability exactly 0;
- NaN / inf: the weights diverged;
- the loss rising from start to end;
- accuracy stuck at 1/K (uniform guess) or at one value that is not (the majority class everywhere).
`diagnose_log` adds the likely causes among prototxt findings when it is given them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Optional, Sequence

from ..config import read_text
from ..errors import ConfigError
from ..metrics import read_events
from .facts import Finding

FLT_MIN_LOSS = -math.log(1.17549435e-38)  # 87.3365: Caffe's SoftmaxWithLoss clamps prob at FLT_MIN
FLAT_TOLERANCE = 0.005                    # relative: "sits at" a value
MIN_POINTS = 3                            # displays needed before a curve is judged
RISE = 1.5                                # last third's median over the first third's

GLOG = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [\w.\-]+:\d+\] (?P<msg>.*)$")
ITER_LOSS = re.compile(r"Iteration (?P<it>\d+)(?: \([^)]*\))?, loss = (?P<v>\S+)")
TESTING = re.compile(r"Iteration (?P<it>\d+), Testing net")
OUTPUT = re.compile(r"(?P<phase>Train|Test) net output #\d+: (?P<name>\S+) = (?P<v>\S+)")

# Which prototxt findings explain which curve (log code -> prototxt codes, most likely first).
CAUSES = {
    "log-uniform": ("zero-init", "upsampling-filler", "weights-unused", "from-scratch", "solver-step", "head-classes",
                    "mask-255"),
    "log-frozen": ("zero-init", "upsampling-filler", "weights-unused", "from-scratch", "solver-step", "mask-255"),
    "log-clamp": ("solver-step", "label-range", "mask-255", "ignore-label", "head-classes"),
    "log-nan": ("solver-step", "label-range", "from-scratch"),
    "log-rising": ("solver-step", "batch-one"),
    "log-accuracy": ("zero-init", "upsampling-filler", "mask-255", "class-imbalance", "solver-step", "from-scratch"),
}
TOO_LARGE_ONLY = {"log-clamp", "log-nan", "log-rising"}  # a solver-step finding explains these only if too large


@dataclass
class TrainingLog:
    """A training curve: train losses and named outputs per phase, as (iteration, value) pairs."""

    path: Path
    kind: str                                            # "caffe" or "fcnseg"
    losses: list = field(default_factory=list)           # (iteration, loss) as displayed
    outputs: dict = field(default_factory=dict)          # ("Train"|"Test", name) -> [(iteration, value)]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")  # Caffe prints -nan, nan, inf


def read_log(path: str | Path) -> TrainingLog:
    """Parse Caffe glog output or fcnseg's metrics.jsonl (told apart by the first line).

    Raises ConfigError when the file is missing or holds no training curve at all.
    """
    path = Path(path)
    text = read_text(path, "training log")
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and lines[0].lstrip().startswith("{"):
        log = _read_metrics(path, lines)
    else:
        log = _read_glog(path, lines)
    if not log.losses and not log.outputs:
        raise ConfigError(f"{path}: no training curve found: expected Caffe's log lines ('... solver.cpp:...] "
                          "Iteration N, loss = X') or fcnseg's metrics.jsonl")
    return log


def _read_glog(path: Path, lines: Sequence[str]) -> TrainingLog:
    log = TrainingLog(path, "caffe")
    test_iter = 0
    for line in lines:
        m = GLOG.match(line.strip())
        if not m:
            continue
        msg = m.group("msg")
        if (t := TESTING.search(msg)) is not None:
            test_iter = int(t.group("it"))
        elif (it := ITER_LOSS.search(msg)) is not None:
            log.losses.append((int(it.group("it")), _number(it.group("v"))))
        elif (out := OUTPUT.search(msg)) is not None:
            phase = out.group("phase")
            at = test_iter if phase == "Test" else (log.losses[-1][0] if log.losses else 0)
            log.outputs.setdefault((phase, out.group("name")), []).append((at, _number(out.group("v"))))
    return log


def _read_metrics(path: Path, lines: Sequence[str]) -> TrainingLog:
    log = TrainingLog(path, "fcnseg")
    for e in read_events(lines):
        try:
            _read_event(log, e)
        except (KeyError, TypeError, ValueError) as exc:  # a field missing or of another type
            raise ConfigError(f"{path}: a {str(e.get('event'))[:20]!r} event without a usable {exc}: not a line "
                              "fcnseg writes (damaged, or edited); give the run's own metrics.jsonl or caffe.log"
                              ) from None
    return log


def _read_event(log: TrainingLog, e: dict) -> None:
    """Add one metrics.jsonl event to `log`; KeyError/TypeError/ValueError naming a field that is not usable."""
    kind = e.get("event")
    if kind not in ("train", "nan", "val"):
        return
    it = e.get("iter")
    if not isinstance(it, int) or isinstance(it, bool):
        raise KeyError("iter")
    if kind == "train":
        log.losses.append((it, float(e.get("raw_loss", e["loss"]))))
    elif kind == "nan":
        log.losses.append((it, _number(str(e.get("loss", "nan")))))
    else:
        for name in ("loss", "pixel_acc"):
            if name in e:
                key = ("Test", "accuracy" if name == "pixel_acc" else name)
                log.outputs.setdefault(key, []).append((it, float(e[name])))


def _flat(values: Sequence[float], target: float) -> bool:
    return len(values) >= MIN_POINTS and all(abs(v - target) <= FLAT_TOLERANCE * abs(target) for v in values)


def _uniform_k(value: float) -> Optional[int]:
    """K when value is ln K (K = 2 … 1000), else None."""
    if not 0.5 < value < math.log(1000.5):
        return None
    k = round(math.exp(value))
    return k if k >= 2 and abs(math.log(k) - value) <= FLAT_TOLERANCE * value else None


def curve_findings(log: TrainingLog, num_classes: Optional[int] = None, summed: Optional[bool] = None,
                   pixels: Optional[int] = None, majority: Optional[tuple[int, float]] = None) -> list[Finding]:
    """What the curve shows. `num_classes`, `summed` (loss normalisation) and `pixels` (per image) come from
    the prototxt when known; without them K is recognised from ln K. `majority` (class, share of the
    labelled val pixels), read from the label LMDB, names the class a stuck accuracy stands for."""
    out = []
    name = log.path.name
    finite = [(i, v) for i, v in log.losses if math.isfinite(v)]
    bad = next(((i, v) for i, v in log.losses if not math.isfinite(v)), None)
    if bad is not None:
        before = [p for p in finite if p[0] < bad[0]]
        last = f" (last finite value {before[-1][1]:g} at iteration {before[-1][0]})" if before else ""
        out.append(Finding(
            "error", "log-nan",
            f"{name}: the loss is {bad[1]} from iteration {bad[0]}{last}: the weights diverged and everything "
            "after is garbage.",
            "Lower the effective step (base_lr / (1 − momentum)) to the recipe of the loss normalisation, check "
            "the labels are 0..K−1 or the ignore label, and restart from weights saved before the divergence."))
    clamped = [(i, v) for i, v in finite if abs(v - FLT_MIN_LOSS) <= 1e-4 * FLT_MIN_LOSS]
    if clamped:
        out.append(Finding(
            "error", "log-clamp",
            f"{name}: the loss is 87.3365 at iteration {clamped[0][0]}"
            f"{f' and {len(clamped) - 1} more displays' if len(clamped) > 1 else ''}: that is −ln(FLT_MIN), the "
            "value SoftmaxWithLoss reports when a labelled pixel gets probability exactly 0 — scores so large "
            "that softmax saturates (a diverged net), or labels the scores do not cover.",
            "Lower the effective step; check every label is 0..K−1 or the ignore label (a 0/255 mask needs "
            "255 → 1); check the head's num_output is K."))
    tail = [v for _, v in finite[-max(MIN_POINTS, len(finite) // 3):]]
    k = num_classes
    if tail and not clamped:
        guess = k if k and _flat(tail, math.log(k)) else (_uniform_k(median(tail)) if not k else None)
        if guess and _flat(tail, math.log(guess)):
            out.append(Finding(
                "error", "log-uniform",
                f"{name}: the loss sits at {median(tail):.6g} = ln {guess} over the last {len(tail)} displays "
                f"(to iteration {finite[-1][0]}): the net predicts 1/{guess} for every class at every pixel — "
                "its output does not depend on the input. Nothing is learning.",
                "Find what keeps the scores at zero: layers starting at 0 (no filler, weights not loaded), a "
                "zero upsampling kernel, or a step so small the head never moves."))
        elif len(finite) > MIN_POINTS + 1:
            values = [round(v, 4) for _, v in finite[1:]]
            repeats = len(values) - len(set(values))
            # a net that learns never shows the same 6-digit loss twice; a dead one repeats each image's value
            if repeats >= MIN_POINTS and repeats >= len(values) // 2:
                per = (f"; per pixel {median(tail) / pixels:.4g}"
                       + (f" vs ln {k} = {math.log(k):.4g}" if k else "") if pixels else "")
                how = ("a loss summed over pixels gives each image its own fixed value (pixels × ln K) once the "
                       "net is dead" if summed is not False else "the outputs no longer change")
                out.append(Finding(
                    "error", "log-frozen",
                    f"{name}: {repeats} of {len(values)} displayed losses repeat values seen before exactly "
                    f"(median {median(tail):.6g}{per}): {how}. Nothing is learning.",
                    "Treat it as a loss stuck at ln K: find the layers that start at zero or are never loaded, "
                    "or the step that is far too small."))
    if len(finite) >= 2 * MIN_POINTS and bad is None and not clamped:  # those say more than "rising"
        third = max(1, len(finite) // 3)
        first, last = median(v for _, v in finite[:third]), median(v for _, v in finite[-third:])
        if first > 0 and last > RISE * first:
            out.append(Finding(
                "warning", "log-rising",
                f"{name}: the loss rises from a median {first:.4g} (first third) to {last:.4g} (last third, to "
                f"iteration {finite[-1][0]}): the steps overshoot.",
                "Lower base_lr (or momentum) to the recipe of the loss normalisation; restart from an early "
                "snapshot."))
    out += _accuracy_findings(log, k, majority)
    return out


def _accuracy_findings(log: TrainingLog, k: Optional[int], majority: Optional[tuple[int, float]]) -> list[Finding]:
    out = []
    for (phase, name), points in sorted(log.outputs.items()):
        if "acc" not in name.lower() or "per_class" in name.lower() or "mean" in name.lower():
            continue
        values = [v for _, v in points if math.isfinite(v)][-MIN_POINTS:]
        if len(values) < MIN_POINTS or len({round(v, 4) for v in values}) > 1:
            continue
        value = values[-1]
        guess = k or (round(1 / value) if 0 < value <= 0.5 and abs(1 / value - round(1 / value)) < 0.02 else None)
        if guess and abs(value - 1 / guess) <= 0.02 / guess:
            what = (f"1/{guess}: the net guesses uniformly among {guess} classes (or every pixel's label is "
                    "another class than the one it predicts)")
        elif majority is not None and abs(value - majority[1]) <= 0.005:
            what = (f"{value:.4g} at every evaluation, the share of class {majority[0]} in the val labels "
                    f"({majority[1]:.4g}): the net predicts class {majority[0]} everywhere")
        else:
            what = (f"{value:.4g} at every evaluation: the net predicts one class everywhere and {value:.4g} is "
                    "that class's share of the labelled pixels (the majority-class fraction)")
        out.append(Finding(
            "error", "log-accuracy",
            f"{log.path.name}: {phase.lower()} {name} stays at {what}, over the last {len(values)} evaluations "
            f"(to iteration {points[-1][0]}).",
            "Judge by mean IU, and find why the scores do not depend on the input (layers at zero, a dead "
            "upsampling, labels that are all one class or 0/255)."))
    return out


def with_causes(log_findings: list[Finding], net_findings: Sequence[Finding]) -> list[Finding]:
    """Each curve finding with the prototxt findings that most likely explain it appended to its message."""
    out = []
    for f in log_findings:
        causes = []
        for code in CAUSES.get(f.code, ()):
            for nf in net_findings:
                if nf.code != code or nf.severity == "info" and code != "solver-step":
                    continue
                if code == "solver-step" and (f.code in TOO_LARGE_ONLY) != ("overshoot" in nf.message):
                    continue
                causes.append(f"{code}" + (f" [{nf.layer}]" if nf.layer else ""))
        tail = (f" Likely causes in the prototxt: {', '.join(dict.fromkeys(causes))} (below)." if causes
                else " The prototxt given shows none of the usual causes of this.")
        out.append(Finding(f.severity, f.code, f.message + tail, f.fix, f.layer))
    return out
