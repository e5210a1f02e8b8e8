#!/usr/bin/env bash
# Download, on this machine, the wheels that flatrep needs on a lent GPU machine and that its
# image lacks (it has torch, torchvision, numpy, scipy, xarray, pandas, statsmodels,
# matplotlib, pyyaml, tqdm, attrs, hypothesis and pytest for Python 3.12, and no registry).
# They land in .whl/ (git-ignored); the device run carries that folder and
# bench/device_check.sh installs them with --no-index. Versions are the ones this project's
# own environment resolved (.venv), so both machines run the same libraries besides torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# name of the distribution as pip knows it -> the version installed in $PY's environment
PACKAGES=(netCDF4 cftime mnist1d jsonschema jsonschema-specifications referencing rpds-py)
pins=()
for name in "${PACKAGES[@]}"; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    pins+=("$name==$version")
done
rm -rf .whl
mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "${pins[@]}"
ls -l .whl
du -sh .whl
