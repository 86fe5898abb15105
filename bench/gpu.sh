#!/usr/bin/env bash
# The device check for a lent GPU machine (the `device` tool): bench/gpu_smoke.py on CUDA.
#
# That machine has PyTorch, transformers and tokenizers but no network and no PyAV. Prepare the carry
# here first, then run the check there with carry [".omni-cache/device"]:
#   bash bench/gpu.sh --prepare          # .omni-cache/device: the av wheel for its Python 3.12, the Qwen BPE ranks
#   bash bench/gpu.sh [--device cuda]    # there; the last line is JSON
# On a CPU-only machine `PYTHON=.venv/bin/python bash bench/gpu.sh --device cpu` runs the same check.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
carry=.omni-cache/device

if [ "${1:-}" = --prepare ]; then
    mkdir -p "$carry"
    "$python" -m pip download -q av --python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64 \
        --no-deps -d "$carry"
    cp "$("$python" -c 'import dashscope, pathlib; print(pathlib.Path(dashscope.__file__).parent / "resources" / "qwen.tiktoken")')" "$carry/"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# No install there (no network for build isolation): lay the folders out as one `omni` namespace, as
# pyproject.toml's package-dir does.
cp -r omni "$work/omni"
cp -r encoders "$work/omni/encoders"
cp -r talker "$work/omni/talker"
cp -r demo "$work/omni/demo"
# The random checkpoint's tokenizer reads the BPE ranks from the dashscope package's data file; that
# file is all it needs of the package (whose own dependencies that machine lacks).
mkdir -p "$work/dashscope/resources"
touch "$work/dashscope/__init__.py"
cp "$carry/qwen.tiktoken" "$work/dashscope/resources/"
if ! "$python" -c "import av" 2>/dev/null; then
    "$python" -m pip install -q --no-deps --no-index --target "$work/site" "$carry"/av-*.whl
fi
export PYTHONPATH="$work:$work/site" OMNI_TEST_CACHE="$work/cache"
"$python" bench/gpu_smoke.py "$@"
