#!/usr/bin/env bash
# The full test suite, as the README documents it and .ci/run calls it.
# Installs and starts the services the tests need (docker/native/services.sh), then runs every
# test of the workspace. Tests that need a service fail with the reason when it is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  cat <<'HELP'
usage: docker/native/test.sh [cargo test args...]
Starts the services the integration tests use, then runs `cargo test --workspace`.
PROPENSITY_TEST_SERVICES lists them (default: rabbitmq prometheus cassandra chromium); PROPENSITY_VAR holds their state (default var/).
HELP
  exit 0
fi

# The services the test suite talks to: RabbitMQ for the bus tests, Prometheus and promtool for
# the alerting tests, Cassandra for the ScyllaDB store (tests/store_contract.rs,
# tests/cassandra_service.rs), Chromium for the console's browser tests (tests/console.rs).
services=${PROPENSITY_TEST_SERVICES-rabbitmq prometheus cassandra chromium}
if [[ -n "$services" ]]; then
  # shellcheck disable=SC2086
  "$here/services.sh" up $services
fi

# Schemathesis (PyPI), for tests/contract.rs: the API contract fuzzed against a live service.
schemathesis_version=4.32.5
venv=$(realpath -m "${PROPENSITY_VAR:-$root/var}")/schemathesis
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$schemathesis_version"; then
  echo "test.sh: installing schemathesis $schemathesis_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi
export PROPENSITY_SCHEMATHESIS="$venv/bin/schemathesis"

rm -f target/schemathesis-summary.txt
echo "test.sh: cargo test --workspace $*"
status=0
cargo test --workspace "$@" || status=$?
if [[ -f target/schemathesis-summary.txt ]]; then
  echo "test.sh: schemathesis $schemathesis_version: $(cat target/schemathesis-summary.txt)"
fi
exit $status
