"""Stage 4 on dense-prediction (segmentation) models: the metrics, masks in the npz reader, the report.

The models are tiny hand-built ONNX graphs with (N, 3, 8, 8) per-pixel logits:
Conv(3→4, 3x3, stride 2) → Relu → Conv(4→3, 1x1) → Resize(×2, bilinear) with seeded random
weights (the "quantized" slot holds the same graph with perturbed weights), and a 1x1-conv
pixel classifier in float and in QDQ form (which onnxruntime runs as QLinearConv). The expected
numbers are computed here from the two models' own onnxruntime outputs with boolean set
operations, independently of the confusion-matrix code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from toolchain.data import NpzEvalSet, preprocess
from toolchain.data.protocol import transform_masks
from toolchain.core.errors import DataError, InputFileError
from toolchain.verify import VerifyReport, report_text, verify
from toolchain.verify.model_card import model_meta_module
from toolchain.verify.results import MaskScores
from toolchain.verify.segmentation import (DenseTally, class_iou, confusion_matrix, mean_iou,
                                           pixel_accuracy)

ROOT = Path(__file__).resolve().parents[1]
ModelMeta = model_meta_module().ModelMeta
K = 3
SEG_META = ModelMeta((3, 8, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), K, task="segmentation")
CLS_META = ModelMeta((3, 8, 8), (0.0,), (1.0,), 6)
N = 7

#: the top-level keys of a classification report, as documented in verify()'s docstring
CLASSIFICATION_KEYS = {
    "fp32", "quantized", "agreement_top1", "top1_drop", "top1_stderr", "n_images", "latency_ms", "bytes",
    "integer_ops", "ort_version", "providers", "machine", "saturation", "warnings", "meta", "files",
    "data_fingerprint", "settings", "notes", "zqtool_version", "wall_s",
}
SEGMENTATION_BLOCK_KEYS = {
    "num_classes", "output_hw", "pixels", "pixel_agreement", "miou_vs_fp32", "class_iou_vs_fp32", "masks",
    "ignore_index", "labelled_pixels", "fp32", "quantized", "miou_drop",
}


# ---------------------------------------------------------------------------- the metrics

def test_two_class_metrics_by_hand():
    ref = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 1], [1, 1]])
    cm = confusion_matrix(ref, pred, 2)
    assert cm.tolist() == [[1, 1], [0, 2]]  # rows: reference, columns: prediction
    assert pixel_accuracy(cm) == pytest.approx(75.0)
    # IoU_0 = |{(0,0)}| / |{(0,0),(0,1)}| = 1/2; IoU_1 = |{(0,1)... }|: 2 / 3
    assert class_iou(cm).tolist() == pytest.approx([0.5, 2 / 3])
    assert mean_iou(cm) == pytest.approx(100 * (0.5 + 2 / 3) / 2)
    # a class in neither array does not enter the mean; one only predicted counts with IoU 0
    assert mean_iou(confusion_matrix(ref, pred, 3)) == pytest.approx(100 * (0.5 + 2 / 3) / 2)
    assert mean_iou(confusion_matrix(np.array([0, 0]), np.array([0, 2]), 3)) == pytest.approx(25.0)
    # 255 in the reference is skipped only when asked
    masks = np.array([[0, 255], [1, 1]], np.uint8)
    cm = confusion_matrix(masks, pred, 2, ignore_index=255)
    assert cm.tolist() == [[1, 0], [0, 2]] and pixel_accuracy(cm) == 100.0 and mean_iou(cm) == 100.0
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(masks, pred, 2)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(ref, pred[:1], 2)
    empty = confusion_matrix(np.full(3, 255, np.uint8), np.zeros(3, int), 2, ignore_index=255)
    assert pixel_accuracy(empty) is None and mean_iou(empty) is None


def test_tally_sums_over_the_set_not_per_image():
    rng = np.random.default_rng(0)
    fp = rng.integers(0, 4, (6, 5, 5))
    q = np.where(rng.random((6, 5, 5)) < 0.3, rng.integers(0, 4, (6, 5, 5)), fp)
    masks = rng.integers(0, 4, (6, 5, 5)).astype(np.uint8)
    masks[rng.random((6, 5, 5)) < 0.2] = 255
    t = DenseTally(4)
    for s in (slice(0, 1), slice(1, 4), slice(4, 6)):
        t.add({"quantized": q[s], "fp32": fp[s]}, masks[s])
    whole = confusion_matrix(fp, q, 4)
    assert (t.vs_fp32 == whole).all() and t.n_images == 6 and t.n_pixels == 150 and t.output_hw == (5, 5)
    assert t.pixel_agreement() == pytest.approx(100 * np.mean(fp == q))
    assert t.labelled_pixels == int((masks != 255).sum())
    # mIoU of the whole set, not the mean of per-image mIoUs
    assert t.miou_vs_fp32() == pytest.approx(set_miou(fp, q, 4))
    per_image = np.mean([set_miou(fp[i], q[i], 4) for i in range(6)])
    assert abs(t.miou_vs_fp32() - per_image) > 1e-6
    m = t.against_masks("fp32")
    valid = masks != 255
    assert m.pixel_accuracy == pytest.approx(100 * np.mean(fp[valid] == masks[valid]))
    assert m.miou == pytest.approx(set_miou(masks[valid], fp[valid], 4))
    assert DenseTally(4).against_masks("fp32") == MaskScores(pixel_accuracy=None, miou=None)


def set_miou(a, b, k):
    """mIoU (%) from the sets of pixels per class: mean over classes present in a or b."""
    ious = []
    for c in range(k):
        union = ((a == c) | (b == c)).sum()
        if union:
            ious.append(((a == c) & (b == c)).sum() / union)
    return 100.0 * float(np.mean(ious))


# -------------------------------------------------------------------------------- models

def _save(nodes, inits, out_hw, path, meta=SEG_META, batch="N", k=K):
    graph = helper.make_graph(
        nodes, "seg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, k, *out_hw])],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if meta is not None:
        helper.set_model_props(model, meta.to_onnx_props())
    onnx.save(model, path)
    return path


def seg_model(path, seed=0, perturb=0.0, upsample=True, batch="N", meta=SEG_META):
    """Conv(3→4, 3x3, s2) → Relu → Conv(4→K, 1x1) → [Resize ×2 bilinear]: (N, K, 8, 8) or (N, K, 4, 4)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 4).astype(np.float32)
    w2 = rng.normal(0, 1.0, (K, 4, 1, 1)).astype(np.float32)
    b2 = rng.normal(0, 0.1, K).astype(np.float32)
    if perturb:
        noise = np.random.default_rng(seed + 100)
        w1 = w1 + noise.normal(0, perturb, w1.shape).astype(np.float32)
        w2 = w2 + noise.normal(0, perturb, w2.shape).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["low" if upsample else "logits"])]
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
    if upsample:
        nodes.append(helper.make_node("Resize", ["low", "", "scales"], ["logits"], mode="linear"))
        inits["scales"] = np.array([1, 1, 2, 2], np.float32)
    return _save(nodes, inits, (8, 8) if upsample else (4, 4), path, meta, batch)


