"""Run a user's training script as ``__main__`` while a session records it.

The script sees what it would see without gradprobe: ``sys.argv`` is
``[script, *args]``, ``sys.path[0]`` is the script's directory, the working
directory is unchanged, its stdout is untouched and its exit code becomes
gradprobe's. Framework adapters attach when the script imports the framework.
The run is flushed and closed however the script ends: normally,
``sys.exit(n)``, an exception, ``--max-steps``, SIGINT or SIGTERM. Only this
process is recorded: child processes run without gradprobe
(:mod:`gradprobe.recording.forked_children`).
"""

from __future__ import annotations

import builtins
import os
import signal
import sys
import traceback
import types
from dataclasses import dataclass
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Callable, Sequence

from gradprobe.recording import deferred_signals
from gradprobe.recording.forked_children import ChildProcesses
from gradprobe.errors import GradprobeError
from gradprobe.recording.post_import import PostImportHooks
from gradprobe.recording.seeding import seeded
from gradprobe.recording.session import Session, StopTraining, describe_exception


class _Terminated(BaseException):
    """SIGTERM turned into an exception so that the run can be flushed."""


@dataclass
class Outcome:
    """How the script ended: gradprobe's exit code, the run status and what to re-raise."""

    exit_code: int
    status: str
    error: str | None = None
    stop_reason: str | None = None
    signal: int | None = None


def check_script(script: str) -> Path:
    """Validate that ``script`` is a readable Python file that compiles; return its path."""
    path = Path(script)
    if not path.exists():
        raise GradprobeError(f"script not found: {script}")
    if path.is_dir():
        raise GradprobeError(f"{script} is a directory, not a Python script")
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise GradprobeError(f"cannot read {script}: {exc.strerror or exc}") from None
    try:
        compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise GradprobeError(f"{script}:{exc.lineno}: syntax error: {exc.msg}") from None
    except ValueError as exc:
        raise GradprobeError(f"{script}: cannot be compiled: {exc}") from None
    return path


def _attachments(session: Session) -> dict[str, Callable[[object], None]]:
    """What to attach when the script imports each framework."""

    def attach_torch(_module: object) -> None:
        try:
            from gradprobe.pytorch.recorder import TorchRecorder

            session.recorders.append(TorchRecorder(session).install())
        except Exception as exc:  # never break the script's import
            print(f"gradprobe: cannot attach to PyTorch ({describe_exception(exc)}); "
                  "the script runs unrecorded", file=sys.stderr)

    attached_tensorflow = []

    def attach_tensorflow(module: object) -> None:
        # tensorflow and keras import each other: attach once the other one has finished importing.
        other = sys.modules.get("keras" if getattr(module, "__name__", None) == "tensorflow" else "tensorflow")
        if attached_tensorflow or getattr(getattr(other, "__spec__", None), "_initializing", False):
            return
        attached_tensorflow.append(module)
        keras = sys.modules.get("keras")
        if keras is not None and keras.backend.backend() != "tensorflow":
            print(f"gradprobe: Keras uses the {keras.backend.backend()} backend; gradprobe records Keras "
                  "with the tensorflow backend, so the script runs unrecorded", file=sys.stderr)
            return
        try:
            from gradprobe.tensorflow import TFRecorder

            session.recorders.append(TFRecorder(session).install())
        except Exception as exc:  # never break the script's import
            print(f"gradprobe: cannot attach to TensorFlow ({describe_exception(exc)}); "
                  "the script runs unrecorded", file=sys.stderr)

    return {"torch": attach_torch, "tensorflow": attach_tensorflow, "keras": attach_tensorflow}


def run_script(session: Session, script: str, args: Sequence[str], seed: int | None = None) -> Outcome:
    """Execute ``script`` with ``args`` under ``session``; always closes the session.
    ``seed`` seeds Python, NumPy, PyTorch and TensorFlow (:mod:`gradprobe.recording.seeding`)."""
    path = check_script(script)
    hooks = PostImportHooks(seeded(_attachments(session), seed)).install()
    children = ChildProcesses(session).install()
    saved_argv, saved_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = [script, *args]
    script_dir = str(path.resolve().parent)
    if sys.path:
        sys.path[0] = script_dir
    else:
        sys.path.insert(0, script_dir)
    previous_term = deferred_signals.install(signal.SIGTERM, _raise_terminated)
    # Ctrl-C keeps Python's own handler, deferred; a SIGINT the parent set to be ignored stays ignored.
    own_sigint = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if own_sigint:
        deferred_signals.install(signal.SIGINT, signal.default_int_handler)
    try:
        outcome = _execute(path)
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        if own_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        hooks.remove()
        children.remove()
        for recorder in session.recorders:
            recorder.remove()
        sys.argv = saved_argv
        if saved_path0 is not None:
            sys.path[0] = saved_path0
    if outcome.status == "finished" and session.recording and not session.recorded_steps \
            and not session.writer.meta["warnings"]:
        session.warn("no step recorded: the script ran no optimizer step or backward() of a model gradprobe "
                     "could see" + ("" if session.recorders else " (it imported neither PyTorch nor TensorFlow)"))
    session.close(outcome.status, outcome.exit_code, outcome.error, outcome.stop_reason)
    return outcome


def _raise_terminated(signum, frame):
    raise _Terminated()


def _run_as_main(path: Path) -> None:
    """Execute the script the way ``python script.py`` does: as a fresh ``__main__`` module
    whose ``__file__`` is the absolute, unnormalised path (``sys.argv`` is left alone)."""
    filename = os.path.join(os.getcwd(), path)
    code = compile(path.read_bytes(), filename, "exec")
    module = types.ModuleType("__main__")
    module.__dict__.update(
        __file__=filename, __cached__=None, __package__=None, __spec__=None,
        __loader__=SourceFileLoader("__main__", filename), __builtins__=builtins,
    )
    sys.modules["__main__"] = module
    exec(code, module.__dict__)


def _execute(path: Path) -> Outcome:
    try:
        _run_as_main(path)
    except SystemExit as exc:
        return _exit_outcome(exc)
    except StopTraining as exc:
        return Outcome(0, "finished", stop_reason=str(exc))
    except KeyboardInterrupt as exc:
        _print_script_traceback(exc, path)
        return Outcome(130, "interrupted", error="KeyboardInterrupt", signal=signal.SIGINT)
    except _Terminated:
        return Outcome(143, "interrupted", error="terminated by SIGTERM", signal=signal.SIGTERM)
    except BaseException as exc:  # the script's own failure: report it as Python would
        _print_script_traceback(exc, path)
        return Outcome(1, "crashed", error=describe_exception(exc))
    return Outcome(0, "finished")


def _exit_outcome(exc: SystemExit) -> Outcome:
    code = exc.code
    if code is None:
        exit_code = 0
    elif isinstance(code, int):
        exit_code = code
    else:
        print(code, file=sys.stderr)
        exit_code = 1
    status = "finished" if exit_code == 0 else "crashed"
    return Outcome(exit_code, status, error=None if exit_code == 0 else f"SystemExit: {code}")


def _print_script_traceback(exc: BaseException, path: Path) -> None:
    """Print the traceback from the script's first frame on, hiding gradprobe's own frames."""
    tb = exc.__traceback__
    script = str(path.resolve())
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != script:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb or exc.__traceback__, file=sys.stderr)


def reraise_signal(outcome: Outcome) -> None:
    """End the process by the signal that ended the script, as the shell would see it."""
    if outcome.signal is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(outcome.signal, signal.SIG_DFL)
    os.kill(os.getpid(), outcome.signal)
