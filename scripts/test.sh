#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (Python packages; the real
# node's containerd/runc/CNI from Debian when missing), builds the test bed's control plane,
# node (kubelet, kube-scheduler, kube-proxy), kubectl and helm from Go modules (cached), runs pytest.
#
#   scripts/test.sh [extra pytest args]
#
# Environment: DATASETPREP_SHARED (default ../shared), DATASETPREP_TESTBED_CACHE and
# DATASETPREP_TOOLS_CACHE (build caches), PYTEST_ADDOPTS.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
t0=$(date +%s)

echo "== installing datasetprep and test dependencies"
python3 -m pip install -q -e '.[test]'

echo "== building the native byte-level BPE engine (jobimage/native)"
if command -v cargo >/dev/null 2>&1; then
  python3 -m pip install -q ./jobimage/native
  export DATASETPREP_REQUIRE_NATIVE=1
else
  echo "cargo not found: the native engine is not built; HF tokenizers use the tokenizers library" >&2
fi

echo "== test bed prerequisites (containerd, runc, CNI plugins, iptables; installed when missing)"
tests/cluster/prereqs
echo "== building the Kubernetes test bed binaries (cached)"
tests/cluster/build
if [ -x tests/helm/build ]; then
  echo "== building helm (cached)"
  tests/helm/build
fi
echo "== setup took $(( $(date +%s) - t0 )) s"

set +e
python3 -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
echo "== total $(( $(date +%s) - t0 )) s"
exit "$rc"
