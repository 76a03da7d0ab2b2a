#!/bin/sh
# Make sure a headless Chromium is available for the dashboard's browser tests (pytest -m browser).
# Playwright drives Debian's `chromium` package through executable_path=/usr/bin/chromium
# (`playwright install` cannot download its own browser in closed networks). Installs it with
# apt-get when absent and this runs as root; otherwise says so, and the browser tests skip
# (or fail under CI=true).
set -u
CHROMIUM=${CHROMIUM_PATH:-/usr/bin/chromium}

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "browser tests: installing Debian's chromium with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null &&
        [ -x "$CHROMIUM" ] && exit 0
    echo "browser tests: could not install chromium" >&2
else
    echo "browser tests: $CHROMIUM is missing and cannot be installed here (needs root and apt-get)" >&2
fi
case "${CI:-}" in
    1|true|yes) exit 1 ;;
esac
exit 0
