"""`fcnseg train`: pycaffe SGD with validation, metrics, plots, atomic snapshots, exact resume and
health checks.

`train(config, run_dir, ...)` is the one entry point. It writes the run folder (see runs.py), checks the
setup with doctor first, initialises from pretrained weights (weights.py), then steps the solver one
iteration at a time so it can validate, snapshot, watch the loss and react to signals between steps.
What it shares with eval lives in building blocks: the val pass (`metrics.validate`), Caffe's log
(`caffe_env.CaffeLogRedirect`), snapshot names and the resume point (`runs`); its advice when a run does
not learn quotes `recipes`.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from . import diskspace, files, integrity, runs, verify
from .caffe_env import CaffeLogRedirect, caffe_pb2, require_gpu, set_device
from .config import Config, config_differences, input_mean, load_config
from .cpu_kernels import kernel_report
from .dataset import DatasetInfo
from .doctor import diagnose_definition, format_findings
from .errors import ConfigError, DataError, RunError
from .metrics import read_events, validate
from .recipes import NORMALIZED, SCRATCH, SCRATCH_MAX_STAGES, SCRATCH_NORM, SUMMED
from .resolve import Resolved, resolve
from .tensorboard_events import Board, val_overlay
from .weights import format_report, initialize, scratch_warning

EXIT_NAN = 1
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
DEAD_LOSS_TOLERANCE = 0.02  # relative distance from ln(K) that counts as "uniform prediction"
# Config keys a resume may change without --force: training longer, or validating/saving more often.
RESUMABLE_CHANGES = frozenset({"solver.max_iter", "train.val_interval", "train.snapshot_interval",
                               "train.display_interval", "train.tensorboard"})


def learning_rate(config: Config, it: int) -> float:
    """The learning rate Caffe's SGDSolver::GetLearningRate uses at iteration `it`."""
    s = config.solver
    if s.lr_policy == "fixed":
        return s.base_lr
    if s.lr_policy == "step":
        return s.base_lr * s.gamma ** (it // s.stepsize)
    if s.lr_policy == "multistep":
        return s.base_lr * s.gamma ** sum(1 for v in s.stepvalue if it >= v)
    if s.lr_policy == "exp":
        return s.base_lr * s.gamma ** it
    if s.lr_policy == "inv":
        return s.base_lr * (1 + s.gamma * it) ** (-s.power)
    if s.lr_policy == "poly":
        return s.base_lr * (1 - it / s.max_iter) ** s.power
    raise ValueError(s.lr_policy)


# ---------------------------------------------------------------- run folder, config and resume checks

def prepare_run(config: Config, run_dir: Path, resume: bool, force: bool) -> tuple[Resolved, bool]:
    """Resolve the config (once: its dataset.yaml is read here) and check it against the run folder; writes
    nothing.

    Returns (the resolved config with its dataset, whether the run's definition must be (re)written).
    Raises ConfigError/DataError/RunError on bad input.
    """
    if config.data.root is None:
        raise ConfigError("data.root is not set; import data with `fcnseg data import -o DIR` and pass "
                          "--data DIR (or set data.root)")
    resolved = resolve(config)
    config, info = resolved.config, resolved.dataset
    _check_batching(config, info)
    if resume:
        saved_path = run_dir / files.CONFIG_FILE
        if not saved_path.is_file():
            raise RunError(f"{run_dir}: not a run folder (no {files.CONFIG_FILE}); cannot resume")
        saved = load_config(saved_path)
        diff = config_differences(saved, config)
        # lr_policy poly decays towards max_iter: a new max_iter changes the schedule already followed.
        poly = config.solver.lr_policy == "poly" and saved.solver.lr_policy == "poly"
        free = RESUMABLE_CHANGES - ({"solver.max_iter"} if poly else set())
        changed = [line for line in diff if line.split(":", 1)[0] not in free]
        if changed and not force:
            if [line.split(":", 1)[0] for line in changed] == ["solver.max_iter"]:
                raise RunError(_poly_max_iter_refusal(run_dir, saved, config))
            may = "the train.*_interval keys" + ("" if poly else " and solver.max_iter")
            raise RunError(f"{run_dir}: the config differs from the run's: {'; '.join(changed)}. "
                           f"Resume with the same config (only {may} may change"
                           f"{'; with lr_policy poly, solver.max_iter is the schedule itself' if poly else ''}), "
                           "or add --force to continue with the new one")
        return resolved, bool(diff)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir}: run folder exists and is not empty; choose another --out, "
                       f"or continue it with --resume {run_dir}")
    return resolved, True


