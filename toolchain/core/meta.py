"""The model card that travels with every artifact: what the model expects as input.

Stage 1 writes it as ``model.json`` beside ``model.pt2``; stage 3 copies it into the
ONNX file's ``metadata_props`` (keys ``zqtool.<field>``, values JSON) so stage 4
can preprocess evaluation images without torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from .errors import ConfigError

__all__ = ["ONNX_META_PREFIX", "TASKS", "ModelMeta"]

#: prefix of the ONNX metadata_props keys that carry a ModelMeta
ONNX_META_PREFIX = "zqtool."
#: what a model's output means: (N, K) class logits, or (N, K, H, W) per-pixel class logits
TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class ModelMeta:
    """What a classifier expects as input and produces as output.

    Attributes:
        input_shape: (C, H, W) of one input image, after preprocessing.
        mean, std: per-channel normalization applied to RGB values scaled to [0, 1]
            (length C each): ``x = (pixel / 255 - mean) / std``.
        num_classes: number of logits the model outputs.
        resize: if set, images are first resized so their shorter side is ``resize``
            pixels (bilinear), then centre-cropped to (H, W); if None, images must
            already be (H, W) and are only centre-cropped when larger.
        arch: zoo architecture name, or None for a model given as a program.
        source_sha256: sha256 of the user's model file (hex).
        source_format: "pt2", "state_dict" or "pickle".
        task: "classification" (output (N, num_classes) logits) or "segmentation" (output
            (N, num_classes, H', W') per-pixel logits; a dense-prediction model).
    """

    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    resize: int | None = None
    arch: str | None = None
    source_sha256: str = ""
    source_format: str = ""
    task: str = "classification"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        shape = tuple(int(v) for v in self.input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(
                f"input shape must be C,H,W with positive sizes, got {self.input_shape}",
                "pass e.g. --input-shape 3,32,32",
            )
        object.__setattr__(self, "input_shape", shape)
        c = shape[0]
        for name in ("mean", "std"):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) == 1 and c > 1:
                v = v * c
            if len(v) != c:
                raise ConfigError(
                    f"--{name} has {len(v)} values but the input has {c} channels",
                    f"give one value per channel, e.g. --{name} " + ",".join(["0.5"] * c),
                )
            object.__setattr__(self, name, v)
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"--std must be positive, got {self.std}")
        if int(self.num_classes) < 1:
            raise ConfigError(f"--num-classes must be >= 1, got {self.num_classes}")
        object.__setattr__(self, "num_classes", int(self.num_classes))
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelMeta":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_onnx_props(self) -> dict[str, str]:
        """Flatten into ONNX ``metadata_props`` (string → JSON string)."""
        return {ONNX_META_PREFIX + k: json.dumps(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_onnx_props(cls, props: dict[str, str]) -> "ModelMeta":
        d = {
            k[len(ONNX_META_PREFIX):]: json.loads(v)
            for k, v in props.items()
            if k.startswith(ONNX_META_PREFIX)
        }
        return cls.from_dict(d)
