#!/bin/sh
# Vendor the dashboard's chart library (Apache ECharts) into the package, from the npm registry.
#
#   scripts/vendor_charts.sh            # the pinned version below
#   ECHARTS_VERSION=6.1.0 scripts/vendor_charts.sh
#
# `npm pack` downloads the release tarball from the registry and checks it against the registry's
# integrity hash; we copy the minified browser build, its LICENSE and NOTICE, and record the version,
# the tarball's address and integrity, and the sha256 of the copied file in VENDORED.txt (the
# dashboard tests check that sha256, so a hand-edited library is caught). No CDN: farms run in
# closed networks, so the dashboard serves this copy itself.
set -eu

VERSION=${ECHARTS_VERSION:-6.1.0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST="$ROOT/farm/dashboard/static/vendor/echarts"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

command -v npm >/dev/null 2>&1 || { echo "vendor_charts: npm is needed (apt-get install npm)" >&2; exit 1; }

cd "$WORK"
npm pack --silent "echarts@$VERSION" >/dev/null
TARBALL="echarts-$VERSION.tgz"
[ -f "$TARBALL" ] || { echo "vendor_charts: npm pack did not produce $TARBALL" >&2; exit 1; }
tar -xzf "$TARBALL"

LICENSE_ID=$(npm view "echarts@$VERSION" license)
TARBALL_URL=$(npm view "echarts@$VERSION" dist.tarball)
INTEGRITY=$(npm view "echarts@$VERSION" dist.integrity)

mkdir -p "$DEST"
cp package/dist/echarts.min.js "$DEST/echarts.min.js"
cp package/LICENSE "$DEST/LICENSE.txt"
cp package/NOTICE "$DEST/NOTICE.txt"
SHA256=$(sha256sum "$DEST/echarts.min.js" | cut -d' ' -f1)

cat > "$DEST/VENDORED.txt" <<META
name: echarts
version: $VERSION
license: $LICENSE_ID (see LICENSE.txt and NOTICE.txt)
source: $TARBALL_URL
integrity: $INTEGRITY
file: echarts.min.js (package/dist/echarts.min.js)
sha256: $SHA256
vendored by: scripts/vendor_charts.sh
META
echo "vendor_charts: echarts $VERSION ($LICENSE_ID) -> $DEST (sha256 $SHA256)"
