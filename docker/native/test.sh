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
PROPENSITY_TEST_SERVICES lists them (default: rabbitmq prometheus cassandra); PROPENSITY_VAR holds their state (default var/).
HELP
  exit 0
fi

# The services the test suite talks to: RabbitMQ for the bus tests, Prometheus and promtool for
# the alerting tests, Cassandra for the ScyllaDB store (tests/store_contract.rs,
# tests/cassandra_service.rs).
services=${PROPENSITY_TEST_SERVICES-rabbitmq prometheus cassandra}
if [[ -n "$services" ]]; then
  # shellcheck disable=SC2086
  "$here/services.sh" up $services
fi

echo "test.sh: cargo test --workspace $*"
cargo test --workspace "$@"
