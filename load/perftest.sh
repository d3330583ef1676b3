#!/usr/bin/env bash
# Runs RabbitMQ PerfTest (com.rabbitmq:perf-test from Maven Central), fetching it and its
# dependencies with Maven into var/perftest/ the first time. Every argument goes to PerfTest;
# `propensity-load bench --rabbitmq URL` calls this to measure the broker's own ceiling.
#
#   load/perftest.sh --uri amqp://guest:guest@127.0.0.1:5672/%2f --time 10
#   PERFTEST_VERSION=2.22.1 load/perftest.sh --help
set -euo pipefail

PROG=perftest.sh
PERFTEST_VERSION=${PERFTEST_VERSION:-2.22.1}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${PROPENSITY_VAR:-$ROOT/var}/perftest
LIB=$DIR/lib

die() { echo "$PROG: error: $*" >&2; exit 1; }

command -v java >/dev/null || die "PerfTest needs Java (8 or later) on the PATH"

if [[ $(cat "$LIB/.version" 2>/dev/null) != "$PERFTEST_VERSION" ]]; then
    command -v mvn >/dev/null || die "fetching PerfTest needs Maven (mvn) on the PATH"
    echo "$PROG: fetching perf-test $PERFTEST_VERSION and its dependencies with Maven (log: $DIR/mvn.log)" >&2
    mkdir -p "$DIR/fetch"
    cat >"$DIR/fetch/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>propensity.local</groupId>
  <artifactId>perftest-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>com.rabbitmq</groupId>
      <artifactId>perf-test</artifactId>
      <version>$PERFTEST_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    rm -rf "$LIB.tmp"
    if ! mvn -B -q -f "$DIR/fetch/pom.xml" \
        org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$LIB.tmp" >"$DIR/mvn.log" 2>&1; then
        tail -n 20 "$DIR/mvn.log" >&2
        die "Maven could not fetch perf-test $PERFTEST_VERSION"
    fi
    echo "$PERFTEST_VERSION" >"$LIB.tmp/.version"
    rm -rf "$LIB"
    mv "$LIB.tmp" "$LIB"
fi

exec java -cp "$LIB/*" com.rabbitmq.perf.PerfTest "$@"
