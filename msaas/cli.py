"""The `msaas` command: a thin shell over the library (up | rest | worker | logs | fetch-model | separate | status | queue | models | mix)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from . import logbus
from .config import ConfigError, Settings


def _connect(settings: Settings):
    from .jobs import connect

    return connect(settings.redis_url, settings.redis_password)


def cmd_rest(settings: Settings, args) -> int:
    from .rest.server import RestServer

    logbus.setup("rest", settings.hostname, _connect(settings), settings.log_level, settings.log_stdout)
    RestServer(settings, workers=args.workers).run()
    return 0


def cmd_worker(settings: Settings, args) -> int:
    from .storage import open_store
    from .worker import Worker

    client = _connect(settings)
    logbus.setup("worker", settings.hostname, client, settings.log_level, settings.log_stdout)
    worker = Worker(settings, client, open_store(settings))
    worker.install_signal_handlers()
    try:
        worker.run()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_logs(settings: Settings, args) -> int:
    from .logs import tail

    try:
        tail(_connect(settings))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_up(settings: Settings, args) -> int:
    from .embedded import up

    logbus.setup("up", settings.hostname, None, settings.log_level)
    root = Path(args.dir)
    if "storage_dir" not in settings.given:
        settings = settings.with_(storage_dir=root / "storage")
    return up(settings, root, [Path(p) for p in args.try_files], Path(args.out))


def cmd_fetch_model(settings: Settings, args) -> int:
    from .fetch import fetch_model

    logbus.setup("fetch", settings.hostname, None, settings.log_level)
    try:
        fetch_model(args.name, Path(args.dir), onnx=not args.no_onnx)
    except Exception as exc:
        print(f"msaas fetch-model: could not fetch {args.name}: {exc}", file=sys.stderr)
        return 1
    return 0


def _client(settings: Settings, args):
    from .client import Client

    return Client(args.server or settings.rest, api_key=args.key or settings.api_key)


def progress_line(name: str, status: dict, width: int = 30) -> str:
    """`song.mp3 [#########---------------------]  31.0% running separating`"""
    done = round(status["progress"] * width)
    stage = status.get("stage", "") if status["state"] == "running" else ""
    if status.get("queue_position") is not None:
        stage = f"({status['queue_position']} ahead)"
    if status.get("eta_s") is not None:
        stage += f", about {_duration(status['eta_s'])} left"
    return (
        f"{name} [{'#' * done}{'-' * (width - done)}] {status['progress'] * 100:5.1f}% {status['state']} {stage}".rstrip() + "   "
    )


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def cmd_separate(settings: Settings, args) -> int:
    from .client import ApiError, is_link

    client = _client(settings, args)
    code = 0
    for song in (arg if is_link(arg) else Path(arg) for arg in args.files):
        if not is_link(song) and not song.is_file():
            print(f"{song}: no such file", file=sys.stderr)
            code = 2
            continue
        choices = {"two_stems": args.two_stems, "format": args.format, "bitrate": args.bitrate}
        try:
            if not args.wait:
                print(json.dumps({"file": str(song), **client.submit(song, args.model, **choices)}))
                continue

            def show(status, name=song if is_link(song) else song.name):
                print(f"\r{progress_line(name, status)}", end="", file=sys.stderr, flush=True)

            stems = client.separate(song, Path(args.out), args.model, on_status=show, **choices)
            print(file=sys.stderr)
            for track, path in stems.items():
                print(f"{track}\t{path}")
        except (ApiError, OSError, TimeoutError) as exc:
            print(f"\n{song}: {exc}", file=sys.stderr)
            code = 1
    return code


def _show(call) -> int:
    from .client import ApiError

    try:
        print(json.dumps(call(), indent=2))
    except (ApiError, OSError) as exc:
        print(f"msaas: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_status(settings: Settings, args) -> int:
    return _show(lambda: _client(settings, args).status(args.hash))


def cmd_queue(settings: Settings, args) -> int:
    return _show(lambda: _client(settings, args).queue())


def cmd_mix(settings: Settings, args) -> int:
    """`msaas mix HASH --vocals 0 --out karaoke.mp3`: a gain per track, as options named for the tracks."""
    from .client import ApiError

    gains, extra = {}, list(args.gains)
    while extra:
        name = extra.pop(0)
        if not name.startswith("--") or not extra:
            print(f"msaas mix: expected --TRACK GAIN, got {name!r}", file=sys.stderr)
            return 2
        gains[name[2:]] = extra.pop(0)
    try:
        path = _client(settings, args).mix(args.hash, gains, Path(args.out))
    except (ApiError, OSError) as exc:
        print(f"msaas: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_models(settings: Settings, args) -> int:
    return _show(lambda: _client(settings, args).models())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msaas", description="Music separation as a service.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="the whole stack on this machine, until Ctrl-C")
    up.add_argument("--dir", default="var", help="where Redis data and the local object store live (default var/)")
    up.add_argument(
        "--try", dest="try_files", nargs="*", default=[], metavar="SONG", help="separate these songs once the stack is up"
    )
    up.add_argument("--out", default="out", help="where --try puts the stems (default out/)")
    up.set_defaults(run=cmd_up)
    rest = sub.add_parser("rest", help="the REST server (gunicorn)")
    rest.add_argument("--workers", type=int, default=2)
    rest.set_defaults(run=cmd_rest)
    sub.add_parser("worker", help="a separation worker").set_defaults(run=cmd_worker)
    sub.add_parser("logs", help="print the logging list").set_defaults(run=cmd_logs)
    fetch = sub.add_parser("fetch-model", help="download a model (Demucs or RoFormer) into a directory for DEMUCS_REPO")
    fetch.add_argument("name")
    fetch.add_argument("dir")
    fetch.add_argument(
        "--no-onnx", action="store_true", help="do not export a Demucs model's networks for ONNX Runtime (GPU-only workers)"
    )
    fetch.set_defaults(run=cmd_fetch_model)
    sep = sub.add_parser("separate", help="send songs to a server; with --wait, download their stems")
    sep.add_argument("files", nargs="+", metavar="SONG", help="a song file, or an http(s) link the server fetches")
    sep.add_argument("--model", help="a model of `msaas models`; `a+b`: an ensemble, their stems averaged")
    sep.add_argument("--two-stems", dest="two_stems")
    sep.add_argument("--format", choices=["mp3", "wav", "flac"])
    sep.add_argument("--bitrate", type=int)
    sep.add_argument("--wait", action="store_true", help="wait for the stems and download them")
    sep.add_argument("--out", default="separated")
    sep.set_defaults(run=cmd_separate)
    for name, fn, extra in (("status", cmd_status, "hash"), ("queue", cmd_queue, None), ("models", cmd_models, None)):
        cmd = sub.add_parser(name)
        if extra:
            cmd.add_argument(extra)
        cmd.set_defaults(run=fn)
    mix = sub.add_parser("mix", help="a song's stems mixed into one file: --TRACK GAIN for each track to change (--vocals 0)")
    mix.add_argument("hash")
    mix.add_argument("--out", default="mix.mp3")
    mix.set_defaults(run=cmd_mix)
    for cmd in (sep, mix, *[sub.choices[n] for n in ("status", "queue", "models")]):
        cmd.add_argument("--server", help="host:port or URL of the REST server (default $REST or localhost:5000)")
        cmd.add_argument("--key", help="the API key, when the server wants one (default $MSAAS_API_KEY)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, rest = p.parse_known_args(argv)
    if rest and args.command != "mix":  # only `mix` takes options named for a song's tracks
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.gains = rest
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"msaas: {exc}", file=sys.stderr)
        return 2
    logging.captureWarnings(True)
    # Ctrl-C means stop, even when a shell started us in the background with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return args.run(settings, args)


if __name__ == "__main__":
    sys.exit(main())