PIX_W = np.array([[1.0, 0.2, 0.1], [0.1, 1.0, 0.3], [0.2, 0.1, 1.0]], np.float32)


def pix_float(path):
    """Per-pixel classifier: logits = PIX_W @ pixel (1x1 conv)."""
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["logits"])]
    return _save(nodes, {"w": PIX_W.reshape(K, 3, 1, 1), "b": np.zeros(K, np.float32)}, (8, 8), path)


def pix_qdq(path):
    """The same 1x1 conv with int8 weights and uint8 input/output codes (QLinearConv on ORT)."""
    s_in, zp_in = np.float32(8 / 255), np.uint8(128)  # input in about [-4, 4]
    s_w = (np.abs(PIX_W).max(1) / 127).astype(np.float32)
    s_out, zp_out = np.float32(12 / 255), np.uint8(128)
    inits = {"s_in": np.array(s_in), "zp_in": np.array(zp_in), "s_out": np.array(s_out), "zp_out": np.array(zp_out),
             "w_q": np.round(PIX_W / s_w[:, None]).astype(np.int8).reshape(K, 3, 1, 1), "w_s": s_w,
             "w_z": np.zeros(K, np.int8), "b_q": np.zeros(K, np.int32), "b_s": (s_in * s_w).astype(np.float32),
             "b_z": np.zeros(K, np.int32)}
    nodes = [helper.make_node("QuantizeLinear", ["input", "s_in", "zp_in"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "s_in", "zp_in"], ["x"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=0),
             helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], axis=0),
             helper.make_node("Conv", ["x", "w", "b"], ["o"]),
             helper.make_node("QuantizeLinear", ["o", "s_out", "zp_out"], ["o_q"]),
             helper.make_node("DequantizeLinear", ["o_q", "s_out", "zp_out"], ["logits"])]
    return _save(nodes, inits, (8, 8), path)


