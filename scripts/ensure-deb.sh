#!/usr/bin/env bash
# Make sure a program from a Debian package is installed (tests drive some real programs):
#   scripts/ensure-deb.sh PROGRAM PACKAGE [PACKAGE...]
# Installs the packages with apt-get when PROGRAM is missing and we are root; otherwise says what to
# install and exits non-zero. Used by `make test` for chromium (the dashboard's browser test) and
# OpenSSH's sshd (the batch-transfer tests' SFTP server; the package's own service is not used) and its
# sftp client (the batch tests upload partners' files with it), MariaDB's mariadbd (the MySQL dialect's
# tests), RabbitMQ and Redis (the broker tests; the packages' own services are not started: the
# harness runs private servers, streams/dev/).
set -euo pipefail
PROGRAM=$1
shift
if [ -x "$PROGRAM" ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $PROGRAM not found; install Debian's '$1' package (apt-get install $*)" >&2
    exit 1
fi
echo "installing $* (apt-get) ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
test -x "$PROGRAM"
