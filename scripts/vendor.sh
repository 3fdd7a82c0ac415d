#!/usr/bin/env bash
# Refresh the vendored front-end libraries from npm (package.json pins them). The copies are
# committed, so set-up needs neither npm nor a network for them.
set -euo pipefail
cd "$(dirname "$0")/.."
npm install --no-audit --no-fund
mkdir -p webapp/static/vendor/uplot
cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css node_modules/uplot/LICENSE \
   webapp/static/vendor/uplot/