def images(n=N, seed=1, hw=(8, 8)):
    return np.random.default_rng(seed).integers(0, 256, (n, *hw, 3), dtype=np.uint8)


def masks_for(n=N, seed=2, hw=(8, 8), k=K):
    rng = np.random.default_rng(seed)
    m = rng.integers(0, k, (n, *hw)).astype(np.uint8)
    m[rng.random((n, *hw)) < 0.15] = 255
    return m


def ort_classes(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0].argmax(1)


@pytest.fixture
def seg(tmp_path):
    d = tmp_path / "onnx"
    d.mkdir()
    return {"fp": seg_model(d / "model.fp32.onnx"), "q": seg_model(d / "model.qdq.onnx", perturb=0.4),
            "dir": tmp_path}


def npz(path, **arrays):
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------------------ verify

def test_images_only_agreement_and_miou_vs_fp32(seg):
    imgs = images()
    data = npz(seg["dir"] / "imgs.npz", images=imgs)
    rep = verify(seg["q"], data, latency_runs=3, warmup=1, batch_size=3)  # finds model.fp32.onnx
    r = rep.to_dict()
    assert rep.segmentation.output_hw == (8, 8) and VerifyReport.from_dict(r) == rep
    x = preprocess(imgs, SEG_META)
    fp, q = ort_classes(seg["fp"], x), ort_classes(seg["q"], x)
    agree = 100 * np.mean(fp == q)
    assert 20 < agree < 95, agree  # the perturbation flips some pixels, not all
    s = r["segmentation"]
    assert set(s) == SEGMENTATION_BLOCK_KEYS
    assert s["pixel_agreement"] == pytest.approx(agree) and r["agreement_top1"] == pytest.approx(agree)
    assert s["miou_vs_fp32"] == pytest.approx(set_miou(fp, q, K))
    for c, v in enumerate(s["class_iou_vs_fp32"]):
        union = ((fp == c) | (q == c)).sum()
        assert (v is None) == (union == 0)
        if union:
            assert v == pytest.approx(100 * ((fp == c) & (q == c)).sum() / union)
    assert s["pixels"] == N * 64 and s["output_hw"] == [8, 8] and s["num_classes"] == K
    assert s["masks"] is False and s["labelled_pixels"] is None and s["miou_drop"] is None
    assert s["fp32"] == s["quantized"] == {"pixel_accuracy": None, "miou": None}
    assert r["n_images"] == N and r["quantized"] == r["fp32"] == {"top1": None, "top5": None}
    assert r["top1_drop"] is None and r["top1_stderr"] is None
    assert set(r) == CLASSIFICATION_KEYS | {"segmentation"}
    assert any("no masks" in n for n in r["notes"])
    lat = r["latency_ms"]
    for m in ("fp32", "quantized"):  # batch-1 timing with the (1, K, H, W) output
        assert 0 < lat[m]["p50"] <= lat[m]["p90"] and lat[m]["runs"] == 3
    json.loads(json.dumps(r))
    text = report_text(rep)
    assert text.splitlines()[0].split()[:6] == ["model", "pixel", "acc", "%", "mIoU", "%"]
    assert f"{agree:.2f}" in text and f"{s['miou_vs_fp32']:.2f}" in text
    assert "no masks: quality measured against the FP32 model only" in text and "top-1 ±" not in text


def test_with_masks_pixel_accuracy_and_miou_for_both(seg):
    imgs, masks = images(), masks_for()
    labels = np.arange(N) % K  # per-image labels alongside are allowed (and unused) for segmentation
    data = npz(seg["dir"] / "masks.npz", images=imgs, masks=masks, labels=labels)
    rep = verify(seg["q"], data, fp_path=seg["fp"], latency_runs=0, batch_size=4)
    r = rep.to_dict()
    x = preprocess(imgs, SEG_META)
    valid = masks != 255
    s = r["segmentation"]
    assert s["masks"] is True and s["labelled_pixels"] == int(valid.sum()) and s["ignore_index"] == 255
    for name, path in (("fp32", seg["fp"]), ("quantized", seg["q"])):
        pred = ort_classes(path, x)
        assert s[name]["pixel_accuracy"] == pytest.approx(100 * np.mean(pred[valid] == masks[valid])), name
        assert s[name]["miou"] == pytest.approx(set_miou(masks[valid], pred[valid], K)), name
    assert s["miou_drop"] == pytest.approx(s["fp32"]["miou"] - s["quantized"]["miou"])
    assert not any("no masks" in n for n in r["notes"])
    text = report_text(rep)
    assert f"{s['fp32']['pixel_accuracy']:.2f}" in text and f"{s['quantized']['miou']:.2f}" in text
    assert f"{s['labelled_pixels']} labelled pixels, 255 ignored" in text
    # the first `limit` images only; an EvalSet object works as well
    r4 = verify(seg["q"], NpzEvalSet(data, task="segmentation"), fp_path=seg["fp"], limit=4, latency_runs=0)
    fp4, q4 = ort_classes(seg["fp"], x[:4]), ort_classes(seg["q"], x[:4])
    assert r4.n_images == 4 and r4.segmentation.pixel_agreement == pytest.approx(100 * np.mean(fp4 == q4))


