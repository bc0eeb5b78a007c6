"""Renderers of recorded runs (installed as ``gradprobe.reports``)."""
