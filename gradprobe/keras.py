"""``GradProbe``: a Keras callback that records gradient statistics of ``model.fit`` into a run.

Example::

    from gradprobe.keras import GradProbe

    probe = GradProbe(out="gradprobe-runs", every=10, clip="zclip:z=2.5")
    model.fit(x, y, epochs=5, callbacks=[probe])
    run = gradprobe.load_run(probe.path)

Every optimizer that updates the model during ``fit`` is recorded, so an
overridden ``train_step`` with several optimizers (a GAN) works too. Each
``fit`` call writes one run. Under ``gradprobe profile`` or ``gradprobe run``
the run is already being recorded and the callback records nothing itself;
its ``clip`` policy still applies during its ``fit``, unless the command line
set one (``--clip``), which wins.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

from gradprobe.policies import Policy
from gradprobe.recording.options import SessionOptions
from gradprobe.recording.session import DEFAULT_EVERY, DEFAULT_FLUSH_EVERY, DEFAULT_FLUSH_SECONDS
from gradprobe.store import DEFAULT_ROOT
from gradprobe.tensorflow.fit import FitHooks
from gradprobe.tensorflow.naming import VariableNamer
from gradprobe.tensorflow.recorder import TFRecorder, active_recorder


class GradProbe(FitHooks):
    """Record the gradients of ``fit`` into a run directory under ``out``.

    ``name``: the run directory's name (default: a timestamp). ``every``:
    per-layer statistics every N optimizer steps (the global norm, loss and
    clipping are recorded at every step). ``flush_every`` / ``flush_seconds``:
    how often buffered statistics are written. ``clip``: a clip policy spec
    (e.g. ``"global-norm:max=1"``) applied to every update, checked here.
    """

    def __init__(self, out: str | os.PathLike = DEFAULT_ROOT, name: str | None = None,
                 every: int = DEFAULT_EVERY, flush_every: int = DEFAULT_FLUSH_EVERY,
                 flush_seconds: float = DEFAULT_FLUSH_SECONDS, clip: "str | Policy | None" = None):
        super().__init__()
        self.options = SessionOptions.parse(out, name, every, flush_every, flush_seconds, clip)
        self.path: Path | None = None
        self._lent_to: TFRecorder | None = None

    def on_train_begin(self, logs=None):
        self.recorder = None
        active = active_recorder()
        if active is not None:
            if self.options.policy is not None and active.policy is None:
                active.lend_policy(self.options.policy)
                self._lent_to = active
                self._retrace()
            return
        session = self.options.session(self.options.policy)
        self.path = session.path
        self.recorder = TFRecorder(session, VariableNamer({self.model.name: self.model}), patch_fit=False)
        self.recorder.host_flushing += 1
        self.recorder.install()
        atexit.register(self._abandon)
        self._retrace()
        super().on_train_begin(logs)

    def on_train_batch_begin(self, batch, logs=None):
        if self.recorder is not None:
            super().on_train_batch_begin(batch, logs)

    def on_train_end(self, logs=None):
        if self._lent_to is not None:
            self._lent_to.lend_policy(None)
            self._lent_to = None
            self._retrace()
        if self.recorder is not None:
            self._close("finished")
            self._retrace()

    def _retrace(self) -> None:
        """Make ``fit`` trace its train function again, with (or, after training, without) the
        recording and clipping hooks: a function compiled by an earlier ``fit`` has none, and
        one compiled during this ``fit`` must not keep them."""
        self.model.make_train_function(force=True)

    def _abandon(self) -> None:
        """At interpreter exit, after a ``fit`` that never reached ``on_train_end``."""
        if self.recorder is not None:
            self._close("crashed", "fit() ended without finishing")

    def _close(self, status: str, error: str | None = None) -> None:
        atexit.unregister(self._abandon)
        recorder, self.recorder = self.recorder, None
        recorder.remove()
        recorder.session.close(status, error=error)
