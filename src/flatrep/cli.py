"""The ``flatrep`` command line: one subcommand per pipeline stage (Snakemake calls these).

Each subcommand imports only the modules it needs: torch, statsmodels and matplotlib take
seconds to import, and every Snakemake job is a fresh process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from flatrep.params import studies


def _study(args) -> dict:
    """The study config: ``--study-json`` (as Snakemake passes it) or ``--params --study``."""
    if getattr(args, "study_json", None):
        return json.loads(args.study_json)
    return studies.study_config(studies.load_params(args.params), args.study)


def _section(args, name: str) -> dict:
    """One section of the study: ``--<name>-json`` or read from ``--params --study``."""
    given = getattr(args, f"{name}_json")
    if given:
        return json.loads(given)
    return studies.study_config(studies.load_params(args.params), args.study)[name]


def cmd_prepare_data(args) -> None:
    from flatrep.data import datasets

    print(datasets.prepare(args.name, args.root, **json.loads(args.options)))


def cmd_train(args) -> None:
    from flatrep.training import single

    study = _study(args)
    run = (studies.Run(args.run, json.loads(args.hparams_json)) if args.hparams_json
           else studies.find_run(study, args.run))
    single.train_run(args.study, study, run, args.out_dir, args.data_root, args.threads)


def cmd_train_ensemble(args) -> None:
    from flatrep.training import ensemble

    study = _study(args)
    runs = [studies.Run(run_id, hparams) for run_id, hparams in json.loads(args.runs_json).items()]
    ensemble.train_ensemble(args.study, study, runs, args.out_root, args.data_root, args.threads)


def cmd_measure(args) -> None:
    from flatrep import checkpoint
    from flatrep.cube import measuring, netcdf

    runs = measuring.checkpoints_by_run(args.checkpoints, args.out)
    if len(runs) > 1:   # a training group: refuse a damaged file before measuring any run
        for path in args.checkpoints:
            checkpoint.read(path)
    for out, paths in runs.items():
        netcdf.write(measuring.measures_file(paths, _section(args, "measure"), args.data_root,
                                             args.threads), out)


def cmd_measure_model(args) -> None:
    from flatrep import data, determinism
    from flatrep.cube import any_model, netcdf

    try:
        options = json.loads(args.data_options)
    except json.JSONDecodeError as err:
        raise studies.ConfigError(f"--data-options {args.data_options!r} is not JSON "
                                  f"({err}); e.g. '{{\"num_samples\": 400}}'") from None
    determinism.configure(strict=True, threads=args.threads)
    model = any_model.model_from_files(args.factory, args.weights)
    (x, y), (x_test, y_test) = (data.load(args.dataset, split, args.data_root, **options)
                                for split in ("train", "test"))
    result = any_model.measure(model.to(determinism.pick_device(args.device)), x, y, args.loss,
                               test_inputs=x_test, test_targets=y_test, points=args.points,
                               point_seed=args.point_seed, families=args.families,
                               curvature=not args.no_curvature,
                               curvature_points=args.curvature_points)
    result.attrs.update(dataset=args.dataset, data_options=json.dumps(options, sort_keys=True),
                        weights=str(args.weights), factory=args.factory)
    netcdf.write(result, args.out)


def cmd_cube(args) -> None:
    from flatrep.cube import netcdf

    combined = netcdf.combine(args.run_files)
    combined.attrs["config"] = studies.cube_sections(_study(args))
    netcdf.write(combined, args.out)


def cmd_bounds(args) -> None:
    from flatrep.analysis import bounds
    from flatrep.cube import netcdf

    netcdf.write(bounds.evaluate(netcdf.read(args.cube)), args.out)


def cmd_stats(args) -> None:
    from flatrep import atomic
    from flatrep.analysis import claims, markdown, stats, trajectory_files
    from flatrep.cube import netcdf

    the_cube, the_bounds = netcdf.read(args.cube), netcdf.read(args.bounds)
    stats_cfg = _section(args, "stats")
    result = stats.study_statistics(the_cube, the_bounds, stats_cfg)
    table = claims.evaluate(the_cube, the_bounds, stats_cfg, _section(args, "figures"), result)
    netcdf.write(result.merge(table), args.out)
    headline = {**stats.summary(result, the_cube), "claims": claims.summary(table)}
    atomic.write_text(args.summary, json.dumps(headline, indent=2, sort_keys=True) + "\n")
    study = the_cube.attrs.get("study", "study")
    atomic.write_text(args.markdown, markdown.study_summary(study, result, table))
    Path(args.trajectory_dir).mkdir(parents=True, exist_ok=True)
    for name in trajectory_files.TRAJECTORY_PLOTS:
        atomic.write_text(Path(args.trajectory_dir) / f"{name}.csv",
                          trajectory_files.csv_text(the_cube, name))


def cmd_figures(args) -> None:
    from flatrep.analysis import figures
    from flatrep.cube import netcdf

    the_cube, the_bounds = netcdf.read(args.cube), netcdf.read(args.bounds)
    figures.trajectories(the_cube, _section(args, "figures"), args.trajectories)
    figures.bound_panels(the_bounds, args.bound_plot)
    the_stats = netcdf.read(args.stats)
    figures.correlation_pairs(the_cube, the_stats, args.correlations, _section(args, "figures"))
    figures.tightness_distributions(the_bounds, args.tightness)
    figures.claims_table(the_stats, args.claims_table)
    figures.robust_cdf(the_stats, args.robust_cdf)


def cmd_validate(args) -> None:
    from flatrep.params import validation

    params = studies.load_params(args.params)
    validation.check_params(params)
    print(f"{args.params}: {len(params['studies'])} studies valid")


def cmd_rehearse(args) -> int:
    from flatrep.params import validation
    from flatrep.pipeline import rehearsal

    params = studies.load_params(args.params)
    validation.check_params(params)
    chosen = args.studies or list(params["studies"])
    directory = rehearsal.write_project(params, Path(args.params).resolve().parent, chosen,
                                        args.dir, args.iterations, args.seeds)
    validation.check_params(studies.load_params(directory / "params.yaml"))
    rehearsal.run_snakemake(directory, args.cores)
    results = rehearsal.outcomes(directory, chosen)
    print(rehearsal.report(results))
    return 0 if all(outcome.passed for outcome in results) else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="flatrep", description=__doc__)
    top.add_argument("--attempt", type=int, help="Snakemake's attempt number of this job: a "
                     "later attempt of a job whose first failed deterministically fails at "
                     "once (flatrep.pipeline.attempts)")
    sub = top.add_subparsers(dest="command", required=True)

    def command(name, func, help_text, sections=()):
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        if sections:
            p.add_argument("--params", default="params.yaml", help="params file to read from")
            p.add_argument("--study", help="study name in the params file")
            for section in sections:
                p.add_argument(f"--{section}-json", help=f"the {section} config as JSON "
                               "(instead of --params/--study)")
        return p

    p = command("prepare-data", cmd_prepare_data, "generate a dataset into data/")
    p.add_argument("name")
    p.add_argument("--root", default="data")
    p.add_argument("--options", default="{}", help="dataset options as JSON")
    p = command("train", cmd_train, "train one run, writing its checkpoints", ["study"])
    p.add_argument("--run", required=True)
    p.add_argument("--hparams-json", help="the run's hyperparameters (default: from the grid)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--data-root", default="data")
    p.add_argument("--threads", type=int, default=1)
    p = command("train-ensemble", cmd_train_ensemble,
                "train several runs as one vmapped ensemble, writing each run's checkpoints",
                ["study"])
    p.add_argument("--runs-json", required=True, help="{run id: hyperparameters} of the members")
    p.add_argument("--out-root", required=True, help="checkpoints go to <out-root>/<run>/")
    p.add_argument("--data-root", default="data")
    p.add_argument("--threads", type=int, default=1)
    p = command("measure", cmd_measure,
                "measure every checkpoint of one run, or of several runs in one process",
                ["measure"])
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--out", nargs="+", required=True,
                   help="one measures.nc per run, in the folder of that run's checkpoints")
    p.add_argument("--data-root", default="data")
    p.add_argument("--threads", type=int, default=1)
    p = command("measure-model", cmd_measure_model,
                "measure a model flatrep did not train (flatrep.cube.any_model) on a dataset's "
                "train and test splits")
    p.add_argument("--weights", required=True,
                   help="a torch.save(model.state_dict()) file or a flatrep checkpoint, read "
                   "with torch.load(weights_only=True)")
    p.add_argument("--factory", required=True,
                   help="package.module:function building the untrained module, called with "
                   "no arguments (the module importable, e.g. on PYTHONPATH)")
    p.add_argument("--dataset", required=True, help="a dataset of flatrep.data.load")
    p.add_argument("--data-options", default="{}",
                   help="options of flatrep.data.load as JSON (e.g. classes, scale, and the "
                   "generation options that name the prepared file)")
    p.add_argument("--data-root", default="data", help="folder of the prepared datasets")
    p.add_argument("--points", type=int, help="measurement points per subset (default: all)")
    p.add_argument("--point-seed", type=int, default=0)
    p.add_argument("--families", nargs="*", default=[],
                   help="curvature families beside the core (flatrep.measures.suite.COSTS)")
    p.add_argument("--no-curvature", action="store_true", help="skip the Hessian measures")
    p.add_argument("--curvature-points", type=int,
                   help="training rows of the Hessian measures (default: all)")
    p.add_argument("--loss", default="mse", help="mse or cross_entropy")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="the NetCDF file to write")
    p = command("cube", cmd_cube, "combine per-run files into the study cube", ["study"])
    p.add_argument("run_files", nargs="+")
    p.add_argument("--out", required=True)
    p = command("bounds", cmd_bounds, "evaluate every bound on a cube")
    p.add_argument("cube")
    p.add_argument("--out", required=True)
    p = command("stats", cmd_stats, "statistics, claims table and summary.json",
                ["stats", "figures"])
    p.add_argument("cube")
    p.add_argument("bounds")
    for option in ("--out", "--summary", "--markdown"):
        p.add_argument(option, required=True)
    p.add_argument("--trajectory-dir", required=True,
                   help="folder of the trajectory files DVC plots (one CSV per quantity)")
    p = command("figures", cmd_figures, "trajectory, bound and correlation figures",
                ["figures"])
    p.add_argument("cube")
    p.add_argument("bounds")
    p.add_argument("stats")
    for option in ("--trajectories", "--bound-plot", "--correlations", "--tightness",
                   "--claims-table", "--robust-cdf"):
        p.add_argument(option, required=True)
    p = command("validate", cmd_validate, "check a params file")
    p.add_argument("params", nargs="?", default="params.yaml")
    p = command("rehearse", cmd_rehearse,
                "run studies end to end at toy scale on random images "
                "(flatrep.pipeline.rehearsal)")
    p.add_argument("studies", nargs="*", help="studies to rehearse (default: every study)")
    p.add_argument("--params", default="params.yaml",
                   help="params file of the project whose workflow is rehearsed")
    p.add_argument("--dir", default="rehearsal", help="folder of the rehearsal project")
    p.add_argument("--iterations", type=int, default=30, help="training steps of each run")
    p.add_argument("--seeds", type=int, default=2, help="seeds kept of each study")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    return top


def _library_errors() -> tuple[type[Exception], ...]:
    """Errors with a message meant for the user (the modules are imported lazily)."""
    errors = []
    for module, name in (("flatrep.data.datasets", "DataError"),
                         ("flatrep.checkpoint", "CheckpointError"),
                         ("flatrep.training.ensemble", "EnsembleError"),
                         ("flatrep.cube.netcdf", "CubeError"),
                         ("flatrep.cube.any_model", "MeasureError"),
                         ("flatrep.pipeline.rehearsal", "RehearsalError")):
        loaded = sys.modules.get(module)
        if loaded is not None:
            errors.append(getattr(loaded, name))
    return tuple(errors)


def _without_attempt(argv: list[str]) -> list[str]:
    """The command line without ``--attempt N`` (what identifies the job across attempts)."""
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--attempt":
            skip = True
        elif not word.startswith("--attempt="):
            kept.append(word)
    return kept


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; an error meant for the user (bad input, a missing file, an unwritable
    folder) is one line on stderr and exit status 2, not a traceback. With ``--attempt``,
    such an error is recorded, and a later attempt of the same job fails at once with it
    (``flatrep.pipeline.attempts``)."""
    from flatrep.pipeline import attempts

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    job = _without_attempt(argv)
    if args.attempt is not None:
        earlier = attempts.recorded(job, args.attempt)
        if earlier is not None:
            print(f"flatrep {args.command}: error: {earlier} (attempt {args.attempt}: not run "
                  "again, the first attempt failed with this error, which a retry cannot "
                  "change)", file=sys.stderr)
            return 2
    try:
        status = args.func(args)
    except (studies.ConfigError, FileNotFoundError, PermissionError) + _library_errors() as err:
        # one line: messages quoting torch or file lists may span several
        message = " ".join(str(err).split())
        print(f"flatrep {args.command}: error: {message}", file=sys.stderr)
        if args.attempt is not None:
            attempts.record(job, message)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
