"""``ada``: the command line of the project (``python -m ada_utils`` is the same).

Each area registers its own subcommands from ``ada_utils/cli/<area>.py`` (``register(subparsers)``); every
subcommand sets ``func(args) -> int``. Heavy imports (torch, timm) happen inside the subcommands, so
``ada --help`` stays fast.

Errors: a user error (a missing file, a bad parameter, a refused run folder, a diverged run, an image that does
not decode, absent photo sources, a full disk, a damaged file) prints one line and exits with 2; Ctrl-C, SIGTERM
(what SLURM, Kubernetes and most schedulers send before killing a job) and SIGHUP print "stopped by SIGNAL; re-run
the same command to resume" (``ada train``: with ``--resume``, after saving a checkpoint of the last step) and exit
with 128 + the signal's number (130, 143, 129); what was computed stays (caches and checkpoints are written
atomically); anything else, CUDA and NCCL failures included, keeps its traceback, because
its message alone rarely says where it came from.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

# Modules that add subcommands, in the order ``ada --help`` lists them.
CLI_MODULES = ("data", "eval", "index", "train", "book")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``ada`` argument parser: every area's subcommands in full (``command`` None), or only ``command``'s in
    full and the others by name and help line (``""``: none in full).

    Each area lists its commands in ``COMMANDS`` (name -> help line) without importing anything heavy; ``register``
    then imports what its flags need (``ada train``'s come from ``TrainConfig``, which imports torch). So ``ada
    --help`` and ``ada data ...`` never pay for torch and timm.
    """
    parser = argparse.ArgumentParser(prog="ada", description="ada: synthetic image attribution by alignment and "
                                     "disentanglement (data, embeddings, evaluation, training, the book)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in CLI_MODULES:
        module = importlib.import_module(f"ada_utils.cli.{name}")
        if command is None or command in module.COMMANDS:
            module.register(subparsers)
        else:
            for cmd, text in module.COMMANDS.items():
                subparsers.add_parser(cmd, help=text)
    return parser


def _command(argv: list[str]) -> str:
    """The subcommand named on the command line ("" for none: ``ada``, ``ada --help``)."""
    return next((a for a in argv if not a.startswith("-")), "")


# Errors a user fixes from the message alone; RuntimeError is not one of them (CUDA, NCCL and torch's own
# failures are RuntimeErrors), except the project's subclasses named in ``_user_errors``.
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, ValueError)
USER_RUNTIME_ERRORS = (("ada_utils.train.loop", "TrainingDivergedError"), ("ada_utils.data.photos", "PhotoSourceError"),
                       ("ada_utils.data.images", "ImageDecodeError"), ("ada_utils.files", "NoSpaceError"))


def _stop_on(signum: int, frame: object) -> None:
    """SIGTERM / SIGHUP end a command as Ctrl-C does (its ``KeyboardInterrupt`` names the signal)."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _interrupted(command: str, err: KeyboardInterrupt) -> int:
    """The resume line of a stopped command; the exit code 128 + the signal's number, as the shell reports it."""
    name = err.args[0] if err.args and str(err.args[0]).startswith("SIG") else "SIGINT"
    hint = "a checkpoint of the last step is saved: re-run it with --resume to continue" if command == "train" \
        else "what was finished is kept: re-run the same command to resume"
    print(f"\nada {command}: stopped by {name}; {hint}", file=sys.stderr)
    return 128 + int(signal.Signals[name])


def _user_errors() -> tuple[type[BaseException], ...]:
    """``USER_ERRORS`` and the project's user-facing RuntimeError subclasses (of modules already imported)."""
    extra = [getattr(sys.modules.get(module), name, None) for module, name in USER_RUNTIME_ERRORS]
    return USER_ERRORS + tuple(cls for cls in extra if isinstance(cls, type))


def _one_line(err: BaseException) -> str:
    """The user's message; an error re-raised from a DataLoader worker carries the worker's traceback: keep its
    last line, which is the original message."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def _end_distributed() -> None:
    """Destroy a ``torch.distributed`` process group that a subcommand started under torchrun."""
    module = sys.modules.get("ada_utils.distributed")  # only that module starts process groups
    if module is not None:
        module.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ada`` console script; returns the process exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    old = {sig: signal.signal(sig, _stop_on) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if getattr(args, "params_file", None):  # ada train -f FILE.yaml: the file's values become the defaults
            args.apply_params_file(args.params_file)
            args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt as err:
        return _interrupted(args.command, err)
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise  # a bug or a CUDA / NCCL failure: keep the traceback
        print(f"ada {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    finally:
        _end_distributed()
        for sig, handler in old.items():  # a caller (a test, a notebook) keeps its own handlers
            signal.signal(sig, handler)
