"""The `fcnseg` command line: parse arguments, call one function per command, report errors.

User errors (FcnsegError) print one line on stderr and exit 2; anything else is an internal failure:
traceback, exit 1.
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from . import __version__
from .config import load_config
from .errors import FcnsegError

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
    from .dataset import read_dataset, resolve_config  # noqa: PLC0415
    from .runs import write_definition  # noqa: PLC0415

    cfg = resolve_config(load_config(config, overrides))
    meta = read_dataset(cfg.data.root) if cfg.data.root else None
    paths = write_definition(cfg, out_dir, meta)
    from .nets import upsampling_plan  # noqa: PLC0415
    plan = ", ".join(f"{name} {f}x" for name, f in upsampling_plan(cfg.model))
    click.echo(f"{cfg.model.arch}, {cfg.model.stages} stages (stride {cfg.model.net_stride}), "
               f"{cfg.model.num_classes} classes; upsampling: {plan}")
    for path in paths.values():
        click.echo(f"wrote {path}")


def main(argv=None) -> int:
    """Console entry point: run the CLI, turning FcnsegError into one line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="fcnseg", standalone_mode=False)
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
    except Exception:  # noqa: BLE001 - an internal failure: show everything
        traceback.print_exc()
        click.echo("fcnseg: internal error (the traceback above is a bug; please report it)", err=True)
        return 1
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
