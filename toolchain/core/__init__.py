"""The torch-free core every stage shares: the model card, the user-facing errors, content keys.

- :mod:`.meta`: :class:`~.meta.ModelMeta`, the model card that travels with every artifact
  (``model.json`` beside the FP program, ``zqtool.*`` metadata in the ONNX file);
- :mod:`.errors`: :class:`~.errors.ZqError` and its kin (message + hint, one line each);
- :mod:`.keys`: :func:`~.keys.content_key` and :func:`~.keys.file_sha256`, the hashes that key
  the stage artifacts.

Imports only the standard library, so the device verifier (``verify/``, ``data/``,
``verify.pyz``) uses it without torch. Nothing here imports another ``toolchain`` package
(only ``toolchain.__version__``).
"""
