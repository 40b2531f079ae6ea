#!/usr/bin/env bash
# Validate AsyncAPI documents with the official parser, @asyncapi/parser (npm), run by Node.
# The parser is installed once, pinned, into a cache outside the checkout (STREAMS_TOOLS_CACHE,
# default ~/.cache/streams), from the npm registry. Usage: scripts/asyncapi-validate.sh FILE...
set -euo pipefail
PARSER_VERSION=3.6.6
cache="${STREAMS_TOOLS_CACHE:-$HOME/.cache/streams}/asyncapi-parser-$PARSER_VERSION"
command -v node >/dev/null || { echo "node (Node.js 18+) is required to validate AsyncAPI documents" >&2; exit 1; }
if [ ! -f "$cache/.installed" ]; then
  mkdir -p "$cache"
  npm install --prefix "$cache" --no-audit --no-fund --loglevel=error --save-exact "@asyncapi/parser@$PARSER_VERSION" >&2
  touch "$cache/.installed"
fi
exec node "$(dirname "$0")/asyncapi-validate.cjs" "$cache" "$@"
