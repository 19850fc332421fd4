#!/usr/bin/env bash
# Set-up of the real viewers the tests open the node's SEG and SR in (tests/test_viewers_*.py):
#   - Debian: chromium (driven headless by puppeteer-core), orthanc + orthanc-dicomweb (OHIF's
#     DICOMweb server), nodejs + npm when no Node.js is installed;
#   - npm: the packages pinned in tests/viewers/package.json + package-lock.json (`npm ci`, no
#     install scripts: nothing downloads a browser), into tests/viewers/node_modules/;
#   - OHIF Viewer's ready-built dist/ from the npm tarball of @ohif/app, version and integrity
#     pinned in tests/viewers/package.json ("ohifApp"), into tests/viewers/ohif/ (its npm
#     dependencies are not needed to serve dist/, and some of them are not published);
# dcmqi (3D Slicer's SEG/SR converter, PyPI) is a test extra in setup.cfg, installed by setup.sh.
# Idempotent: re-running installs only what is missing or of another version.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/debian_packages.sh
source scripts/debian_packages.sh
VIEWERS=tests/viewers


DEB_PACKAGES=(chromium orthanc orthanc-dicomweb)
command -v node >/dev/null 2>&1 || DEB_PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || DEB_PACKAGES+=(npm)
install_debian_packages setup_viewers "${DEB_PACKAGES[@]}"

# npm packages, exactly as locked; again only when the lock changed since the last install.
lock_sum="$(sha256sum "$VIEWERS/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$VIEWERS/node_modules/.lock.sha256" 2>/dev/null)" != "$lock_sum" ]; then
  echo "setup_viewers: npm ci in $VIEWERS"
  (cd "$VIEWERS" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" > "$VIEWERS/node_modules/.lock.sha256"
fi

# OHIF's dist/ from the pinned tarball, checked against the pinned integrity before unpacking.
read -r ohif_pkg ohif_version ohif_integrity < <(node -e \
  'const p=require(process.argv[1]).ohifApp;console.log(p.package,p.version,p.integrity)' "$PWD/$VIEWERS/package.json")
ohif_dir="$VIEWERS/ohif"
if [ "$(cat "$ohif_dir/VERSION" 2>/dev/null)" != "$ohif_version" ]; then
  echo "setup_viewers: fetching $ohif_pkg@$ohif_version (dist/ only)"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  tarball="$(cd "$work" && npm pack "$ohif_pkg@$ohif_version" --silent)"
  actual="sha512-$(openssl dgst -sha512 -binary "$work/$tarball" | base64 -w0)"
  if [ "$actual" != "$ohif_integrity" ]; then
    echo "setup_viewers: $tarball integrity $actual does not match the pinned $ohif_integrity" >&2
    exit 1
  fi
  rm -rf "$ohif_dir"
  mkdir -p "$ohif_dir"
  tar -xzf "$work/$tarball" -C "$ohif_dir" --strip-components=1 package/dist
  echo "$ohif_version" > "$ohif_dir/VERSION"
fi

echo "setup_viewers: done (tests: scripts/test.sh tests/test_viewers_*.py)"
