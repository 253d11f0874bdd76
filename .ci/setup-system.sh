#!/usr/bin/env bash
# Debian packages vlfusion needs beyond Python: headers to build pillow-simd, Chromium for the
# report's browser test, Rhino so that SPICE's scorer runs on Java 17, Java itself for the COCO
# caption toolkit. Installs only what is missing, so a second run costs a few dpkg look-ups.
set -euo pipefail
want=(libjpeg-dev zlib1g-dev chromium librhino-java maven fonts-dejavu-core)
missing=()
command -v java >/dev/null || missing+=(default-jre-headless)
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
  echo "system packages missing (${missing[*]}); install them as root: apt-get install ${missing[*]}" >&2
  exit 1
fi
SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
echo "system packages: installing ${missing[*]}"
$SUDO apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
