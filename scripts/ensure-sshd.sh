#!/usr/bin/env bash
# Make sure OpenSSH's sshd is at /usr/sbin/sshd (the batch-transfer tests run their
# own SFTP server with it, `streams dev sftp up`). Installs Debian's
# `openssh-server` with apt-get when it is missing and we are root; otherwise says
# what to install and exits non-zero. The package's own service is not needed:
# the harness runs sshd in the foreground with a private config.
set -euo pipefail
SSHD=${STREAMS_SSHD:-/usr/sbin/sshd}
if [ -x "$SSHD" ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $SSHD not found; install Debian's 'openssh-server' package (apt-get install openssh-server)" >&2
    exit 1
fi
echo "installing openssh-server (apt-get) for the SFTP server ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends openssh-server openssh-sftp-server >/dev/null
test -x "$SSHD"
"$SSHD" -V 2>&1 || true
