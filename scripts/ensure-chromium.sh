#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is at /usr/bin/chromium (the
# dashboard's browser test drives it through Playwright). Installs the
# `chromium` package with apt-get when it is missing and we are root; otherwise
# says what to install and exits non-zero.
set -euo pipefail
CHROMIUM=${STREAMS_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $CHROMIUM not found; install Debian's 'chromium' package (apt-get install chromium)" >&2
    exit 1
fi
echo "installing chromium (apt-get) for the browser test ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
test -x "$CHROMIUM"
"$CHROMIUM" --version
