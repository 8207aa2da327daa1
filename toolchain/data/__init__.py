"""Evaluation-data readers (torch-free): labelled images in, model-ready float batches out.

An :class:`EvalSet` yields ``(x float32 (B,C,H,W), y int64 (B,))`` batches preprocessed
for a model card (:class:`~toolchain.core.meta.ModelMeta`). Readers: ``.npz`` files
(:class:`NpzEvalSet`) and image folders with ``labels.csv`` (:class:`ImageFolderEvalSet`);
:func:`open_eval_set` picks one by path. Needs numpy, and Pillow only to decode or
resize images. Every problem with the data is raised as
:class:`~toolchain.core.errors.DataError`.
"""

from .folder import ImageFolderEvalSet
from .npz import NpzEvalSet
from .opener import open_eval_set
from .preprocess import center_crop, preprocess, resize_shorter_side
from .protocol import EvalSet

__all__ = [
    "EvalSet",
    "ImageFolderEvalSet",
    "NpzEvalSet",
    "center_crop",
    "open_eval_set",
    "preprocess",
    "resize_shorter_side",
]
