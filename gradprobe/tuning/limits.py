"""The ceilings of ``gradprobe tune``'s options, importable without the tuning machinery."""

MAX_REPEATS = 100  # seeds per repeated candidate: run-to-run noise is well measured long before
MAX_TIMEOUT = 7 * 24 * 3600.0  # seconds (--timeout, --budget): a trial is short; a week is no limit at all
