#!/usr/bin/env bash
# Copy the generated CRD(s) from crds/ (repository root) into the chart, which
# embeds them verbatim (charts/datasetprep-operator/files/crds/).
# tests/test_chart.py fails when the two differ, so run this after regenerating crds/.
#
#   charts/sync-crds.sh          copy
#   charts/sync-crds.sh --check  exit 1 (and say which) if the chart's copy is stale
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/crds"
dst="$root/charts/datasetprep-operator/files/crds"
files=(datasetprep.io_datasetpreps.yaml datasetprep.io_datasetblends.yaml)

check=0
[[ "${1:-}" == "--check" ]] && check=1
status=0
for f in "${files[@]}"; do
  if [[ ! -f "$src/$f" ]]; then
    echo "sync-crds: $src/$f does not exist (generate it first)" >&2
    exit 2
  fi
  if cmp -s "$src/$f" "$dst/$f"; then
    continue
  fi
  if (( check )); then
    echo "sync-crds: $dst/$f differs from crds/$f; run charts/sync-crds.sh" >&2
    status=1
  else
    mkdir -p "$dst"
    cp "$src/$f" "$dst/$f"
    echo "sync-crds: copied crds/$f -> charts/datasetprep-operator/files/crds/$f" >&2
  fi
done
exit $status
