#!/bin/sh
# Install what is missing, idempotently: Debian packages (as root), then a
# virtual environment in .venv with the node (and, with "test", its test tools).
#   sh scripts/install.sh          # runtime only
#   sh scripts/install.sh test     # runtime + test peers and tools
set -eu
cd "$(dirname "$0")/.."
WANT="${1:-run}"

PACKAGES="python3 python3-venv python3-pip"
if [ "$WANT" = test ]; then
    # Real peers the tests use: dcmtk, Orthanc, dicom3tools, PixelMed + JRE, Redis.
    # insighttoolkit5-examples: a real T1 head MR with its brain mask (brain-t1 tests).
    # openjph-tools: OpenJPH's HTJ2K encoder (HTJ2K test images; dcmtk has none).
    PACKAGES="$PACKAGES dcmtk orthanc dicom3tools libpixelmed-java default-jre-headless redis-server redis-tools libgdcm-tools openjph-tools insighttoolkit5-examples postgresql"
fi

missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $pkg"
done
# python3 from elsewhere (pyenv, a distribution build) is fine if it has venv.
if command -v python3 >/dev/null 2>&1 && python3 -c "import venv, ensurepip" 2>/dev/null; then
    missing=$(echo "$missing" | tr ' ' '\n' | grep -v -x -e python3 -e python3-venv -e python3-pip | tr '\n' ' ' || true)
fi
missing=$(echo $missing)
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages: $missing (run as root, or: sudo apt-get install $missing)" >&2
        exit 1
    fi
    echo "installing Debian packages: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends $missing
    # Orthanc's package starts a system service; tests run their own instances.
    if [ -d /run/systemd/system ]; then systemctl disable --now orthanc 2>/dev/null || true; fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "$WANT" = test ]; then
    .venv/bin/python -m pip install -q -e ".[test]"
else
    .venv/bin/python -m pip install -q .
fi
