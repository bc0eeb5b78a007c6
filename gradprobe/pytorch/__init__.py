"""PyTorch adapter: hooks that record gradients wherever the update reads them.

``recorder.TorchRecorder`` installs the hooks, ``naming.ParamNamer`` names
parameters, ``stream.Stream`` holds the on-device buffers and ``norms`` the
fused norm kernels.
"""
