# Sourced by scripts/setup.sh and scripts/setup_viewers.sh: install_debian_packages NAME PKG...
# installs those of the Debian packages PKG... that are missing (NAME prefixes the message), as
# root or through sudo. The packages' maintainer scripts are kept from starting Orthanc/Redis as
# system services while they install: those would listen on every interface and hold the ports
# (the node's scripts and tests start them on demand).
install_debian_packages() {
  local name="$1"
  shift
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  echo "$name: installing Debian packages: ${missing[*]}"
  local policy=/usr/sbin/policy-rc.d
  local created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    created_policy=1
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ "$created_policy" = 1 ]; then
    $sudo rm -f "$policy"
  fi
}