def _poly_max_iter_refusal(run_dir: Path, saved: Config, config: Config) -> str:
    """Why a resume with lr_policy poly cannot take a new solver.max_iter, and the two ways on."""
    old, new = saved.solver.max_iter, config.solver.max_iter
    snapshot = runs.newest_snapshot(run_dir, ".caffemodel")
    at = files.snapshot_iteration(snapshot) if snapshot is not None else None
    jump = ""
    if at is not None and at < new:
        jump = (f": at iteration {at} the rate would go from {learning_rate(saved, at):.3g} to "
                f"{learning_rate(config, at):.3g}, then fall to 0 at {new}")
    weights = snapshot if snapshot is not None else run_dir / files.SNAPSHOT_DIR / "LAST.caffemodel"
    return (f"{run_dir}: solver.max_iter: {old} -> {new} cannot change on --resume with lr_policy poly, because "
            f"the rate decays to 0 at max_iter and this run has followed a schedule ending at {old}. To train longer, "
            f"start a new run from its last weights (fcnseg train CONFIG --out NEW_RUN --set init.weights={weights}"
            f"), which runs a whole poly schedule of {new} iterations again; or add --force to continue this run "
            f"on a schedule ending at {new}, which moves the rate{jump or ' onto the new curve'}")


def _check_batching(config: Config, info: DatasetInfo) -> None:
    sizes = info.sizes
    if config.data.batch_size > 1 and not info.tile and len(sizes) > 1:
        raise ConfigError(f"data.batch_size is {config.data.batch_size} but {config.data.root} holds images "
                          f"of {len(sizes)} different sizes; use data.batch_size: 1 or import with --tile N")
    for split in ("train", "val"):
        if info.samples(split) < 1:
            raise DataError(f"{config.data.root}: the {split} split is empty; re-import with a val split "
                            "(--val-fraction or --val LIST)")


# ---------------------------------------------------------------- the training loop

@dataclass
class History:
    """What the plots are drawn from (re-read from metrics.jsonl on resume)."""

    train: list[tuple[int, float]] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> "History":
        h = cls()
        for e in read_events(path.read_text().splitlines()) if path.is_file() else []:
            if e.get("event") == "train":
                h.train.append((e["iter"], e["loss"]))
            elif e.get("event") == "val":
                h.val.append(e)
        return h


def plot_history(history: History, run_dir: Path) -> None:
    """Redraw loss.png (smoothed training loss, val loss) and val.png (mean IU, pixel acc)."""
    import matplotlib  # noqa: PLC0415 - heavy (a second to import), needed only when a plot is drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - as above

    fig, ax = plt.subplots(figsize=(7, 4))
    if history.train:
        ax.plot(*zip(*history.train), label="train (smoothed)")
    if history.val:
        ax.plot([v["iter"] for v in history.val], [v["loss"] for v in history.val], "o-", label="val")
    ax.set_xlabel("iteration"), ax.set_ylabel("loss"), ax.grid(alpha=0.3), ax.legend()
    _save_fig(fig, run_dir / "loss.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    if history.val:
        its = [v["iter"] for v in history.val]
        ax.plot(its, [v["mean_iu"] for v in history.val], "o-", label="mean IU")
        ax.plot(its, [v["pixel_acc"] for v in history.val], "s--", label="pixel acc")
    ax.set_xlabel("iteration"), ax.set_ylim(0, 1), ax.grid(alpha=0.3), ax.legend(loc="lower right")
    ax.set_title("validation")
    _save_fig(fig, run_dir / "val.png")
    plt.close("all")


def _save_fig(fig, path: Path) -> None:
    fig.tight_layout()
    files.write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90))


