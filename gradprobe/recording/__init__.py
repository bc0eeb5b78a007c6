"""The run-time plumbing every framework adapter shares while a run is recorded.

``session``: the run being recorded (:class:`Session`) and its sampling;
``options``: the options of the training callbacks; ``hook_guard``: the guard
that keeps gradprobe's own failures out of training; ``deferred_signals``:
Ctrl-C and SIGTERM held back while buffers are updated; ``forked_children``:
child processes run unrecorded; ``post_import``: attaching when the script
imports a framework; ``seeding``: ``--seed``; ``ranks``: which ranks of a
distributed launch record, into which shared run directory.
"""
