"""PyTorch adapter: hooks that record gradients wherever the update reads them, and clip them.

``recorder.TorchRecorder`` installs the hooks, ``naming.ParamNamer`` names
parameters, ``step_buffer.StepBuffer`` holds one optimizer's on-device
buffers, ``norms`` the fused norm kernels, ``clip`` the clip backend
(``TorchClipper``), ``trainer.TrainerHooks`` the recording driven by trainer
callbacks (Lightning, Hugging Face) and ``tasks`` the per-task gradients.
"""
