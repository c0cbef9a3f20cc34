#!/usr/bin/env bash
# Set up a fresh Debian machine with Python 3.11 for the node: system packages, a virtualenv in .venv,
# and the node installed into it. `--test` also installs the real peers the tests use (dcmtk,
# dicom3tools, Orthanc with its GDCM, DICOMweb and Web Viewer plugins, PostgreSQL, Chromium). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    *) echo "usage: deploy/setup.sh [--test]" >&2; exit 2 ;;
  esac
done

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

packages=()
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
if [ "$want_test" = 1 ]; then
  for bin in storescu:dcmtk dciodvfy:dicom3tools Orthanc:orthanc curl:curl; do
    [ -x "/usr/bin/${bin%%:*}" ] || [ -x "/usr/sbin/${bin%%:*}" ] || packages+=("${bin##*:}")
  done
  [ -f /usr/share/orthanc/plugins/libOrthancGdcm.so ] || packages+=(orthanc-gdcm)
  [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || packages+=(orthanc-dicomweb)     # STOW-RS peer
  [ -f /usr/share/orthanc/plugins/libOrthancWebViewer.so ] || packages+=(orthanc-webviewer)   # the viewer test
  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || packages+=(postgresql)
  [ -x /usr/bin/chromium ] || packages+=(chromium)    # the dashboard's browser test (Playwright drives it)
fi
if [ "${#packages[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${packages[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
extras=""
[ "$want_test" = 1 ] && extras="[test]"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
echo "setup: ready ($(.venv/bin/python --version), $(.venv/bin/dicom-node --help >/dev/null && echo dicom-node ok))"