def test_without_fp32_reference_only_masks(seg):
    q = seg_model(seg["dir"] / "alone.onnx", perturb=0.4)
    imgs, masks = images(), masks_for()
    r = verify(q, npz(seg["dir"] / "m.npz", images=imgs, masks=masks), latency_runs=0)
    s = r.segmentation
    assert s.pixel_agreement is None and s.miou_vs_fp32 is None and s.class_iou_vs_fp32 is None
    assert r.agreement_top1 is None and s.fp32 == MaskScores(pixel_accuracy=None, miou=None)
    pred = ort_classes(q, preprocess(imgs, SEG_META))
    valid = masks != 255
    assert s.quantized.pixel_accuracy == pytest.approx(100 * np.mean(pred[valid] == masks[valid]))
    assert "—" in report_text(r)


def test_qdq_pixel_classifier_runs_integer_kernels(tmp_path):
    fp, q = pix_float(tmp_path / "model.fp32.onnx"), pix_qdq(tmp_path / "model.qdq.onnx")
    imgs = images(5, seed=3)
    r = verify(q, npz(tmp_path / "d.npz", images=imgs), latency_runs=2, warmup=0)
    ops = r.integer_ops
    assert ops.conv_total == 1 and ops.conv_integer == 1, ops
    x = preprocess(imgs, SEG_META)
    a, b = ort_classes(fp, x), ort_classes(q, x)
    assert r.segmentation.pixel_agreement == pytest.approx(100 * np.mean(a == b))
    assert r.segmentation.pixel_agreement > 80


def test_static_batch_one(seg):
    one = seg_model(seg["dir"] / "static1.onnx", perturb=0.4, batch=1)
    data = npz(seg["dir"] / "m.npz", images=images(), masks=masks_for())
    a = verify(one, data, fp_path=seg["fp"], batch_size=3, latency_runs=2, warmup=0).to_dict()
    b = verify(seg["q"], data, fp_path=seg["fp"], batch_size=3, latency_runs=0).to_dict()
    assert any("static batch of 1" in n for n in a["notes"])
    for k in ("pixel_agreement", "miou_vs_fp32", "pixels", "labelled_pixels"):
        assert a["segmentation"][k] == pytest.approx(b["segmentation"][k]), k
    assert a["segmentation"]["quantized"] == pytest.approx(b["segmentation"]["quantized"])


def test_output_smaller_than_masks(tmp_path):
    d = tmp_path / "low"
    d.mkdir()
    fp, q = seg_model(d / "model.fp32.onnx", upsample=False), seg_model(d / "model.qdq.onnx", perturb=0.4,
                                                                         upsample=False)
    imgs = images()
    r = verify(q, npz(tmp_path / "i.npz", images=imgs), latency_runs=0).to_dict()  # no masks: 4x4 maps compared
    assert r["segmentation"]["output_hw"] == [4, 4] and r["segmentation"]["pixels"] == N * 16
    x = preprocess(imgs, SEG_META)
    assert r["segmentation"]["pixel_agreement"] == pytest.approx(100 * np.mean(ort_classes(fp, x) == ort_classes(q, x)))
    with pytest.raises(DataError, match="masks are 8x8 after preprocessing .* outputs 4x4") as e:
        verify(q, npz(tmp_path / "m.npz", images=imgs, masks=masks_for()), latency_runs=0)
    assert "\n" not in e.value.message
    other = seg_model(tmp_path / "other.onnx", upsample=True)  # an 8x8 reference for a 4x4 model
    with pytest.raises(InputFileError, match="outputs differ in size"):
        verify(q, npz(tmp_path / "i2.npz", images=imgs), fp_path=other, latency_runs=0)


