#!/usr/bin/env bash
# Install everything scarlet-fd needs on a Debian/Ubuntu machine, idempotently:
# system packages (when we may use apt), the virtualenv, pinned torch, the project.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

want_pkgs=()
# openssl: tests/integration/test_tls.py makes its certificates with it
for pkg in dataset-fashion-mnist rabbitmq-server redis-server prometheus openssl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || want_pkgs+=("$pkg")
done
if [ ${#want_pkgs[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "install: apt-get install ${want_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${want_pkgs[@]}" >/dev/null 2>&1 || {
      apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${want_pkgs[@]}" >/dev/null
    }
    # the Debian packages start their daemons through init scripts we do not rely on;
    # prometheus (with promtool) serves the observability tests, each on its own port
  else
    echo "install: missing system packages (${want_pkgs[*]}); install them with sudo apt-get install" >&2
  fi
fi

stamp="$VENV/.scarlet-installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "install: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "install: pip install -e .[dev] (torch==2.14.1 comes from the local wheel cache when present)"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/pip" install -q -e '.[dev]'
  touch "$stamp"
fi
echo "install: ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
