#!/usr/bin/env bash
# Install and run, without Docker, the external services that propensity's
# integration tests need: RabbitMQ, a single-node Cassandra 5.0, the
# prometheus/promtool binaries and a headless Chromium for the console's browser
# tests. See docker/native/README.md.
set -euo pipefail

PROG=services.sh
ALL_SERVICES=(rabbitmq cassandra prometheus chromium)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VAR=$(realpath -m "${PROPENSITY_VAR:-$REPO/var}")

CASSANDRA_VERSION=${CASSANDRA_VERSION:-5.0.9}
CASSANDRA_HEAP=${CASSANDRA_HEAP:-1G}
CASSANDRA_START_TIMEOUT=${CASSANDRA_START_TIMEOUT:-240}
RABBITMQ_START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-120}

RABBITMQ_PORT=5672
RABBITMQ_MGMT_PORT=15672
CQL_PORT=9042
CASSANDRA_STORAGE_PORT=7000
CASSANDRA_JMX_PORT=7199

RMQ_DIR=$VAR/rabbitmq
CAS_DIR=$VAR/cassandra

usage() {
    cat <<EOF
Usage: $PROG up|down|status [rabbitmq|cassandra|prometheus|chromium ...]

Installs (if needed) and manages the services the integration tests use.
With no service names, acts on all four.

  up      install what is missing, start the service, wait until it is ready
          (already running: just checks it is ready)
  down    stop the service (prometheus: nothing to stop)
  status  one line per service: installed?, running?, version
          (exit 0 if every named service is installed and, for rabbitmq and
          cassandra, running; 3 otherwise)

Services:
  rabbitmq    Debian rabbitmq-server, AMQP on 127.0.0.1:$RABBITMQ_PORT (guest/guest),
              management UI on 127.0.0.1:$RABBITMQ_MGMT_PORT, plugin
              rabbitmq_consistent_hash_exchange enabled
  cassandra   Apache Cassandra $CASSANDRA_VERSION (Maven Central), one node,
              CQL on 127.0.0.1:$CQL_PORT
  prometheus  Debian prometheus + promtool binaries only; tests run their own
  chromium    Debian chromium only; the console tests start it headless themselves

Environment:
  PROPENSITY_VAR            state, data and logs (default: <repo>/var; now $VAR)
  CASSANDRA_VERSION         cassandra-all version to fetch (default 5.0.9)
  CASSANDRA_HEAP            JVM heap for Cassandra (default 1G)
  CASSANDRA_START_TIMEOUT   seconds to wait for CQL (default 240)
  RABBITMQ_START_TIMEOUT    seconds to wait for RabbitMQ (default 120)
EOF
}

log() { echo "$PROG: $*"; }
warn() { echo "$PROG: warning: $*" >&2; }
die() { echo "$PROG: error: $*" >&2; exit 1; }

# Print the last lines of a log file to stderr, to explain a failure.
show_tail() {
    local f=$1
    if [[ -s $f ]]; then
        echo "$PROG: --- last lines of $f ---" >&2
        tail -n "${2:-30}" "$f" >&2
        echo "$PROG: --- end of $f ---" >&2
    fi
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

pid_alive() {
    [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null
}

# Pid from a pid file, but only if that process is alive and its command line
# contains the given marker, so a recycled pid is never mistaken for ours.
read_pid() {
    local file=$1 marker=$2 pid
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    pid_alive "$pid" || return 1
    [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *"$marker"* ]] || return 1
    echo "$pid"
}

# Send SIGTERM and wait up to $2 seconds, then SIGKILL.
stop_pid() {
    local pid=$1 wait_s=$2 name=$3 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < wait_s; i++)); do
        pid_alive "$pid" || return 0
        sleep 1
    done
    warn "$name (pid $pid) did not stop within ${wait_s}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

### apt ######################################################################

APT_UPDATED=0
apt_update() {
    ((APT_UPDATED)) && return 0
    log "apt-get update"
    apt-get update -qq >>"$VAR/apt-get.log" 2>&1 || { show_tail "$VAR/apt-get.log"; die "apt-get update failed"; }
    APT_UPDATED=1
}

deb_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == *'install ok installed'* ]]
}

deb_version() {
    dpkg-query -W -f='${Version}' "$1" 2>/dev/null
}

