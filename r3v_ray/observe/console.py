"""What a run prints: r3v's own lines, one progress bar per long step, and of the libraries' output only what a user
needs (docs/observability.md). `--verbose` shows everything.

Ray forwards every worker's output to the driver. Most of it is detail a user does not read (Ray Train's worker-group
lines, each checkpoint report, Ray Data's execution plans, transformers' "Loading weights" bars, which become one
line per actor outside a terminal); it stays in Ray's log files under the session directory. Errors are never
quietened: warnings and errors of every library still print, and a failed task's traceback reaches the driver as
its exception.
"""

from __future__ import annotations

import logging
import os
import sys

# Variables every process of a run needs, set in the driver before Ray starts (a local Ray's processes inherit
# them) and sent in the runtime env of submitted jobs (r3v_ray/pipeline/loop.py).
WORKER_ENV = {
    # transformers' loading bars: in a Ray actor (no terminal) each is a line per actor and model load.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # Ray Train re-routes a worker's print() through its logger, which adds an empty line after each progress-bar
    # update; printed as they are, the updates reach the driver's bar (ray.experimental.tqdm_ray) and nothing else.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # The dashboard's Train view (Ray Train's state actor); read by the driver that starts the training.
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
    # How often Ray Train's controller polls its workers (default 2 s); it takes in their reports as it polls, so the
    # final checkpoint reached it about 5 s after the last step (benchmarks/round.py); at 0.5 s, about 1 s.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Ray Train's preemption watcher (an actor per training that watches for draining nodes) is created with actor
    # handles as constructor arguments and max_restarts=-1, which makes Ray's core worker print an error line for
    # every training of a healthy run. Without it a preempted worker still fails its training, which Ray Train
    # restarts from the last checkpoint (training.max_failures) and a re-run resumes. Set it to 1 to have it back.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}

# Run at the start of every worker process of an r3v driver's job (Ray's runtime_env "worker_process_setup_hook",
# set by r3v_ray/cluster/connect.py's ensure_ray).
WORKER_SETUP_HOOK = "r3v_ray.observe.console.worker_setup"

# Loggers whose INFO lines repeat what r3v's stage lines say (kept with --verbose).
_CHATTY = ("r3v_ray.tasks", "r3v_ray.training")
_quiet = False  # set by `setup`: a command runs without --verbose


def apply_env() -> None:
    """WORKER_ENV into this process's environment, where the user has not set the variable."""
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)


def worker_setup() -> None:
    """In each worker process: Ray's and torch's notices about their own internals, which a user can do nothing
    about, left out (Ray Train's state tracking reads a deprecated Ray Data option in every training's controller;
    DeepSpeed's ZeRO calls a deprecated torch collective)."""
    import warnings

    warnings.filterwarnings("ignore", message=r"`ExecutionOptions\.exclude_resources` is deprecated")
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor` is deprecated", category=FutureWarning)


def setup(verbose: bool = False) -> None:
    """Logging for a command: r3v's INFO lines as `HH:MM:SS message` (warnings with their level and logger), the
    libraries' INFO lines only with `verbose`, which also switches on the full format and r3v's DEBUG lines."""
    global _quiet
    apply_env()
    _quiet = not verbose
    handler = _BarSafeHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_ShortFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("urllib3", "filelock", "matplotlib", "PIL", "fsspec", "botocore", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)  # DEBUG chatter even in verbose mode
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def verbose() -> bool:
    """Whether this process runs with --verbose (r3v's DEBUG lines on): training then logs every step."""
    return logging.getLogger("r3v_ray").isEnabledFor(logging.DEBUG)


def quiet_ray_data() -> None:
    """Unless verbose, Ray Data's console handler to warnings only: its per-dataset INFO lines (execution plan, log
    directory, a hint about another progress UI, the finish time) repeat the stage lines; its progress bars stay,
    and its log file under the session directory keeps every line. Called where a dataset is built (importing
    ray.data configures that handler, so this cannot happen earlier without slowing every command down)."""
    if not _quiet:
        return  # verbose, or no r3v command set up the console (a library caller): Ray Data's own behaviour
    import ray.data  # noqa: F401

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler":
            handler.setLevel(logging.WARNING)


class _ShortFormatter(logging.Formatter):
    def __init__(self):
        super().__init__(datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        time = self.formatTime(record, self.datefmt)
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname} {record.name}: {message}"
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return f"{time} {message}"


class _BarSafeHandler(logging.StreamHandler):
    """A stream handler that lifts the progress bars (ray.experimental.tqdm_ray's, on this driver) off the screen
    while it writes a line, as Ray does for the workers' lines, so a log line never lands inside a bar."""

    def emit(self, record: logging.LogRecord) -> None:
        manager = _bar_manager()
        if manager is None:
            return super().emit(record)
        manager.hide_bars()
        try:
            super().emit(record)
        finally:
            manager.unhide_bars()


def _bar_manager():
    module = sys.modules.get("ray.experimental.tqdm_ray")
    return getattr(module, "_manager", None) if module else None