def _solver_file(run_dir: Path, definition: runs.Definition) -> Path:
    """A solver prototxt with absolute paths (the run's own solver.prototxt stays relative)."""
    p = caffe_pb2().SolverParameter()
    p.CopyFrom(definition.solver)
    p.net = str(run_dir / files.TRAIN_VAL_FILE)
    p.snapshot_prefix = str(run_dir / files.SNAPSHOT_DIR / ".partial" / "train")
    path = run_dir / ".solver.abs.prototxt"
    files.write_text_atomic(path, str(p))
    return path


class Trainer:
    """Owns the solver and the run folder's files during one `fcnseg train` invocation."""

    def __init__(self, config: Config, dataset: DatasetInfo, run_dir: Path, out=print):
        self.config, self.dataset, self.run_dir, self.out = config, dataset, run_dir, out
        self.metrics_path = run_dir / files.METRICS_FILE
        self.history = History.read(self.metrics_path)
        self.best = max((v["mean_iu"] for v in self.history.val if v.get("mean_iu") is not None),
                        default=-1.0)
        self.stop_signal: Optional[int] = None
        self.losses: deque = deque(maxlen=config.train.smoothing)
        self.dead_since: Optional[int] = None
        self.dead_warned = False
        self.t0 = time.time()
        self.board: Optional[Board] = None  # TensorBoard's copy of the events (train.tensorboard), from _loop

    # -- events
    def log_event(self, event: dict) -> None:
        files.append_line(self.metrics_path, json.dumps(event))  # fsync'd: a power loss keeps every line
        if self.board is not None:
            self.board.event(event)

    def ensure_space(self, nbytes: int, what: str, it: int) -> None:
        """Stop with DiskFullError (exit 2) and a `stopped` event unless `nbytes` fit in the run folder, before
        Caffe writes them (a failed write there aborts the process); the snapshots already written stay."""
        try:
            diskspace.require(self.run_dir, nbytes, what, "free some space there")
        except diskspace.DiskFullError as exc:
            try:
                self.log_event({"event": "stopped", "iter": it, "reason": "disk full", "needed": nbytes,
                                "free": diskspace.free_bytes(self.run_dir)})
            except OSError:
                pass  # not even a line fits; the message below still says everything
            last = runs.newest_solverstate(self.run_dir)
            raise diskspace.DiskFullError(
                f"{exc}; training stopped at iteration {it}, the last good snapshot is "
                f"{last if last is not None else 'none (nothing to resume)'}; after freeing space continue with "
                f"`fcnseg train {self.run_dir / files.CONFIG_FILE} --resume {self.run_dir}`") from None

    def warn(self, text: str) -> None:
        self.out("\n" + "!" * 78 + "\n" + text + "\n" + "!" * 78)

    # -- snapshots
    def snapshot(self, solver) -> Path:
        """Write caffemodel + solverstate under .partial/, then rename: solverstate last, as the marker."""
        self.ensure_space(diskspace.snapshot_bytes(solver.net, self.config.solver.type),
                          f"the snapshot of iteration {solver.iter}", solver.iter)
        partial = self.run_dir / files.SNAPSHOT_DIR / ".partial"
        partial.mkdir(parents=True, exist_ok=True)
        solver.snapshot()
        stem = files.snapshot_stem(solver.iter)
        model, state = partial / f"{stem}.caffemodel", partial / f"{stem}.solverstate"
        final_dir = self.run_dir / files.SNAPSHOT_DIR
        files.fsync_file(model), files.fsync_file(state)  # on the disk before the renames publish them
        model.replace(final_dir / model.name)
        state.replace(final_dir / state.name)
        files.fsync_dir(final_dir)
        integrity.record(final_dir / model.name), integrity.record(final_dir / state.name)
        return final_dir / state.name

    def save_weights(self, net, name: str, it: int) -> None:
        self.ensure_space(diskspace.weights_bytes(net), name, it)
        files.write_atomic(self.run_dir / name, lambda tmp: net.save(str(tmp)))
        integrity.record(self.run_dir / name)

    # -- health
    def check_loss(self, it: int, loss: float) -> None:
        k = self.config.model.num_classes
        if not math.isfinite(loss):
            raise NonFiniteLoss(it, loss)
        per_pixel = loss if self.config.loss.normalize else None
        if per_pixel is not None and abs(per_pixel - math.log(k)) < DEAD_LOSS_TOLERANCE * math.log(k):
            self.dead_since = it if self.dead_since is None else self.dead_since
            if it - self.dead_since >= self.config.train.dead_loss_iters and not self.dead_warned:
                self.dead_warned = True
                self.warn(f"WARNING: the loss has sat at ln({k}) = {math.log(k):.4f} since iteration "
                          f"{self.dead_since}: the net predicts a uniform distribution, it is not learning.\n"
                          + LIKELY_CAUSES)
        else:
            self.dead_since = None

    def check_val(self, result: dict, it: int, net) -> None:
        if result["predicted_classes"] > 1:
            return
        probs = [v.get("foreground_prob") for v in self.history.val]
        verdict, why = one_class_verdict(self.history.train, [p for p in probs if p is not None],
                                         zero_weight_layers(net))
        head = (f"WARNING: at iteration {it} validation predicts ONE class for every pixel "
                f"(mean IU {result['mean_iu']:.3f}): {verdict.upper()}: {why}")
        if verdict == "not learned yet":
            self.warn(head + "\nRare classes often appear only after a while; let it run and watch the next "
                      "validation (for sparse objects, see `fcnseg data import --empty-tiles/--augment`).")
        else:
            self.warn(head + "\n" + LIKELY_CAUSES)