apt_install() {
    local missing=() p
    for p in "$@"; do deb_installed "$p" || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    [[ $(id -u) -eq 0 ]] || die "need root to install: ${missing[*]}"

    # The package lists may be empty or stale; refresh them only when needed.
    for p in "${missing[@]}"; do
        if ! grep -q 'Candidate: [0-9]' <<<"$(apt-cache policy "$p" 2>/dev/null)"; then
            apt_update
            break
        fi
    done

    # The packages' init scripts must not start their own daemons (a system
    # RabbitMQ on 0.0.0.0:5672, a Prometheus on :9090): policy-rc.d exit 101
    # forbids that. Docker-style images already ship one; add it otherwise.
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    log "installing ${missing[*]} (apt-get, log: $VAR/apt-get.log)"
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >>"$VAR/apt-get.log" 2>&1 || rc=$?
    if ((rc != 0 && APT_UPDATED == 0)); then
        apt_update
        rc=0
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            >>"$VAR/apt-get.log" 2>&1 || rc=$?
    fi
    ((own_policy)) && rm -f /usr/sbin/policy-rc.d
    if ((rc != 0)); then
        show_tail "$VAR/apt-get.log"
        die "apt-get install ${missing[*]} failed"
    fi
}

### rabbitmq #################################################################

