#!/bin/bash
# Installs what fintx needs to build and test on Debian 12 (apt-get, as root).
# Does nothing when everything is present.
set -euo pipefail

PKGS=(postgresql-15 postgresql-server-dev-15 postgresql-15-pgtap libssl-dev
      libtap-parser-sourcehandler-pgtap-perl libipc-run-perl lcov openssl valgrind
      libpq-dev libnats-dev nats-server libfaketime python3)
missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
for tool in make gcc perl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "bootstrap: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then SUDO=sudo; else
        echo "bootstrap: missing packages and not root: ${missing[*]}" >&2; exit 1
    fi
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
# Do not let the postgresql package create and start a system cluster we do not use
# (a drop-in, so dpkg sees no conffile conflict).
$SUDO mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/fintx-no-main.conf >/dev/null
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "bootstrap: done"