FLAT_LOSS_DROP = 0.02  # a smoothed training loss that fell less than this (relative) counts as flat


def zero_weight_layers(net) -> list[str]:
    """Names of `net`'s layers whose weights (first param blob) are all exactly zero."""
    return [name for name, blobs in net.params.items() if blobs and not np.any(blobs[0].data)]


def one_class_verdict(train_losses: list[tuple[int, float]], foreground_probs: list[float],
                      zero_layers: list[str]) -> tuple[str, str]:
    """Why validation predicts one class: ("dead", reason) or ("not learned yet", reason).

    Dead: a layer still has all-zero weights (Caffe's default filler is constant 0; below it nothing
    learns), or the smoothed training loss is flat (it fell by less than FLAT_LOSS_DROP between the
    logged value nearest half-way through and the last one). Not learned yet: the loss is still
    falling; the reason also says whether the mean foreground probability at foreground pixels (one
    value per validation, oldest first) is rising. `train_losses` holds (iteration, smoothed loss).
    """
    if zero_layers:
        return "dead", (f"layer(s) {', '.join(zero_layers[:6])} still have all-zero weights, so nothing "
                        "below them learns: give them a weight_filler (e.g. msra) or pretrained weights")
    if len(train_losses) < 2:
        return "not learned yet", "too few training iterations logged to judge the loss"
    last_it, last = train_losses[-1]
    earlier_it, earlier = min(train_losses[:-1], key=lambda p: abs(p[0] - last_it / 2))
    drop = (earlier - last) / earlier if earlier > 0 else 0.0
    loss_text = f"training loss {earlier:.4f} at iteration {earlier_it} -> {last:.4f} at {last_it}"
    if drop < FLAT_LOSS_DROP:
        return "dead", f"{loss_text}: flat, the net has settled on the class prior"
    fg = ""
    if len(foreground_probs) >= 2:
        trend = "rising" if foreground_probs[-1] > foreground_probs[-2] else "not rising yet"
        fg = f"; foreground probability {trend} ({foreground_probs[-2]:.3f} -> {foreground_probs[-1]:.3f})"
    elif foreground_probs:
        fg = f"; foreground probability {foreground_probs[-1]:.3f} at foreground pixels"
    return "not learned yet", f"{loss_text}: still falling{fg}"