# Our node runs as root from the package's scripts, with every path under
# $VAR. It shares the cookie of the Debian package's rabbitmq user (HOME below)
# so the plain `rabbitmqctl -n rabbit@localhost ...` wrapper reaches it too.
rmq_env() {
    export HOME=/var/lib/rabbitmq
    export RABBITMQ_NODENAME=rabbit@localhost
    export RABBITMQ_CONF_ENV_FILE=$RMQ_DIR/rabbitmq-env.conf
    export RABBITMQ_CONFIG_FILE=$RMQ_DIR/rabbitmq.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$RMQ_DIR/advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ_DIR/enabled_plugins
    export RABBITMQ_MNESIA_BASE=$RMQ_DIR/mnesia
    export RABBITMQ_LOG_BASE=$RMQ_DIR/log
    export RABBITMQ_PID_FILE=$RMQ_DIR/rabbitmq.pid
    # Keep epmd and Erlang distribution on loopback as well.
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

# Run one of the package's RabbitMQ scripts (rabbitmqctl, ...) against our node.
rmq() { (rmq_env; exec "/usr/lib/rabbitmq/bin/$1" "${@:2}"); }

rabbitmq_pid() { read_pid "$RMQ_DIR/server.pid" rabbitmq-server; }

rabbitmq_install() {
    apt_install rabbitmq-server
    mkdir -p "$RMQ_DIR/log" "$RMQ_DIR/mnesia"

    local cookie=/var/lib/rabbitmq/.erlang.cookie
    if [[ ! -s $cookie ]]; then
        head -c 60 /dev/urandom | base64 | tr -dc '[:upper:]' >"$cookie"
        chown rabbitmq:rabbitmq "$cookie" 2>/dev/null || true
        chmod 400 "$cookie"
    fi

    : >"$RMQ_DIR/rabbitmq-env.conf"
    cat >"$RMQ_DIR/rabbitmq.conf" <<EOF
# Written by $PROG; edits are overwritten on the next 'up'.
listeners.tcp.default = 127.0.0.1:$RABBITMQ_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $RABBITMQ_MGMT_PORT
# guest/guest may connect, but only from loopback (the default, made explicit).
loopback_users.guest = true
log.file.level = info
log.console = false
EOF
    echo '[rabbitmq_consistent_hash_exchange,rabbitmq_management].' >"$RMQ_DIR/enabled_plugins"
}

rabbitmq_start() {
    if rabbitmq_pid >/dev/null; then
        log "rabbitmq: already running (pid $(rabbitmq_pid))"
        return 0
    fi
    if port_open "$RABBITMQ_PORT"; then
        die "rabbitmq: port $RABBITMQ_PORT is already taken by a process this script did not start (see: ss -ltnp)"
    fi
    log "rabbitmq: starting (log: $RMQ_DIR/log/)"
    : >"$RMQ_DIR/log/stdout.log"
    # Foreground mode sent to the background, rather than -detached: its pid
    # stays valid for 'down', and early boot errors land in stdout.log.
    # The subshell execs, so $! is the server script itself, and TERM to it
    # stops the broker cleanly. HUP stays ignored across exec, as with nohup.
    (trap '' HUP; rmq_env; exec /usr/lib/rabbitmq/bin/rabbitmq-server) \
        >>"$RMQ_DIR/log/stdout.log" 2>&1 </dev/null &
    echo $! >"$RMQ_DIR/server.pid"
    date +%s >"$RMQ_DIR/started_at"
}

rabbitmq_wait() {
    local start=$SECONDS pid
    while true; do
        pid=$(rabbitmq_pid) || {
            show_tail "$RMQ_DIR/log/stdout.log"
            show_tail "$RMQ_DIR/log/rabbit@localhost.log"
            die "rabbitmq: the server process exited during startup"
        }
        if port_open "$RABBITMQ_PORT" && rmq rabbitmq-diagnostics -q check_running >/dev/null 2>&1; then
            break
        fi
        if ((SECONDS - start >= RABBITMQ_START_TIMEOUT)); then
            show_tail "$RMQ_DIR/log/stdout.log"
            show_tail "$RMQ_DIR/log/rabbit@localhost.log"
            die "rabbitmq: not ready after ${RABBITMQ_START_TIMEOUT}s (pid $pid still running; stop it with '$PROG down rabbitmq')"
        fi
        log "rabbitmq: waiting for the broker ($((SECONDS - start))s)"
        sleep 3
    done
    log "rabbitmq: ready on 127.0.0.1:$RABBITMQ_PORT (pid $pid, $(since_start "$RMQ_DIR"))"
}

rabbitmq_down() {
    local pid
    if ! pid=$(rabbitmq_pid); then
        log "rabbitmq: not running"
        rm -f "$RMQ_DIR/server.pid"
        return 0
    fi
    log "rabbitmq: stopping (pid $pid)"
    # A clean shutdown through the CLI; the signal is the fallback.
    rmq rabbitmqctl -q shutdown >/dev/null 2>&1 || true
    stop_pid "$pid" 60 rabbitmq
    rm -f "$RMQ_DIR/server.pid"
    log "rabbitmq: stopped"
}

rabbitmq_status() {
    local state=installed ver run=running pid
    deb_installed rabbitmq-server || state="not installed"
    ver=$(deb_version rabbitmq-server || true)
    if pid=$(rabbitmq_pid); then
        port_open "$RABBITMQ_PORT" && run="running (pid $pid, 127.0.0.1:$RABBITMQ_PORT)" ||
            run="starting (pid $pid, port $RABBITMQ_PORT not open yet)"
    else
        run="not running"
    fi
    printf '%-11s %s, %s, version %s\n' rabbitmq: "$state" "$run" "${ver:-n/a}"
    [[ $state == installed && $run == running* ]]
}

### cassandra ################################################################

cassandra_pid() { read_pid "$CAS_DIR/cassandra.pid" org.apache.cassandra.service.CassandraDaemon; }

java_major() {
    java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -n1
}

cassandra_install() {
    command -v java >/dev/null || apt_install openjdk-17-jre-headless
    command -v mvn >/dev/null || apt_install maven
    local jv
    jv=$(java_major)
    [[ $jv == 11 || $jv == 17 ]] || die "cassandra: Cassandra 5.0 needs Java 11 or 17, 'java' is version ${jv:-unknown}"

    local lib=$CAS_DIR/lib
    if [[ $(cat "$lib/.version" 2>/dev/null) != "$CASSANDRA_VERSION" ]]; then
        log "cassandra: fetching cassandra-all $CASSANDRA_VERSION and its dependencies with Maven (log: $CAS_DIR/mvn.log)"
        mkdir -p "$CAS_DIR/fetch"
        cat >"$CAS_DIR/fetch/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>propensity.local</groupId>
  <artifactId>cassandra-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$CASSANDRA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
        rm -rf "$lib.tmp"
        if ! mvn -B -q -f "$CAS_DIR/fetch/pom.xml" \
            org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$lib.tmp" >"$CAS_DIR/mvn.log" 2>&1; then
            show_tail "$CAS_DIR/mvn.log"
            die "cassandra: Maven could not fetch cassandra-all $CASSANDRA_VERSION"
        fi
        echo "$CASSANDRA_VERSION" >"$lib.tmp/.version"
        rm -rf "$lib"
        mv "$lib.tmp" "$lib"
    fi
    cassandra_write_conf
}

cassandra_write_conf() {
    local conf=$CAS_DIR/conf
    mkdir -p "$conf/triggers" "$CAS_DIR/logs" "$CAS_DIR/data" "$CAS_DIR/commitlog" \
        "$CAS_DIR/saved_caches" "$CAS_DIR/hints" "$CAS_DIR/cdc_raw"

    cat >"$conf/cassandra.yaml" <<EOF
# Written by $PROG; edits are overwritten on the next 'up'.
# A single local development node; everything not set here keeps the
# Cassandra $CASSANDRA_VERSION default.
cluster_name: propensity-dev
num_tokens: 16
allocate_tokens_for_local_replication_factor: 1
# A fresh node with no older sstables to stay compatible with: enable all
# 5.0 features straight away.
storage_compatibility_mode: NONE

data_file_directories:
  - $CAS_DIR/data
commitlog_directory: $CAS_DIR/commitlog
saved_caches_directory: $CAS_DIR/saved_caches
hints_directory: $CAS_DIR/hints
cdc_raw_directory: $CAS_DIR/cdc_raw

commitlog_sync: periodic
commitlog_sync_period: 10000ms

partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$CASSANDRA_STORAGE_PORT"

listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $CASSANDRA_STORAGE_PORT
start_native_transport: true
native_transport_port: $CQL_PORT

# A 2-core machine shared with builds and tests.
concurrent_compactors: 1
# Tests create and drop a keyspace each: keep no snapshot of what they drop.
auto_snapshot: false
EOF

    cat >"$conf/logback.xml" <<EOF
<!-- Written by $PROG. -->
<configuration scan="false">
  <appender name="SYSTEMLOG" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>$CAS_DIR/logs/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.SizeAndTimeBasedRollingPolicy">
      <fileNamePattern>$CAS_DIR/logs/system.log.%d{yyyy-MM-dd}.%i.zip</fileNamePattern>
      <maxFileSize>50MB</maxFileSize>
      <maxHistory>3</maxHistory>
      <totalSizeCap>200MB</totalSizeCap>
    </rollingPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <root level="INFO">
    <appender-ref ref="SYSTEMLOG"/>
  </root>
</configuration>
EOF
}

# JVM flags of Cassandra 5.0's conf/jvm-server.options, conf/jvm17-server.options
# (JPMS exports/opens are needed on Java 11 and 17 alike) and cassandra-env.sh,
# plus settings for a quick single-node start.
cassandra_jvm_opts() {
    local conf=$CAS_DIR/conf jamm=("$CAS_DIR"/lib/jamm-*.jar)
    CAS_OPTS=(
        -ea -da:net.openhft...
        -XX:+UseThreadPriorities -XX:+HeapDumpOnOutOfMemoryError -XX:+ExitOnOutOfMemoryError
        -XX:HeapDumpPath="$CAS_DIR/logs"
        -Xss256k -XX:+AlwaysPreTouch -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem
        -Djava.net.preferIPv4Stack=true
        -Xms"$CASSANDRA_HEAP" -Xmx"$CASSANDRA_HEAP"
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
        -XX:G1HeapRegionSize=16m -XX:G1RSetUpdatingPauseTimePercent=5
        -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70
        -Djdk.attach.allowAttachSelf=true
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
        --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
        --add-exports java.sql/java.sql=ALL-UNNAMED
        --add-exports java.base/java.lang.ref=ALL-UNNAMED
        --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
        --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
        --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
        --add-opens java.base/java.lang.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
        --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
        --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
        --add-opens java.base/jdk.internal.math=ALL-UNNAMED
        --add-opens java.base/jdk.internal.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
        --add-opens java.base/sun.nio.ch=ALL-UNNAMED
        --add-opens java.base/java.io=ALL-UNNAMED
        --add-opens java.base/java.lang.reflect=ALL-UNNAMED
        --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
        --add-opens java.base/java.lang=ALL-UNNAMED
        --add-opens java.base/java.util=ALL-UNNAMED
        --add-opens java.base/java.nio=ALL-UNNAMED
        -Dio.netty.tryReflectionSetAccessible=true
        -Dio.netty.allocator.useCacheForAllThreads=true
        -Dio.netty.allocator.maxOrder=11
        # JMX on localhost only, so nodetool works locally.
        -Dcassandra.jmx.local.port="$CASSANDRA_JMX_PORT"
        -Dcassandra.config="file://$conf/cassandra.yaml"
        -Dlogback.configurationFile="file://$conf/logback.xml"
        -Dcassandra.logdir="$CAS_DIR/logs"
        -Dcassandra.storagedir="$CAS_DIR"
        -Dcassandra.triggers_dir="$conf/triggers"
        -Dcassandra-foreground=yes
        -Dcassandra-pidfile="$CAS_DIR/cassandra.pid"
        # One node, nothing to gossip with: do not wait for the ring to settle.
        -Dcassandra.skip_wait_for_gossip_to_settle=0
        -Dcassandra.ring_delay_ms=1000
        -Dcassandra.superuser_setup_delay_ms=0
    )
    # cassandra-env.sh loads jamm as an agent to measure object sizes.
    [[ -f ${jamm[0]} ]] && CAS_OPTS+=(-javaagent:"${jamm[0]}")
    return 0
}

cassandra_start() {
    local pid
    if pid=$(cassandra_pid); then
        log "cassandra: already running (pid $pid)"
        return 0
    fi
    local p
    for p in "$CQL_PORT" "$CASSANDRA_STORAGE_PORT" "$CASSANDRA_JMX_PORT"; do
        if port_open "$p"; then
            die "cassandra: port $p is already taken by a process this script did not start (see: ss -ltnp)"
        fi
    done
    cassandra_jvm_opts
    log "cassandra: starting $CASSANDRA_VERSION (log: $CAS_DIR/logs/system.log)"
    # Readiness is judged on log lines written after this point only.
    touch "$CAS_DIR/logs/system.log"
    stat -c %s "$CAS_DIR/logs/system.log" >"$CAS_DIR/log_offset"
    : >"$CAS_DIR/logs/stdout.log"
    nohup java "${CAS_OPTS[@]}" -cp "$CAS_DIR/conf:$CAS_DIR/lib/*" \
        org.apache.cassandra.service.CassandraDaemon \
        >>"$CAS_DIR/logs/stdout.log" 2>&1 </dev/null &
    echo $! >"$CAS_DIR/cassandra.pid"
    date +%s >"$CAS_DIR/started_at"
}

cassandra_new_log() {
    local off
    off=$(cat "$CAS_DIR/log_offset" 2>/dev/null || echo 0)
    tail -c +$((off + 1)) "$CAS_DIR/logs/system.log" 2>/dev/null
}

cassandra_fail() {
    show_tail "$CAS_DIR/logs/stdout.log" 15
    # Only this start's part of system.log: older runs would mislead.
    cassandra_new_log >"$CAS_DIR/logs/this-start.log"
    show_tail "$CAS_DIR/logs/this-start.log" 30
    die "cassandra: $1"
}

cassandra_wait() {
    local start=$SECONDS reported=$SECONDS pid
    while true; do
        pid=$(cassandra_pid) || cassandra_fail "the JVM exited during startup"
        if port_open "$CQL_PORT" && grep -q 'listening for CQL clients' <<<"$(cassandra_new_log)"; then
            break
        fi
        if grep -qE '^(ERROR|FATAL).*(Exception encountered during startup|StartupException)' <<<"$(cassandra_new_log)"; then
            cassandra_fail "startup failed (pid $pid may still be exiting)"
        fi
        if ((SECONDS - start >= CASSANDRA_START_TIMEOUT)); then
            cassandra_fail "CQL not ready after ${CASSANDRA_START_TIMEOUT}s (pid $pid still running; stop it with '$PROG down cassandra')"
        fi
        if ((SECONDS - reported >= 10)); then
            reported=$SECONDS
            log "cassandra: waiting for CQL on 127.0.0.1:$CQL_PORT ($((SECONDS - start))s)"
        fi
        sleep 1
    done
    log "cassandra: ready, CQL on 127.0.0.1:$CQL_PORT (pid $pid, $(since_start "$CAS_DIR"))"
}

cassandra_down() {
    local pid
    if ! pid=$(cassandra_pid); then
        log "cassandra: not running"
        return 0
    fi
    log "cassandra: stopping (pid $pid)"
    # SIGTERM runs Cassandra's shutdown hook (drain: flush memtables, stop
    # the transports); give it time before resorting to SIGKILL.
    stop_pid "$pid" 90 cassandra
    log "cassandra: stopped"
}

cassandra_status() {
    local state=installed run pid ver
    ver=$(cat "$CAS_DIR/lib/.version" 2>/dev/null || true)
    [[ -n $ver ]] || state="not installed"
    if pid=$(cassandra_pid); then
        port_open "$CQL_PORT" && run="running (pid $pid, CQL 127.0.0.1:$CQL_PORT)" ||
            run="starting (pid $pid, CQL port $CQL_PORT not open yet)"
    else
        run="not running"
    fi
    printf '%-11s %s, %s, version %s\n' cassandra: "$state" "$run" "${ver:-n/a}"
    [[ $state == installed && $run == running* ]]
}

### prometheus ###############################################################

prometheus_install() {
    apt_install prometheus
    # Tests run their own prometheus processes; a packaged daemon (user
    # 'prometheus', :9090) would only take the port.
    if pgrep -u prometheus -x prometheus >/dev/null 2>&1; then
        log "prometheus: stopping the Debian package's daemon"
        /etc/init.d/prometheus stop >/dev/null 2>&1 || pkill -u prometheus -x prometheus || true
    fi
}
prometheus_start() { :; }
prometheus_wait() {
    if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
        die "prometheus: prometheus/promtool not on PATH after install"
    fi
    log "prometheus: installed ($(prometheus_versions)); tests start their own servers"
}
prometheus_down() { log "prometheus: nothing to stop (tests start and stop their own servers)"; }

prometheus_versions() {
    local p t
    p=$(prometheus --version 2>&1 | sed -n 's/^prometheus, version \([^ ]*\).*/\1/p')
    t=$(promtool --version 2>&1 | sed -n 's/^promtool, version \([^ ]*\).*/\1/p')
    echo "prometheus ${p:-?}, promtool ${t:-?}"
}

prometheus_status() {
    if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
        local n
        n=$( (pgrep -x prometheus || true) | wc -l)
        printf '%-11s installed, not a managed service (%s prometheus process(es) running), version %s\n' \
            prometheus: "$n" "$(prometheus_versions)"
    else
        printf '%-11s not installed, not running, version n/a\n' prometheus:
        return 1
    fi
}

### chromium #################################################################

chromium_install() { apt_install chromium fonts-dejavu-core; }
chromium_start() { :; }
chromium_wait() {
    command -v chromium >/dev/null || die "chromium: not on PATH after install"
    log "chromium: installed ($(chromium_version)); the console tests start it headless"
}
chromium_down() { log "chromium: nothing to stop (tests start and stop their own browsers)"; }
chromium_version() { chromium --version 2>/dev/null | head -1 || echo "?"; }
chromium_status() {
    if command -v chromium >/dev/null; then
        printf '%-11s installed, not a managed service, version %s\n' chromium: "$(chromium_version)"
    else
        printf '%-11s not installed, not running, version n/a\n' chromium:
        return 1
    fi
}

### main #####################################################################

since_start() {
    local t0
    t0=$(cat "$1/started_at" 2>/dev/null || echo "")
    [[ -n $t0 ]] && echo "up $(($(date +%s) - t0))s after start" || echo "start time unknown"
}

main() {
    local cmd=${1:-}
    case $cmd in
    -h | --help | help) usage; exit 0 ;;
    up | down | status) shift ;;
    "") usage >&2; exit 2 ;;
    *) echo "$PROG: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
    esac

    local services=("$@") s
    ((${#services[@]})) || services=("${ALL_SERVICES[@]}")
    for s in "${services[@]}"; do
        case $s in
        rabbitmq | cassandra | prometheus | chromium) ;;
        *) die "unknown service '$s' (expected: ${ALL_SERVICES[*]})" ;;
        esac
    done
    mkdir -p "$VAR"

    case $cmd in
    up)
        # Install everything first, then start everything, then wait: the
        # slow Cassandra boot overlaps with the RabbitMQ one.
        for s in "${services[@]}"; do "${s}_install"; done
        for s in "${services[@]}"; do "${s}_start"; done
        for s in "${services[@]}"; do "${s}_wait"; done
        log "all ready: ${services[*]}"
        ;;
    down)
        for s in "${services[@]}"; do "${s}_down"; done
        ;;
    status)
        local rc=0
        for s in "${services[@]}"; do "${s}_status" || rc=3; done
        exit $rc
        ;;
    esac
}

main "$@"
