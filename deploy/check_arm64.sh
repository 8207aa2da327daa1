#!/usr/bin/env bash
# Run a zqtool device bundle on an emulated aarch64 CPU and compare it with the same bundle on the host.
#
#   sudo deploy/check_arm64.sh BUNDLE_DIR [BUNDLE_DIR ...]
#
# Per bundle and emulated CPU it prints one line: accuracy on the host and on ARM, the largest
# output difference, which integer kernels onnxruntime's optimized graph runs on ARM, and ends in
# `agreement NN.NN%` (top-1 agreement of the quantized model, ARM vs host, image by image).
# Emulated latency means nothing (user-mode emulation): the ARM runs skip the latency loop.
#
# What it does (the root filesystem is built once and cached):
#   1. an arm64 Debian (bookworm) root filesystem with Debian's python3: `debootstrap --foreign`
#      downloads and unpacks the packages (no second stage, no binfmt_misc needed);
#   2. the official aarch64 wheels of numpy, onnxruntime and Pillow (the host's versions) into
#      /opt/zqtool-site of that filesystem (`pip install --target … --platform manylinux…aarch64`);
#   3. the bundle's verify.pyz on the host (this Python), then under
#      `chroot ROOTFS qemu-aarch64-static -cpu CPU python3 verify.pyz …` (no /proc or /sys mounted:
#      a mounted /sys crashes onnxruntime's cpuinfo under emulation; the verifier reads a
#      /proc/cpuinfo file written to name the emulated CPU).
#
# Needs: root (chroot), debootstrap, qemu-user-static (Debian: apt-get install debootstrap
# qemu-user-static), network access to deb.debian.org and PyPI for the first run.
# Environment: ZQTOOL_ARM64_ROOTFS (default ~/.cache/zqtool/arm64-rootfs),
#   ZQTOOL_ARM64_CPUS (default "cortex-a72 cortex-a76": Raspberry Pi 4 without, Pi 5 with dot-product),
#   ZQTOOL_ARM64_LIMIT (evaluate only the first N images: emulation runs about a hundred times
#   slower than the host), ZQTOOL_ARM64_MODELS (default: model.qdq.onnx and model.qdq.ort if present),
#   PYTHON (host Python with onnxruntime). The ARM runs skip the FP32 model (--fp none).
set -euo pipefail

usage() { echo "usage: sudo $0 BUNDLE_DIR [BUNDLE_DIR ...]  ($*)" >&2; exit 2; }
[ "$#" -ge 1 ] || usage "no bundle given"
PY=${PYTHON:-python3}
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")";; esac  # absolute: runs cd into the bundle
ROOTFS=${ZQTOOL_ARM64_ROOTFS:-$HOME/.cache/zqtool/arm64-rootfs}
CPUS=${ZQTOOL_ARM64_CPUS:-cortex-a72 cortex-a76}
LIMIT=${ZQTOOL_ARM64_LIMIT:-}
HERE=$(cd "$(dirname "$0")" && pwd)
for b in "$@"; do
    [ -f "$b/verify.pyz" ] && [ -f "$b/model.qdq.onnx" ] || usage "$b is not a bundle (zqtool bundle … --out DIR)"
done
[ "$(id -u)" = 0 ] || { echo "error: chroot needs root; run with sudo" >&2; exit 2; }
for tool in debootstrap qemu-aarch64-static dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found; apt-get install debootstrap qemu-user-static" >&2; exit 2; }
done