LIKELY_CAUSES = f"""Likely causes:
  - no pretrained weights: VGG-depth nets trained from scratch with the reference recipe do not learn;
    convert ImageNet VGG16 with `fcnseg weights convert` and set init.weights, or use a shallower net
    (model.stages {SCRATCH_MAX_STAGES}) with {SCRATCH.solver} (configs/demo_hela_fcn8s.yaml), or any depth with
    model.norm: batch and {SCRATCH_NORM.solver} at {SCRATCH_NORM.lr} (configs/demo_hela.yaml, a U-Net);
  - learning rate against loss normalisation: loss.normalize false sums the loss over every pixel, so
    base_lr must be tiny ({SUMMED.lr} for ~500x500 images); with normalize true use ~{SCRATCH.lr} ({SCRATCH.solver}) or
    1e-3..1e-2 with momentum {NORMALIZED.momentum:g};
  - labels: foreground stored as 255 is Caffe's ignore label; check with `fcnseg data show` and
    `fcnseg doctor --config CONFIG --data-check`."""


class NonFiniteLoss(Exception):
    def __init__(self, it, loss):
        what = loss if isinstance(loss, str) else f"loss became {loss}"
        super().__init__(f"{what} at iteration {it}")
        self.it, self.loss = it, loss


def params_finite(net) -> bool:
    """True when every learnable blob of `net` is finite (a sum is NaN/inf if any element is)."""
    return all(np.isfinite(blob.data.sum()) for blobs in net.params.values() for blob in blobs)


def _install_signal_handlers(trainer: Trainer):
    def handler(signum, _frame):
        trainer.stop_signal = signum
    old = {s: signal.signal(s, handler) for s in EXIT_SIGNAL}
    return lambda: [signal.signal(s, h) for s, h in old.items()]


def train(config: Config, run_dir: str | Path, resume: bool = False, gpu: Optional[int] = None,
          force: bool = False, weights: Optional[str] = None, out=print, from_iter: Optional[int] = None) -> int:
    """Train `config` into `run_dir`; returns the process exit code (0, or 130/143 on signals).

    A NaN/inf loss ends the *process* with exit code 1 (os._exit) after writing the message, the
    metrics event and keeping the last good snapshot: by then Caffe may have corrupted its heap.

    With `resume`, continues from run_dir's newest solverstate with the same iteration numbering (or from
    the snapshot of iteration `from_iter`, setting the newer ones aside; see verify.resume_point).
    Raises FcnsegError subclasses for bad input (before anything is trained).
    """
    run_dir = Path(run_dir)
    if weights is not None:
        config = config.model_copy(deep=True)
        config.init.weights = weights
    resolved, write = prepare_run(config, run_dir, resume, force)
    config, info = resolved.config, resolved.dataset
    resume_hint = f"fcnseg train {run_dir / files.CONFIG_FILE} --resume {run_dir}"
    state = verify.resume_point(run_dir, from_iter, resume_hint) if resume else None
    if resume and state is None:
        raise RunError(f"{run_dir}: no snapshot to resume from (snapshots/*.solverstate); "
                       "start it again without --resume into a new --out")
    out("data check: " + " ".join(verify.check_dataset(config.data.root, info=info).lines()))  # before Caffe reads it
    definition = runs.build_definition(resolved)
    _run_doctor(definition, force, out)  # before anything is written: a refused setup leaves no run folder
    require_gpu(gpu)  # likewise an unusable --gpu
    for line in verify.clear_stale(run_dir):
        out(line)
    if write:
        runs.write_definition(definition, run_dir)

    os.environ.setdefault("GLOG_minloglevel", "0")  # Caffe's log goes to caffe.log, in full
    with CaffeLogRedirect(run_dir / files.CAFFE_LOG):
        caffe = set_device(gpu)
        if config.solver.random_seed is not None:
            caffe.set_random_seed(config.solver.random_seed)
        solver = caffe.get_solver(str(_solver_file(run_dir, definition)))
    if gpu is None:  # on the CPU, say which kernels run (docs/performance.md)
        out(kernel_report().line())
    trainer = Trainer(config, info, run_dir, out)
    trainer.ensure_space(diskspace.snapshot_bytes(solver.net, config.solver.type), "a snapshot of this net",
                         files.snapshot_iteration(state) if state is not None else 0)
    if state is not None:
        why = verify.snapshot_fit_problem(solver.net, state, config.solver.type)
        if why:
            raise RunError(f"{state}: cannot be restored into this run's net ({why}); resume with the run's "
                           "own config")
        if from_iter is not None:
            for path in verify.set_aside_newer(run_dir, from_iter):
                out(f"set aside {path.name} (newer than iteration {from_iter}) in {path.parent}")
        _restore(solver, state, run_dir, config.solver.iter_size)
        out(f"resumed from {state.name} at iteration {solver.iter}")
    else:
        rows = initialize(solver.net, config, config.init.weights, definition.train_val)
        out(format_report(rows))
        out(resolved.describe_input())
        if loss_line := resolved.describe_loss():
            out(loss_line)
        warning = None if config.init.weights else scratch_warning(config)
        if warning:
            out(warning)
    return _loop(solver, trainer)


