"""samtune command line: `python run.py --pipeline prepare --config demo`.

Exit codes: 0 ok, 1 the run failed, 2 bad usage or config.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from pipelines import PIPELINES
from samtune.config import Config, ConfigError, load_config
from samtune.data.cases import DataError
from samtune.lifecycle.registry import RegistryError

REPO = Path(__file__).resolve().parent
log = logging.getLogger("samtune")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run.py", description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", choices=sorted(PIPELINES), help="pipeline to run")
    p.add_argument("--config", default="demo", help="config name in configs/ or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set convert.img_size=512 (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and print the resolved config and step plan; run nothing")
    p.add_argument("--no-cache", action="store_true", help="re-run every step")
    for what in ("datasets", "pipelines", "models"):
        p.add_argument(f"--list-{what}", action="store_true", help=f"list the {what}")
    p.add_argument("--download", metavar="MODEL", nargs="?", const="",
                   help="fetch MODEL's (default: the config's model) official checkpoint into "
                        "model.checkpoints_dir; with --pipeline, then run")
    p.add_argument("--check", action="store_true",
                   help="system check: versions, devices, disk, stack, checkpoints, smoke test")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout,
                        force=True)
    for noisy in ("great_expectations", "matplotlib", "PIL", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _dry_run(cfg: Config, pipeline: str) -> None:
    from samtune.cli.plans import plan_lines

    print("\n".join(plan_lines(cfg.to_dict(), pipeline)))
    if pipeline == "benchmark":
        from samtune.benchmark import dry_run_lines

        print("\n".join(dry_run_lines(cfg)))
    if cfg.stack.kind == "kubernetes":
        from stacks.k8s_run import dry_run_lines

        print("\n".join(dry_run_lines(cfg.stack, PIPELINES[pipeline].plan, cfg.schedule.cron)))
    if cfg.data.root is not None and not cfg.data.root.exists() and cfg.data.layout != "phantoms":
        log.warning("data.root %s does not exist (yet): the run would stop at ingest",
                    cfg.data.root)
    from samtune.cli.preflight import missing_checkpoint

    missing = missing_checkpoint(cfg, pipeline)
    if missing:
        log.warning("the run would stop before any step: %s", missing)


def _download(name: str, cfg: Config) -> int:
    from samtune.models.checkpoints import download

    try:
        print(download(name or cfg.model.name, cfg.model.checkpoints_dir))
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    return 0


def _report(run: object, output_dir: Path) -> None:
    from samtune.cli.summary import run_summary

    steps = getattr(run, "steps", {})
    for name, step_run in steps.items():
        print(f"  {name:<18} {getattr(step_run.status, 'value', step_run.status)}")
    print("\n".join(run_summary(output_dir, list(steps))))


def _check(cfg: Config) -> int:
    from samtune.cli import check
    from stacks.local import configure_environment, stack_rows

    home = configure_environment(cfg.stack, REPO)
    rows = (check.package_rows() + check.device_rows()
            + check.disk_rows({"artifacts": home, "cache": cfg.train.cache_dir})
            + stack_rows(cfg.stack, home) + check.checkpoint_rows(cfg) + check.smoke_rows())
    print(check.format_table(rows))
    return 1 if any(status == "fail" for _, status, _ in rows) else 0


def run_pipeline(cfg: Config, name: str, no_cache: bool, verbose: bool) -> int:
    if cfg.schedule.cron and cfg.stack.kind == "local":
        raise ConfigError("schedule.cron: the local stack has no scheduler; run by hand or from "
                          "cron (README), or use stack.kind kubernetes")
    from stacks.local import configure_environment, ensure_stack, prepare_experiment

    home = configure_environment(cfg.stack, REPO)
    from zenml.enums import ExecutionMode

    root = logging.getLogger()
    if any(type(h).__name__ == "ZenMLConsoleHandler" for h in root.handlers):
        for handler in [h for h in root.handlers if type(h) is logging.StreamHandler]:
            root.removeHandler(handler)  # zenml prints to the console itself: print once
    if not verbose:  # a failed step's message is reported once, below, without a traceback
        quiet = ("zenml.orchestrators.local.local_orchestrator",
                 "zenml.orchestrators.step_launcher")
        for handler in root.handlers:
            handler.addFilter(lambda r: r.name not in quiet or r.levelno < logging.ERROR)
    # FAIL_FAST re-raises the failing step's own exception (a DataError names file and problem)
    options: dict = {"execution_mode": ExecutionMode.FAIL_FAST, "enable_cache": not no_cache}
    if cfg.stack.kind == "kubernetes":
        from stacks.k8s_run import activate_remote, remote_options

        activate_remote(cfg.stack)
        options["steps"] = remote_options(cfg.stack, [s for s, _ in PIPELINES[name].plan])
    else:
        ensure_stack(cfg.stack, home)
        prepare_experiment(cfg.stack, home, name)
    if cfg.schedule.cron:  # a ZenML schedule: a CronJob through the Kubernetes orchestrator
        from zenml.config.schedule import Schedule
        options["schedule"] = Schedule(cron_expression=cfg.schedule.cron)
    module = importlib.import_module(PIPELINES[name].module)
    if name in ("finetune", "retrain"):  # the ZenML Model Control Plane version it produces
        from zenml import Model

        options["model"] = Model(name=cfg.registry.model_name)
    pipeline = getattr(module, name).with_options(**options)
    run = pipeline(config=cfg.to_dict())
    _report(run, cfg.output_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _setup_logging(args.verbose)
    if args.list_datasets or args.list_pipelines or args.list_models:
        from samtune.cli.listing import listing_lines

        print("\n".join(listing_lines(args.list_datasets, args.list_pipelines, args.list_models)))
        return 0
    if not (args.pipeline or args.download is not None or args.check):
        log.error("choose a pipeline with --pipeline (one of %s)", ", ".join(PIPELINES))
        return 2
    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if args.download is not None and not args.pipeline:
        return _download(args.download, cfg)
    if args.check:
        return _check(cfg)
    if args.dry_run:
        _dry_run(cfg, args.pipeline)
        return 0
    from samtune.cli.preflight import missing_checkpoint, unwritable_folders

    unwritable = unwritable_folders(cfg, args.pipeline, REPO)
    if unwritable:  # before ZenML or the stack is touched: a config problem, exit 2
        log.error("run stopped before any step:\n  %s", "\n  ".join(unwritable))
        return 2
    failed = args.download is not None and _download(args.download, cfg)
    missing = missing_checkpoint(cfg, args.pipeline)
    if missing:  # before ZenML or the stack is touched
        log.error("run failed before any step: %s", missing)
    if failed or missing:
        return 1
    try:
        return run_pipeline(cfg, args.pipeline, args.no_cache, args.verbose)
    except (DataError, ConfigError, RegistryError) as exc:
        log.error("run failed: %s", exc)
        return 1
    except Exception as exc:  # unexpected: the traceback is one flag away
        log.error("run failed: %s: %s", type(exc).__name__, exc)
        if args.verbose:
            log.exception("traceback")
        else:
            log.error("re-run with --verbose for the traceback")
        return 1


if __name__ == "__main__":
    sys.exit(main())
