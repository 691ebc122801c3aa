"""Serve stage: a policy and the identifiers behind an HTTP API (Ray Serve) on 127.0.0.1, in the foreground.

Laptop:        emprl serve --run-dir runs/demo          (R/ppo/policy, else R/sft/policy; R/identifiers)
               curl -s localhost:8000/v1/respond -H 'content-type: application/json' \
                   -d '{"turns": ["I lost my job today."], "sampling": {"seed": 1}}'
               EMPRL_API_KEY=secret emprl serve --run-dir runs/demo serve.port=8080   (Bearer key needed)
Cluster job:   ray job submit --working-dir . -- python -m jobs.cli.serve --preset paper --run-dir /shared/runs/paper \
                   resources.address=auto serve.policy_replicas=2
Sweep:         emprl serve --run-dir runs/demo --policy runs/tune/<best trial>/ppo/policy
Bucket:        emprl serve --run-dir s3://bucket/runs/paper   (each replica fetches the models onto its node)
Serve CLI:     serve run configs/serve.yaml          (the same app from a Serve config file, foreground)
               serve deploy configs/serve.yaml -a http://127.0.0.1:8265   (onto a running cluster)
Ctrl-C shuts Serve and the local Ray cluster down. The API is documented at http://HOST:PORT/docs.
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.launch.console import setup_logging
from jobs.launch.options import add_config_args, add_run_dir_args, config_from_args, run_module
from pipeline import storage
from pipeline.config import MECHANISMS, Config, ConfigError, load_config
from pipeline.layout import RunLayout
from pipeline.models import ModelSourceError
from pipeline.scoring import identifier_folders
from pipeline.storage.transfer import MARKER

if TYPE_CHECKING:
    from ray.serve import Application

logger = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("serve", help="serve a policy and the identifiers over HTTP (Ray Serve)")
    add_config_args(parser)
    add_run_dir_args(
        parser,
        "the policy and identifiers/",
        policy="policy folder (default: <run>/ppo/policy, else <run>/sft/policy)",
        identifiers="default: <run>/identifiers",
    )
    parser.set_defaults(func=main_args)


def _is_folder(path: Path) -> bool:
    """Whether folder ``path`` is there: a complete published folder in the bucket for a mirror path
    (nothing is downloaded: the replicas fetch what they load), a directory otherwise."""
    return storage.exists(path) if storage.uri_of(path) else path.is_dir()


def served_folders(run_dir: Path, policy: Path | None, identifiers: Path | None) -> tuple[Path, Path]:
    """The policy and identifiers folders to serve (local, or mirror paths of URIs: checked in the
    bucket); exits with one line naming a missing one and the fix."""
    layout = RunLayout(run_dir)
    show = storage.display
    if policy is None:
        candidates = [layout.ppo.policy, layout.sft.policy]
        policy = next((p for p in candidates if _is_folder(p)), None)
        if policy is None:
            raise SystemExit(
                f"serve: no policy in {show(candidates[0])} or {show(candidates[1])}. Fix: train one "
                f"(`emprl sft` / `emprl ppo --run-dir {show(run_dir)}`) or pass --policy DIR."
            )
    elif not _is_folder(policy):
        raise SystemExit(
            f"serve: policy folder {show(policy)} does not exist (in a bucket: no complete one, with its "
            f"{MARKER} marker). Fix: pass --policy with a saved policy."
        )
    config = policy / "config.json"
    if not (storage.exists(config) if storage.uri_of(config) else config.is_file()):
        raise SystemExit(
            f"serve: {show(policy)} holds no saved policy (no config.json). Fix: pass a folder written by "
            "save_policy."
        )
    identifiers = identifiers or layout.identifiers.path
    if storage.uri_of(identifiers):
        missing = [m for m in MECHANISMS if not storage.exists(identifiers / m)]
        if missing:
            raise SystemExit(
                f"serve: identifiers folder {show(identifiers)} has no complete "
                f"{' / '.join(f'{m}/' for m in missing)} identifier. Fix: train the identifiers with "
                f"`emprl identifiers train`, or pass --identifiers with a folder holding ER/, IP/ and EX/."
            )
        return policy, identifiers
    try:
        identifier_folders(identifiers)
    except ModelSourceError as exc:
        raise SystemExit(f"serve: {exc}") from None
    return policy, identifiers


def serve_forever(cfg: Config, policy: Path, identifiers: Path, stop: threading.Event | None = None) -> None:
    """Deploy the app and block until ``stop`` is set or Ctrl-C; Serve and a local Ray cluster this
    call started are shut down either way."""
    from ray import serve

    from actors.cluster.session import ray_session
    from actors.serving.app import build_app, start_serve

    stop = stop or threading.Event()
    with ray_session(cfg.resources):
        try:
            start_serve(cfg)
            serve.run(build_app(cfg, policy, identifiers), name="emprl", route_prefix="/")
            url = f"http://{cfg.serve.host}:{cfg.serve.port}"
            logger.info(
                "serving %s at %s (API docs: %s/docs); Ctrl-C stops", storage.display(policy), url, url
            )
            print(f"EmpRL serving at {url}  (docs: {url}/docs, Ctrl-C to stop)", flush=True)
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            logger.info("stopping")
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]


APP_ARGS = frozenset({"run_dir", "preset", "overrides", "policy", "identifiers"})


def app_builder(args: dict[str, Any]) -> Application:
    """Serve's application builder, for ``serve run`` / ``serve deploy`` of ``configs/serve.yaml``
    (``import_path: jobs.cli.serve:app_builder``). ``args``: ``run_dir`` (required), ``preset`` (default:
    the run's ``config.yaml``, else ``local``), ``overrides`` (a list of ``key=value``), ``policy`` and
    ``identifiers`` (folders; default from the run as ``emprl serve`` picks them). Each of these may be
    an ``s3://``/``gs://`` URI (the run's ``config.yaml`` is then fetched here, the models by the
    replicas). The HTTP address and timeout are the file's ``http_options``, not ``serve.host/port``.

    Raises:
        ValueError: unknown or missing args, a bad config or a missing model folder (Serve shows the
            message in the application's status).
    """
    from actors.serving.app import build_app

    unknown = sorted(set(args) - APP_ARGS)
    if unknown:
        raise ValueError(f"serve app args: unknown {unknown}; known: {sorted(APP_ARGS)}")
    if not args.get("run_dir"):
        raise ValueError("serve app args: give run_dir (the run folder holding the policy and identifiers/)")
    run_dir = storage.local_path(str(args["run_dir"])).expanduser()
    overrides = args.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ValueError(
            f"serve app args: overrides must be a list of 'key=value' strings, got {overrides!r}"
        )
    saved = RunLayout(run_dir).config
    preset = str(args.get("preset") or (saved if storage.fetch(saved).is_file() else "local"))
    try:
        cfg = load_config(preset, overrides)
        policy, identifiers = served_folders(
            run_dir,
            storage.local_path(str(args["policy"])).expanduser() if args.get("policy") else None,
            storage.local_path(str(args["identifiers"])).expanduser() if args.get("identifiers") else None,
        )
    except (ConfigError, SystemExit) as exc:
        raise ValueError(f"serve app: {exc}") from None
    logger.info(
        "serve app: %s and %s with preset %s",
        storage.display(policy),
        storage.display(identifiers),
        storage.display(preset),
    )
    return build_app(cfg, policy, identifiers)


def main_args(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    policy, identifiers = served_folders(args.run_dir, args.policy, args.identifiers)
    setup_logging(args.log_level, verbose=True)
    serve_forever(cfg, policy, identifiers)


def main(argv: list[str] | None = None) -> None:
    run_module("serve", add_parser, argv)


if __name__ == "__main__":
    main()