def _run_doctor(definition: runs.Definition, force: bool, out) -> None:
    findings = diagnose_definition(definition)
    errors = [f for f in findings if f.severity == "error"]
    if findings:
        out(format_findings(findings))
    if errors and not force:
        raise ConfigError(f"doctor found {len(errors)} error(s) in this setup (listed above); fix them, "
                          "or add --force to train anyway")


def _restore(solver, state: Path, run_dir: Path, iter_size: int) -> None:
    """Restore a solverstate, pointing it at its own caffemodel (the run folder may have moved)."""
    pb = caffe_pb2().SolverState()
    pb.ParseFromString(state.read_bytes())
    model = state.with_suffix(".caffemodel")
    if not model.is_file():
        raise RunError(f"{state}: its weights {model.name} are missing; delete the solverstate and resume")
    pb.learned_net = str(model)
    fixed = run_dir / files.SNAPSHOT_DIR / ".partial" / "restore.solverstate"
    fixed.parent.mkdir(parents=True, exist_ok=True)
    fixed.write_bytes(pb.SerializeToString())
    solver.restore(str(fixed))
    fixed.unlink()
    # The Data layer restarts at the first record; replay the data layers alone (cheap) so the
    # resumed run sees exactly the batches an uninterrupted run would.
    for _ in range(solver.iter * iter_size):
        solver.net.forward(end="label")


