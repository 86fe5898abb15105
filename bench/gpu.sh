#!/usr/bin/env bash
# The device jobs for a lent GPU machine (the `device` tool).
#
#   bash bench/gpu.sh [ARGS]          the real-size job (bench/gpu_real.py): builds the 7B-shape checkpoint
#                                     on the GPU, then one JSON line, omni vs transformers on those weights
#   bash bench/gpu.sh smoke [ARGS]    the smoke check (bench/gpu_smoke.py): does every stage run on CUDA?
#
# That machine has PyTorch, transformers and tokenizers but no network and no PyAV. Prepare the carry
# here first, then run the job there with carry [".omni-cache/device"]:
#   bash bench/gpu.sh --prepare          # .omni-cache/device: the av wheel for its Python 3.12, the Qwen BPE ranks
#   bash bench/gpu.sh                    # there (7b, cuda; ~6 of its 8 minutes); the last line is JSON
# OMNI_GPU_PRESET picks the size (default 7b). Tested on a CPU-only machine with
#   OMNI_GPU_PRESET=tiny PYTHON=.venv/bin/python bash bench/gpu.sh --device cpu
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
# The benches put their parent folder first on sys.path: run them from $work so that it is this layout.
cp -r bench "$work/bench"
# The random checkpoint's tokenizer reads the BPE ranks from the dashscope package's data file; that
# file is all it needs of the package (whose own dependencies that machine lacks).
mkdir -p "$work/dashscope/resources"
touch "$work/dashscope/__init__.py"
cp "$carry/qwen.tiktoken" "$work/dashscope/resources/"
if ! "$python" -c "import av" 2>/dev/null; then
    "$python" -m pip install -q --no-deps --no-index --target "$work/site" "$carry"/av-*.whl
fi
export PYTHONPATH="$work:$work/site" OMNI_TEST_CACHE="$work/cache"
# The 7B build writes ~22 GB of shards under $TMPDIR (the work folder); they go with it on exit.
export TMPDIR="$work"
if [ "${1:-}" = smoke ]; then
    shift
    "$python" "$work/bench/gpu_smoke.py" "$@"
else
    "$python" "$work/bench/gpu_real.py" --preset "${OMNI_GPU_PRESET:-7b}" "$@"
fi
