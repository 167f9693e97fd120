"""Thin adapters that run a :class:`gradnoise.Probe` inside other training frameworks.

Each module imports its framework only when used; install them as extras:
``pip install gradnoise[lightning]``, ``gradnoise[transformers]``, ``gradnoise[tensorboard]``.

* :mod:`gradnoise.integrations.lightning`: ``GradNoiseCallback`` for PyTorch Lightning.
* :mod:`gradnoise.integrations.transformers`: ``GradNoiseCallback`` for Hugging Face's ``Trainer``.
* :mod:`gradnoise.integrations.tensorboard`: headline scalars along training in TensorBoard.
"""