def _loop(solver, trainer: Trainer) -> int:
    c, run_dir = trainer.config, trainer.run_dir
    max_iter, start = c.solver.max_iter, solver.iter
    k, samples = c.model.num_classes, trainer.dataset.samples("val")
    restore_signals = _install_signal_handlers(trainer)
    last_snapshot = None
    bar = tqdm(total=max_iter, initial=start, desc="train", unit="it", dynamic_ncols=True, file=sys.stderr)
    if c.train.tensorboard:
        trainer.board = Board(run_dir, start, trainer.dataset.class_names(), (run_dir / files.CONFIG_FILE).read_text())
    try:
        while solver.iter < max_iter:
            with CaffeLogRedirect(run_dir / files.CAFFE_LOG):
                solver.step(1)
            it = solver.iter
            loss = float(solver.net.blobs["loss"].data)
            try:
                trainer.check_loss(it, loss)
                # Non-finite weights must stop us before the next step: Caffe's max pooling writes
                # gradients out of bounds on NaN input and corrupts the heap.
                if not params_finite(solver.net):
                    raise NonFiniteLoss(it, "non-finite weights after the update")
            except NonFiniteLoss as exc:
                bar.close()
                trainer.log_event({"event": "nan", "iter": it, "loss": str(loss)})
                keep = f"; the last good snapshot is {last_snapshot}" if last_snapshot else ""
                trainer.out(f"error: training stopped: {exc}{keep}.\nLikely causes: the learning rate is too "
                            f"high for the loss normalisation (loss.normalize={c.loss.normalize}, solver."
                            f"base_lr={c.solver.base_lr:g}); a summed loss needs a far smaller base_lr; "
                            "or labels outside [0, K) that are not the ignore label.")
                # Caffe's max-pooling backward writes out of bounds on NaN input, so the heap may
                # already be corrupt: leave now, without destructors (everything is on disk).
                sys.stdout.flush(), sys.stderr.flush()
                os._exit(EXIT_NAN)
            trainer.losses.append(loss)
            smoothed = float(np.mean(trainer.losses))
            lr = learning_rate(c, it - 1)
            bar.update(1)
            bar.set_postfix(loss=f"{smoothed:.4f}", lr=f"{lr:.2g}", refresh=False)
            if it % c.train.display_interval == 0 or it == max_iter:
                trainer.log_event({"event": "train", "iter": it, "loss": smoothed, "raw_loss": loss,
                                   "lr": lr, "elapsed": round(time.time() - trainer.t0, 3)})
                trainer.history.train.append((it, smoothed))
            if it % c.train.val_interval == 0 or it == max_iter:
                _validate(solver, trainer, it, k, samples)
            if it % c.train.snapshot_interval == 0 or it == max_iter:
                last_snapshot = trainer.snapshot(solver)
            if trainer.stop_signal is not None:
                break
        bar.close()
        if trainer.stop_signal is not None:
            if last_snapshot is None or files.snapshot_iteration(last_snapshot) != solver.iter:
                last_snapshot = trainer.snapshot(solver)
            plot_history(trainer.history, run_dir)
            name = signal.Signals(trainer.stop_signal).name
            trainer.log_event({"event": "stopped", "iter": solver.iter, "signal": name})
            trainer.out(f"stopped by {name} at iteration {solver.iter}; snapshot {last_snapshot}\n"
                        f"resume with: fcnseg train {run_dir / files.CONFIG_FILE} --resume {run_dir}")
            return EXIT_SIGNAL[trainer.stop_signal]
        trainer.save_weights(solver.net, files.FINAL_WEIGHTS, solver.iter)
        trainer.log_event({"event": "done", "iter": solver.iter, "best_mean_iu": trainer.best,
                           "elapsed": round(time.time() - trainer.t0, 3)})
        trainer.out(f"done: {solver.iter} iterations in {time.time() - trainer.t0:.0f} s; best val mean IU "
                    f"{trainer.best:.4f}; run folder {run_dir}")
        return 0
    finally:
        bar.close()
        restore_signals()
        if trainer.board is not None:
            trainer.board.close()


def _validate(solver, trainer: Trainer, it: int, k: int, samples: int) -> None:
    test_net = solver.test_nets[0]
    # Caffe shares the trained weights with its test net only inside Solver::Test, which fcnseg
    # never calls; share them here (pointer sharing, no copy).
    test_net.share_with(solver.net)
    with CaffeLogRedirect(trainer.run_dir / files.CAFFE_LOG):
        result = validate(test_net, k, samples)
    event = {"event": "val", "iter": it, **{key: result[key] for key in (
        "loss", "pixel_acc", "mean_acc", "mean_iu", "fw_iu", "per_class_iu", "confusion", "foreground_prob")},
        "elapsed": round(time.time() - trainer.t0, 3)}
    trainer.log_event(event)
    if trainer.board is not None:
        blobs, c = test_net.blobs, trainer.config
        trainer.board.image(it, val_overlay(blobs["data"].data[0], blobs["label"].data[0, 0], blobs["score"].data[0],
                                            input_mean(c), c.data.scale, c.data.ignore_label))
    trainer.history.val.append(event)
    trainer.out(f"\nval @ {it}: loss {result['loss']:.4f}  pixel acc {result['pixel_acc']:.4f}  "
                f"mean IU {result['mean_iu']:.4f}")
    trainer.check_val(result, it, solver.net)
    if result["mean_iu"] is not None and result["mean_iu"] > trainer.best:
        trainer.best = result["mean_iu"]
        trainer.save_weights(solver.net, files.BEST_WEIGHTS, it)
    plot_history(trainer.history, trainer.run_dir)