def test_model_card_errors(tmp_path):
    imgs = images()
    data = npz(tmp_path / "i.npz", images=imgs)
    # an (N, K, H, W) model whose card says classification: refused, with the reason
    cls_card = seg_model(tmp_path / "cls.onnx", meta=ModelMeta((3, 8, 8), (0.5,), (0.25,), K))
    with pytest.raises(InputFileError, match="segmentation model: its card needs task") as e:
        verify(cls_card, npz(tmp_path / "l.npz", images=imgs, labels=np.zeros(N, np.int64)), latency_runs=0)
    assert "\n" not in e.value.message
    wrong_k = seg_model(tmp_path / "k5.onnx", meta=ModelMeta((3, 8, 8), (0.5,), (0.25,), 5, task="segmentation"))
    with pytest.raises(InputFileError, match="model card says 5 classes"):
        verify(wrong_k, data, latency_runs=0)
    d = tmp_path / "pair"
    d.mkdir()
    q = seg_model(d / "model.qdq.onnx")
    seg_model(d / "model.fp32.onnx", meta=ModelMeta((3, 8, 8), (0.5,), (0.25,), K))  # same card but the task
    with pytest.raises(InputFileError, match="disagree on task"):
        verify(q, data, latency_runs=0)


# ----------------------------------------------------------------------- data: masks in npz

def test_npz_masks_and_images_only(tmp_path):
    imgs, masks = images(), masks_for()
    only = npz(tmp_path / "only.npz", images=imgs)
    with pytest.raises(DataError, match="no 'labels'") as e:  # today's error without a task
        NpzEvalSet(only)
    assert "masks" in e.value.hint
    ds = NpzEvalSet(only, task="segmentation")
    assert len(ds) == N and ds.labels is None and ds.masks is None
    xs, ys = zip(*ds.batches(SEG_META, 3))
    assert [len(x) for x in xs] == [3, 3, 1] and ys == (None, None, None)
    m = NpzEvalSet(npz(tmp_path / "m.npz", images=imgs, masks=masks), limit=5)  # masks without labels: fine
    assert m.labels is None and m.masks.shape == (5, 8, 8)
    ys = [y for _, y in m.batches(SEG_META, 2)]
    assert np.array_equal(np.concatenate(ys), masks[:5]) and ys[0].dtype == np.uint8
    # a classifier given data without labels keeps refusing it
    with pytest.raises(DataError, match=r"no 'labels' array \(found: images, masks\) and the model is a classifier"):
        next(m.batches(CLS_META, 2))
    with pytest.raises(DataError, match="no 'labels'"):
        NpzEvalSet(npz(tmp_path / "m2.npz", images=imgs, masks=masks), task="classification")
    # fingerprints: masks count, a labelled set hashes as before
    a = NpzEvalSet(npz(tmp_path / "a.npz", images=imgs, masks=masks)).fingerprint()
    masks2 = masks.copy()
    masks2[0, 0, 0] = (masks2[0, 0, 0] + 1) % K
    assert a != NpzEvalSet(npz(tmp_path / "b.npz", images=imgs, masks=masks2)).fingerprint()
    assert a != NpzEvalSet(only, task="segmentation").fingerprint()


def test_bad_masks_are_one_line_data_errors(tmp_path):
    imgs = images(3)
    ok = masks_for(3)
    cases = {
        "dtype": (dict(masks=ok.astype(np.int64)), "'masks' has dtype int64, expected uint8"),
        "channel axis": (dict(masks=ok[..., None]), "expected (N, H, W) (drop the channel axis"),
        "2-D": (dict(masks=ok[0]), "expected (N, H, W)"),
        "count": (dict(masks=ok[:2]), "3 images but 2 masks"),
        "size": (dict(masks=masks_for(3, hw=(8, 9))), "masks are 8x9 pixels but the images are 8x8"),
    }
    for case, (arrays, words) in cases.items():
        for task in (None, "segmentation"):
            with pytest.raises(DataError) as e:
                NpzEvalSet(npz(tmp_path / f"{case}.npz", images=imgs, **arrays), task=task)
            assert words in e.value.message, case
            assert "\n" not in e.value.message and "\n" not in (e.value.hint or "")
    bad = ok.copy()
    bad[1, 2, 3] = 7
    ds = NpzEvalSet(npz(tmp_path / "v.npz", images=imgs, masks=bad))
    with pytest.raises(DataError, match=r"mask value 7 \(image 1\) is outside \[0, 3\) and not 255") as e:
        next(ds.batches(SEG_META, 2))
    assert "\n" not in e.value.message


