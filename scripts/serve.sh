#!/bin/sh
# Run the node on the shipped config (embedded broker, no servers needed).
set -eu
cd "$(dirname "$0")/.."
sh scripts/install.sh run
exec .venv/bin/dicom-node serve --config "${CONFIG:-config.yaml}"
