#!/usr/bin/env bash
# Reinstall the vendored browser libraries exactly as package-lock.json pins them (npm ci checks each
# tarball's integrity hash), then copy the files the app serves, with their licence, into this folder.
# To move to a new version: edit package.json, `npm install --package-lock-only --ignore-scripts`, run this.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp package.json package-lock.json "$work"/
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund >/dev/null)
mkdir -p uplot
cp "$work"/node_modules/uplot/dist/uPlot.iife.min.js "$work"/node_modules/uplot/dist/uPlot.min.css "$work"/node_modules/uplot/LICENSE uplot/
echo "uplot $(node -p "require('$work/node_modules/uplot/package.json').version") -> $(pwd)/uplot"