def test_masks_follow_the_resize_and_crop(tmp_path):
    # upsampling 4x6 → 8x12 (×2) and 4x5 → 12x15 (×3) (bilinear for images, nearest for masks),
    # then the centre crop (column offset 2). ×3 with vertical stripes (1-D), since in 2-D the
    # nearest source pixel's bilinear weight can drop to 4/9
    rng = np.random.default_rng(5)
    for hw, size in (((4, 6), 8), ((4, 5), 12)):
        label = rng.integers(0, 2, (6, *hw)).astype(np.uint8)
        if size == 12:
            label[:] = label[:, :1]
        imgs = np.where(label == 1, 240, 0).astype(np.uint8)[..., None]
        meta = ModelMeta((1, size, size), (0.0,), (1.0,), 2, resize=size, task="segmentation")
        ds = NpzEvalSet(npz(tmp_path / "r.npz", images=imgs, masks=label))
        (x, y), = list(ds.batches(meta, 6))
        assert x.shape == (6, 1, size, size) and y.shape == (6, size, size) and y.dtype == np.uint8
        # each output pixel takes > 1/2 of its value from its nearest source pixel: the class read
        # from the image is the mask's wherever the geometry matches
        assert np.array_equal((x[:, 0] > 0.5).astype(np.uint8), y), hw
        assert 0 < y.mean() < 1
    # no resize step (shorter side already 8): the crop alone, at the images' offsets
    big = rng.integers(0, 3, (2, 8, 12)).astype(np.uint8)
    meta8 = ModelMeta((1, 8, 8), (0.0,), (1.0,), 3, resize=8, task="segmentation")
    assert np.array_equal(transform_masks(big, meta8), big[:, :, 2:10])
    img_big = (big * 100).astype(np.uint8)[..., None]
    assert np.array_equal(np.round(preprocess(img_big, meta8)[:, 0] * 255).astype(np.uint8), img_big[:, :, 2:10, 0])
    # no resize in the card: the masks must already be the input size
    with pytest.raises(DataError, match="model takes 8x8 and its model card has no resize"):
        transform_masks(big, ModelMeta((1, 8, 8), (0.0,), (1.0,), 3, task="segmentation"))


def test_image_folder_is_refused_for_segmentation(tmp_path, seg):
    from PIL import Image
    root = tmp_path / "folder"
    root.mkdir()
    for i in range(2):
        Image.fromarray(images(1, seed=i)[0]).save(root / f"{i}.png")
    (root / "labels.csv").write_text("file,label\n0.png,0\n1.png,1\n")
    with pytest.raises(DataError, match="not per-pixel masks"):
        verify(seg["q"], root, latency_runs=0)


# --------------------------------------------------------------- classification unchanged

def test_classification_report_keys_unchanged(tmp_path):
    w = np.zeros((6, 3), np.float32)
    w[:3] = np.eye(3)
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 6])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(6, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, CLS_META.to_onnx_props())
    path = tmp_path / "cls.onnx"
    onnx.save(model, path)
    imgs = images(4)
    labels = imgs.reshape(4, -1, 3).mean(1).argmax(1)
    rep = verify(path, npz(tmp_path / "c.npz", images=imgs, labels=labels), fp_path=path, latency_runs=1, warmup=0)
    r = rep.to_dict()
    assert set(r) == CLASSIFICATION_KEYS
    assert r["quantized"] == {"top1": 100.0, "top5": 100.0} and r["agreement_top1"] == 100.0
    assert report_text(rep).splitlines()[0].split()[:5] == ["model", "top-1", "%", "top-5", "%"]
    with pytest.raises(DataError, match="no 'labels'"):  # a classifier given images only
        verify(path, npz(tmp_path / "i.npz", images=imgs), latency_runs=0)


# ------------------------------------------------------------------ torch-free guarantee

def test_segmentation_verify_runs_without_torch(seg):
    data = npz(seg["dir"] / "m.npz", images=images(), masks=masks_for())
    code = textwrap.dedent(f"""
        import importlib.abc, json, sys
        class _Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "onnx", "rich"):
                    raise ModuleNotFoundError(name, name=name)
        sys.meta_path.insert(0, _Blocker())
        from toolchain.verify import verify, report_text
        r = verify({str(seg["q"])!r}, {str(data)!r}, latency_runs=2, warmup=0)
        report_text(r)
        print(json.dumps(r.to_dict()["segmentation"]))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    assert s["masks"] is True and s["pixel_agreement"] is not None
