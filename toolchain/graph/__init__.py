"""The ATen graphs every torch stage works on: the op vocabulary and the fx helpers.

- :mod:`.ops`: the ATen ops by role (compute, activation, transparent, float, identity), the op
  families the loader checks (batch norm, dropout, views) and the batch-norm argument decoding;
- :mod:`.fx`: helpers on ``torch.fx`` GraphModules and ExportedPrograms (the FP module of a
  program, guard and dropout removal, ``get_attr`` values).

Imports torch, and nothing from the other ``toolchain`` stages: ``models/`` (the loader),
``quant/`` (the rewrite), ``methods/`` and ``export/`` all sit above it.
"""
