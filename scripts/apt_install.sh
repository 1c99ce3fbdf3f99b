# Sourced by install_browser.sh and install_r.sh: install Debian packages with apt-get as root or through
# passwordless sudo. Without either, or without apt-get, it says why and returns 1 so the caller can exit 0
# (the tests that need the packages then skip with their reason).
#   apt_install LABEL WHY-NEEDED PACKAGE... (extra apt-get options may precede the packages, e.g. --no-install-recommends)
apt_install() {
  local label=$1 needed=$2
  shift 2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      echo "$label: not installed and no root/sudo to install it; $needed" >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$label: no apt-get on this machine; install it by hand ($needed)" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "$@" >/dev/null
}
