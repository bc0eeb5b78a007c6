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
import gc
import os
import signal
import sys
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
    if not path.is_file():  # checked without opening: opening a FIFO would wait for a writer
        raise GradprobeError(f"{script} is not a regular file (a FIFO or a device cannot be checked, then run)")
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
    torch_loaded = "torch" in sys.modules  # if not, the script's import of torch attaches: no optimizer yet

    def attach_torch(_module: object) -> None:
        try:
            from gradprobe.pytorch.recorder import TorchRecorder

            session.recorders.append(TorchRecorder(session).install(optimizers_may_exist=torch_loaded))
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
        backend = keras.backend.backend() if keras is not None else "tensorflow"
        if backend == "torch":
            return  # Keras imported torch: the PyTorch hooks record it
        if backend != "tensorflow":
            print(f"gradprobe: Keras uses the {backend} backend; gradprobe records Keras with the tensorflow "
                  "or torch backend, so the script runs unrecorded", file=sys.stderr)
            return
        try:
            from gradprobe.tensorflow import TFRecorder

            session.recorders.append(TFRecorder(session).install())
        except Exception as exc:  # never break the script's import
            print(f"gradprobe: cannot attach to TensorFlow ({describe_exception(exc)}); "
                  "the script runs unrecorded", file=sys.stderr)

    return {"torch": attach_torch, "tensorflow": attach_tensorflow, "keras": attach_tensorflow}


def run_script(session: Session, script: str, args: Sequence[str], seed: int | None = None,
               on_end: Callable[[Outcome], None] | None = None) -> Outcome:
    """Execute ``script`` with ``args`` under ``session``; always closes the session.
    ``seed`` seeds Python, NumPy, PyTorch and TensorFlow (:mod:`gradprobe.recording.seeding`).
    ``on_end`` is called with the outcome once the run is closed, also when SIGTERM ends the
    process (it then dies by that signal, as Python would, without the script's ``finally``)."""
    path = check_script(script)
    filename = os.path.join(os.getcwd(), path)  # fixed before the script can change directory
    hooks = PostImportHooks(seeded(_attachments(session), seed)).install()
    children = ChildProcesses(session).install()
    saved_argv, saved_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = [script, *args]
    if sys.path:
        sys.path[0] = str(path.resolve().parent)
    else:
        sys.path.insert(0, str(path.resolve().parent))
    owner = os.getpid()
    # Signals the parent set to be ignored stay ignored; Ctrl-C keeps Python's own handler, deferred.
    own = [sig for sig, default in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler))
           if signal.getsignal(sig) is default]

    def finish(outcome: Outcome) -> Outcome:
        gc.unfreeze()
        for sig in own:
            signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)
        hooks.remove()
        children.remove()
        session.ending = outcome.status
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
        if on_end is not None:
            on_end(outcome)
        return outcome

    def terminated(signum: int, _frame: object) -> None:
        if os.getpid() == owner:  # a forked child just dies
            finish(Outcome(128 + signum, "interrupted", error="terminated by SIGTERM", signal=signum))
        reraise_signal(signum)

    if signal.SIGTERM in own:
        deferred_signals.install(signal.SIGTERM, terminated)
    if signal.SIGINT in own:
        deferred_signals.install(signal.SIGINT, signal.default_int_handler)
    # Objects gradprobe and its command line made so far are left out of the script's garbage collections,
    # which would otherwise walk them all again and again (a tenth of a second while torch is imported).
    gc.freeze()
    return finish(_execute(path, filename))


def _run_as_main(filename: str) -> None:
    """Execute the script the way ``python script.py`` does: as a fresh ``__main__`` module
    whose ``__file__`` is the absolute, unnormalised path (``sys.argv`` is left alone)."""
    with open(filename, "rb") as source:
        code = compile(source.read(), filename, "exec")
    module = types.ModuleType("__main__")
    module.__dict__.update(
        __file__=filename, __cached__=None, __package__=None, __spec__=None,
        __loader__=SourceFileLoader("__main__", filename), __builtins__=builtins,
    )
    sys.modules["__main__"] = module
    exec(code, module.__dict__)


def _execute(path: Path, filename: str) -> Outcome:
    try:
        _run_as_main(filename)
    except SystemExit as exc:
        return _exit_outcome(exc)
    except StopTraining as exc:
        return Outcome(0, "finished", stop_reason=str(exc))
    except KeyboardInterrupt as exc:
        script_excepthook(exc, filename)
        return Outcome(130, "interrupted", error="KeyboardInterrupt", signal=signal.SIGINT)
    except BaseException as exc:  # the script's own failure: report it as Python would
        script_excepthook(exc, filename)
        return Outcome(1, "crashed", error=describe_exception(exc))
    return Outcome(0, "finished")


def _exit_outcome(exc: SystemExit) -> Outcome:
    exit_code = exit_status(exc.code)
    if exc.code is not None and not isinstance(exc.code, int):
        print(exc.code, file=sys.stderr)
    status = "finished" if exit_code == 0 else "crashed"
    return Outcome(exit_code, status, error=None if exit_code == 0 else f"SystemExit: {exc.code}")


def exit_status(code: object) -> int:
    """The exit status the shell sees after ``sys.exit(code)`` under Python: None is 0, an
    integer (``True`` and ``False`` too) is taken as a C ``long`` modulo 256 (one out of that
    range is 255), anything else is printed and gives 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return int(code) % 256 if -(2**63) <= code < 2**63 else 255
    return 1


def script_excepthook(exc: BaseException, filename: str) -> None:
    """Hand an exception that ended the script to ``sys.excepthook`` (the script's own, if it set
    one), as Python does, with a traceback that starts in the script and holds no gradprobe frame."""
    for chained in _chain(exc):
        chained.__traceback__ = _without_gradprobe(chained.__traceback__, filename)
    try:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    except BaseException as hook_exc:  # what Python does when the hook itself fails
        print("Error in sys.excepthook:", file=sys.stderr)
        sys.__excepthook__(type(hook_exc), hook_exc, hook_exc.__traceback__)
        print("\nOriginal exception was:", file=sys.stderr)
        sys.__excepthook__(type(exc), exc, exc.__traceback__)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or during, each once."""
    seen, todo = [], [exc]
    while todo:
        current = todo.pop()
        if current is None or any(current is known for known in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__]
        todo += list(getattr(current, "exceptions", ()))  # exception groups
    return seen


def _gradprobe_dirs() -> tuple[str, ...]:
    packages = (sys.modules.get(name) for name in ("gradprobe", "gradprobe.cli", "gradprobe.reports"))
    return tuple(os.path.dirname(os.path.abspath(module.__file__)) + os.sep
                 for module in packages if getattr(module, "__file__", None))


def _without_gradprobe(tb: types.TracebackType | None, filename: str) -> types.TracebackType | None:
    """``tb`` from the script's first frame on (all of it if the script has none), less the
    frames of gradprobe's own hooks."""
    frames = []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    starts = [i for i, frame in enumerate(frames) if frame.tb_frame.f_code.co_filename == filename]
    ours = _gradprobe_dirs()
    kept = [frame for frame in frames[starts[0] if starts else 0:]
            if not os.path.abspath(frame.tb_frame.f_code.co_filename).startswith(ours)]
    for frame, following in zip(kept, kept[1:] + [None]):
        frame.tb_next = following
    return kept[0] if kept else None


def reraise_signal(signum: int | None) -> None:
    """End the process by ``signum`` (if any) with its default action, as the shell would see it."""
    if signum is None:
        return
    if signum == signal.SIGINT:  # Python flushes its buffers before dying of Ctrl-C, never on SIGTERM
        sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
