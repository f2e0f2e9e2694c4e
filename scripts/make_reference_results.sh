#!/usr/bin/env bash
# Regenerate results/ (the committed reference results) from tasks/sweeps/reference.toml:
# the sweep into results/reference.sqlite (git-ignored; a rerun plays only what is
# missing), then its tables (markdown, CSV), plots and HTML report with viewer pages.
set -euo pipefail
cd "$(dirname "$0")/.."
store=results/reference.sqlite
lmact sweep tasks/sweeps/reference.toml --store "$store"
lmact report --sweep reference --store "$store" --format csv --out results
lmact report --sweep reference --store "$store" --format markdown --out results
lmact report --sweep reference --store "$store" --format html --out results --view-episodes 1 --view-max-mb 0.5