build_rootfs() {
    local tmp="$ROOTFS.tmp"
    rm -rf "$tmp"; mkdir -p "$tmp"
    echo "# building the arm64 root filesystem in $ROOTFS (once; about 2 minutes)" >&2
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 bookworm "$tmp" \
        http://deb.debian.org/debian >"$tmp.log" 2>&1 || { echo "error: debootstrap failed (see $tmp.log)" >&2; exit 2; }
    for deb in "$tmp"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$tmp"; done
    cp "$(command -v qemu-aarch64-static)" "$tmp/usr/bin/"
    local versions
    versions=$("$PY" -c "import numpy, onnxruntime; print(f'numpy=={numpy.__version__} onnxruntime=={onnxruntime.__version__}')")
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --target "$tmp/opt/zqtool-site" --python-version 3.11 --implementation cp \
        --only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
        --platform manylinux2014_aarch64 $versions pillow >>"$tmp.log" 2>&1 \
        || { echo "error: installing the aarch64 wheels failed (see $tmp.log)" >&2; exit 2; }
    echo "$versions" >"$tmp/opt/zqtool-site/VERSIONS"
    rm -f "$tmp.log"; mv "$tmp" "$ROOTFS"
}
[ -x "$ROOTFS/usr/bin/python3" ] && [ -d "$ROOTFS/opt/zqtool-site/onnxruntime" ] || build_rootfs
echo "# aarch64 under user-mode emulation ($(cat "$ROOTFS/opt/zqtool-site/VERSIONS" 2>/dev/null)): emulated latency" \
     "means nothing and is not measured; outputs, accuracy and the integer-kernel census are compared" >&2

fake_cpuinfo() {  # what the verifier reports as "CPU": the emulated core, said to be emulated
    local feats="fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
    case "$1" in cortex-a76|neoverse-n1|max) feats="$feats atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp";; esac
    mkdir -p "$ROOTFS/proc"
    printf 'processor\t: 0\nmodel name\t: qemu-aarch64 -cpu %s (user-mode emulation)\nFeatures\t: %s\n' "$1" "$feats" \
        >"$ROOTFS/proc/cpuinfo"
}

for bundle in "$@"; do
    name=$(basename "$(cd "$bundle" && pwd)")
    work="$ROOTFS/work/$name"
    rm -rf "$work"; mkdir -p "$work"; cp -r "$bundle"/. "$work"/
    data=""; for d in test.npz data; do [ -e "$work/$d" ] && { data=$d; break; }; done
    [ -n "$data" ] || { echo "error: $bundle has no eval data (zqtool bundle … --data DATA)" >&2; exit 2; }
    models="model.qdq.onnx"; [ -f "$work/model.qdq.ort" ] && models="$models model.qdq.ort"
    models=${ZQTOOL_ARM64_MODELS:-$models}
    lim=(); [ -n "$LIMIT" ] && lim=(--limit "$LIMIT")
    for model in $models; do
        (cd "$work" && "$PY" verify.pyz "$model" --data "$data" "${lim[@]}" --runs 20 \
            --json "host.$model.json" --save-outputs "host.$model.npz" >"host.$model.txt") \
            || { echo "error: the host run of $bundle/$model failed" >&2; exit 2; }
        for cpu in $CPUS; do
            fake_cpuinfo "$cpu"
            PYTHONPATH=/opt/zqtool-site chroot "$ROOTFS" /usr/bin/qemu-aarch64-static -cpu "$cpu" /usr/bin/python3 \
                "/work/$name/verify.pyz" "/work/$name/$model" --data "/work/$name/$data" "${lim[@]}" --runs 0 --fp none \
                --json "/work/$name/arm.$cpu.$model.json" --save-outputs "/work/$name/arm.$cpu.$model.npz" \
                >"$work/arm.$cpu.$model.txt" 2>"$work/arm.$cpu.$model.err" \
                || { echo "error: the aarch64 run failed: $(tail -1 "$work/arm.$cpu.$model.err")" >&2; exit 2; }
            "$PY" "$HERE/compare_runs.py" "$work/host.$model.json" "$work/host.$model.npz" \
                "$work/arm.$cpu.$model.json" "$work/arm.$cpu.$model.npz" --label "$name/$model on $cpu"
        done
    done
    mkdir -p "$bundle/arm64"; cp "$work"/host.* "$work"/arm.* "$bundle/arm64/"
done
