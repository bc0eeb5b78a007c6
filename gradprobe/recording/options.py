"""The options every gradprobe training callback takes (Keras, Lightning, Hugging Face)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from gradprobe.policies import Policy, as_policy
from gradprobe.recording.session import Sampling, Session


@dataclass(frozen=True)
class SessionOptions:
    """Where and how a callback records: run root and name, sampling, and the clip policy."""

    out: str | os.PathLike
    name: str | None
    sampling: Sampling
    policy: Policy | None

    @classmethod
    def parse(cls, out: str | os.PathLike, name: str | None, every: int, flush_every: int, flush_seconds: float,
              clip: "str | Policy | None") -> "SessionOptions":
        """Check the options at once (a bad spec or sampling fails before training starts)."""
        policy = as_policy(clip)
        return cls(out, name, Sampling(every, flush_every, flush_seconds), policy)

    def session(self, policy: Policy | None) -> Session:
        """A new recording session with these options, clipping with ``policy``."""
        return Session(out=self.out, name=self.name, sampling=self.sampling, clip=policy)
