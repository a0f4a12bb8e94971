#!/usr/bin/env bash
# Downloads into .whl/ the wheels that the benchmarks need and a lent device machine lacks
# (Python 3.12, manylinux x86_64; its image has jax, flax, optax, orbax-checkpoint, numpy,
# absl-py, etils, cloudpickle, protobuf and psutil, but none of these):
#
#   grain         ur_jax.evaluation.metadataset -> ur_jax.data.pipeline imports it (fewshot_eval.py)
#   array_record  imported by grain
#   portpicker    imported by grain
#
# The benchmarks import nothing of tensorflow-datasets, ml-collections or clu (checked with
# python -X importtime). Versions: requirements.txt's. benchmarks/accelerator.sh installs
# these wheels into /tmp/site when grain is not importable; the device tool's run carries
# them with carry=['.whl']. .whl/ must stay out of git (.gitignore: /.whl/).
#
#   bash benchmarks/device_wheels.sh
set -eu
cd "$(dirname "$0")/.."
pins=$(grep -iE '^(grain|array_record|portpicker)==' requirements.txt)
if [[ $(wc -l <<<"$pins") != 3 ]]; then
  echo "device_wheels.sh: requirements.txt lacks a pin of grain, array_record or portpicker" >&2
  exit 1
fi
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
# shellcheck disable=SC2086  # one argument per pin
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl $pins
ls -l .whl
