#!/usr/bin/env bash
# Installs the Debian 12 packages that building and testing parscale needs.
# Safe to re-run: packages already present are skipped by apt. ocl-icd-opencl-dev is only a
# Recommends of libdnnl-dev, but Debian's dnnl-config.cmake requires OpenCL (its GPU runtime).
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config
      nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev
      libpcre2-dev libutf8proc-dev libnlopt-cxx-dev libnlopt-dev
      libopenmpi-dev openmpi-bin libcpp-httplib-dev gnuplot-nox
      nodejs npm chromium libdnnl-dev ocl-icd-opencl-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node's own npm counts as npm (e.g. a nodejs package that bundles it).
if command -v npm >/dev/null 2>&1; then
  kept=(); for p in "${missing[@]}"; do [ "$p" = npm ] || kept+=("$p"); done; missing=("${kept[@]}")
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Node packages of the server tests (the openai client, puppeteer-core), from the lockfile.
cd "$(dirname "$0")/../tests/node"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  echo "install-deps: npm ci (tests/node)"
  npm ci --no-audit --no-fund --loglevel=error
  touch node_modules
fi
