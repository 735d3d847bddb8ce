"""Real local services without Docker: Apache Kafka (KRaft), Apicurio Registry, S3Proxy; from Maven Central.

    python scripts/services.py up [--brokers N]   start, or reuse a healthy stack; prints sourceable env lines
    python scripts/services.py down               stop what `up` started (by process id) and wipe its data
    python scripts/services.py status             exit 0 when the stack answers, 1 otherwise
    python scripts/services.py run -- CMD ...     run CMD against the stack; stops it after if it started it
    python scripts/services.py restart-broker --node N   start a killed broker again on its existing data

Artefacts are resolved once with ``mvn`` (pinned versions below) into ``.services/cache``, so later starts
need no network. Runtime state (configs, data, logs, pid files) lives in ``.services/run-<first broker
port>``, so stacks on other ports can run side by side. Every process is started in its own session and
stopped by the pid we recorded, after checking its command line is still ours. Its command line is also
recorded (``<name>.cmd``, JSON), so that the broker-control functions below (SIGKILL, SIGSTOP, SIGCONT,
restart), which the chaos tests call through tests/chaos/cluster.py, can start a broker again as it was.
Ports: broker i listens on KAFKA_PORT + i and its controller on KAFKA_PORT + 100 + i; the registry on
REGISTRY_PORT and its management interface on REGISTRY_PORT + 1; S3Proxy, an S3-compatible object store on
the filesystem (``<run>/s3-data``, bucket ``rtml``), on REGISTRY_PORT + 2 unless told otherwise. Set them with
--kafka-port / --registry-port / --s3-port or RTML_KAFKA_PORT / RTML_REGISTRY_PORT / RTML_S3_PORT.
Each broker also has a PROXIED listener for fault-injection tests: it binds KAFKA_PORT + 200 + i but
advertises KAFKA_PORT + 300 + i, where nothing listens until a test starts a proxy forwarding +300 -> +200
(tests/chaos/faultproxy.py). A client bootstrapped at ``Stack.proxied_bootstrap`` is then told the proxy
ports in its metadata, so all its traffic crosses the proxy; clients of the main listener are unaffected.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "4.4.0"
LOG4J_VERSION = "2.25.5"  # the log4j the broker itself depends on: only the slf4j 1.x bridge is added
# Apicurio 3.3 is built for Java 21; on a machine with only Java 17 the last 3.0 release serves the same API.
APICURIO_VERSION = "3.3.3"
APICURIO_VERSION_JAVA17 = "3.0.9"
CCOMPAT_PATH = "/apis/ccompat/v7"
S3PROXY_VERSION = "4.1.0"  # runs on Java 17; its jar-with-dependencies is one runnable file
S3_BUCKET = "rtml"
S3_ACCESS_KEY = "rtml"  # a local test server's credentials, printed in the env lines on purpose
S3_SECRET_KEY = "rtml-local-secret"
S3_REGION = "us-east-1"

ROOT = Path(__file__).resolve().parent.parent / ".services"
CACHE = ROOT / "cache"
HOST = "127.0.0.1"
START_TIMEOUT_S = 90.0
CONTROLLER_OFFSET = 100  # broker i's ports, from KAFKA_PORT + i: see the module docstring
PROXIED_OFFSET = 200
PROXY_OFFSET = 300


@dataclass(frozen=True)
class Stack:
    brokers: int
    kafka_port: int
    registry_port: int
    s3_port: int = 0  # 0: registry_port + 2

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port or self.registry_port + 2}"

    def s3_env(self) -> dict[str, str]:
        """The standard AWS variables (read by obstore and every AWS SDK) for this stack's S3Proxy."""
        return {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_REGION": S3_REGION,
            "AWS_ALLOW_HTTP": "true",
            "RTML_S3_BUCKET": S3_BUCKET,
        }

    @property
    def run(self) -> Path:
        """This stack's runtime folder: configs, data, logs and pid files."""
        return run_folder(self.kafka_port)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{self.kafka_port + i}" for i in range(self.brokers))

    @property
    def proxied_bootstrap(self) -> str:
        """The PROXIED listeners' advertised addresses: reachable only through a running fault proxy."""
        return ",".join(f"{HOST}:{listen}" for listen, _ in self.proxy_routes())

    def proxy_routes(self) -> list[tuple[int, int]]:
        """(port a fault proxy listens on, PROXIED listener port it forwards to), one pair per broker."""
        return [
            (self.kafka_port + PROXY_OFFSET + i, self.kafka_port + PROXIED_OFFSET + i)
            for i in range(self.brokers)
        ]

    @property
    def registry_url(self) -> str:
        return f"http://{HOST}:{self.registry_port}{CCOMPAT_PATH}"

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "SCHEMA_REGISTRY_URL": self.registry_url,
            **self.s3_env(),
        }

    def env_lines(self) -> str:
        return "".join(f"export {key}={value}\n" for key, value in self.env().items())


def run_folder(kafka_port: int) -> Path:
    return ROOT / f"run-{kafka_port}"


def log(message: str) -> None:
    print(f"services: {message}", file=sys.stderr, flush=True)


# --- artefacts -------------------------------------------------------------------------------------------


def mvn(*args: str) -> None:
    cmd = ["mvn", "-q", "-B", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"services: `{' '.join(cmd)}` failed:\n{result.stdout}{result.stderr}")


def kafka_libs() -> Path:
    """The broker's classpath folder: kafka_2.13 with its runtime dependencies, resolved once."""
    libs = CACHE / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / ".complete").exists():
        return libs
    log(f"resolving Apache Kafka {KAFKA_VERSION} from Maven Central (once)")
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(KAFKA_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
    shutil.rmtree(libs, ignore_errors=True)
    mvn("-f", str(work / "pom.xml"), "dependency:copy-dependencies", f"-DoutputDirectory={libs}",
        "-DincludeScope=runtime")  # fmt: skip
    (libs / ".complete").touch()
    return libs


def apicurio_app(version: str) -> Path:
    """The registry's runnable jar, from the `all` tar.gz on Maven Central, unpacked once."""
    app = CACHE / f"apicurio-{version}"
    if not (app / ".complete").exists():
        log(f"resolving Apicurio Registry {version} from Maven Central (once)")
        artifact = f"io.apicurio:apicurio-registry-app:{version}:tar.gz:all"
        download = CACHE / "downloads"
        mvn("dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={download}")
        shutil.rmtree(app, ignore_errors=True)
        with tarfile.open(download / f"apicurio-registry-app-{version}-all.tar.gz") as tar:
            tar.extractall(app, filter="data")
        (app / ".complete").touch()
    # 3.3 ships Quarkus' fast-jar layout, 3.0 an uber runner jar.
    return next(j for pattern in ("quarkus-run.jar", "*-runner.jar") for j in app.rglob(pattern))


def s3proxy_jar() -> Path:
    """S3Proxy's jar-with-dependencies, resolved once."""
    jar = CACHE / f"s3proxy-{S3PROXY_VERSION}-jar-with-dependencies.jar"
    if not jar.exists():
        log(f"resolving S3Proxy {S3PROXY_VERSION} from Maven Central (once)")
        download = CACHE / "downloads"
        mvn("dependency:copy", f"-Dartifact=org.gaul:s3proxy:{S3PROXY_VERSION}:jar:jar-with-dependencies",
            f"-DoutputDirectory={download}")  # fmt: skip
        shutil.copyfile(download / jar.name, jar.with_suffix(".part"))
        jar.with_suffix(".part").rename(jar)
    return jar


KAFKA_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.rtml.services</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version>
    </dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

# --- processes ---------------------------------------------------------------------------------------------


def pid_file(run: Path, name: str) -> Path:
    return run / f"{name}.pid"


def our_pid(run: Path, name: str) -> int | None:
    """The recorded pid of ``name`` if that process is alive and still runs from our folder."""
    try:
        pid = int(pid_file(run, name).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if str(ROOT).encode() in cmdline else None


def command_file(run: Path, name: str) -> Path:
    return run / f"{name}.cmd"


def spawn(run: Path, name: str, cmd: Sequence[str]) -> int:
    """Start ``cmd`` in its own session, appending to ``<name>.log``; records its pid and command line."""
    command_file(run, name).write_text(json.dumps(list(cmd)))
    with open(run / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=run)  # fmt: skip
    pid_file(run, name).write_text(str(proc.pid))
    return proc.pid


def stop(run: Path, names: Sequence[str], grace_s: float = 10.0) -> None:
    """SIGTERM all at once (a broker waits for its quorum), then SIGKILL what is left after the grace."""
    for name in names:
        if (pid := our_pid(run, name)) is not None:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a broker a chaos test left paused shuts down cleanly too
    deadline = time.monotonic() + grace_s
    while any(our_pid(run, n) is not None for n in names) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name in names:
        if (pid := our_pid(run, name)) is not None:
            os.kill(pid, signal.SIGKILL)
            while our_pid(run, name) is not None:
                time.sleep(0.05)
        pid_file(run, name).unlink(missing_ok=True)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout_s:.0f}s")
        time.sleep(0.05)


def chaos_lock_file(run: Path) -> Path:
    return run / "chaos.lock"


def chaos_lock_holder(run: Path) -> int | None:
    """The pid of another process holding the stack's chaos lock (a chaos test session holds it while it
    runs, tests/chaos/cluster.py), or None when nobody, this process or its parent holds it."""
    try:
        fd = os.open(chaos_lock_file(run), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe: closing the descriptor releases it
    except BlockingIOError:
        with contextlib.suppress(ValueError):
            holder = int(os.read(fd, 32) or b"0")
            return None if holder in (os.getpid(), os.getppid()) else holder
        return -1  # held, by a pid not written yet
    finally:
        os.close(fd)
    return None


def process_names(brokers: int) -> list[str]:
    return [*(f"kafka-{i}" for i in range(brokers)), "registry", "s3"]


def recorded_names(run: Path) -> list[str]:
    return sorted(p.stem for p in run.glob("*.pid")) if run.exists() else []


# --- broker control: the chaos tests' process faults, for the stack whose run folder is given -----------


def broker_name(node_id: int) -> str:
    """The process name of KRaft node ``node_id``: broker i runs node.id i + 1."""
    return f"kafka-{node_id - 1}"


def broker_pid(run: Path, node_id: int) -> int:
    """The pid of the running broker ``node_id``; raises ProcessLookupError when it does not run."""
    pid = our_pid(run, broker_name(node_id))
    if pid is None:
        raise ProcessLookupError(f"{broker_name(node_id)} of {run} is not running")
    return pid


def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat: R running, S sleeping, T stopped, Z zombie, ..."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]  # the name in parentheses may hold spaces


def kill_broker(run: Path, node_id: int, timeout_s: float = 10.0) -> None:
    """SIGKILL the broker, as a lost machine: no shutdown, no flush. Returns once it is gone."""
    os.kill(broker_pid(run, node_id), signal.SIGKILL)
    name = broker_name(node_id)
    wait_for(lambda: our_pid(run, name) is None, timeout_s, f"{name} still alive after SIGKILL")


def pause_broker(run: Path, node_id: int, timeout_s: float = 5.0) -> None:
    """SIGSTOP the broker, as a frozen machine: its sockets stay open and silent. Returns once stopped."""
    pid = broker_pid(run, node_id)
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: process_state(pid) == "T", timeout_s, f"{broker_name(node_id)} not stopped")


def resume_broker(run: Path, node_id: int) -> None:
    os.kill(broker_pid(run, node_id), signal.SIGCONT)


def restart_broker(run: Path, node_id: int) -> int:
    """Start a broker that is not running with its recorded command line: same config, same data (not
    formatted again), appending to its log. Returns the new pid. The broker is our child: a long-lived
    caller (a test) should run ``services.py restart-broker`` instead, which leaves it to init."""
    name = broker_name(node_id)
    if our_pid(run, name) is not None:
        raise RuntimeError(f"{name} of {run} is still running")
    return spawn(run, name, json.loads(command_file(run, name).read_text()))


# --- kafka ----------------------------------------------------------------------------------------------


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else "java"


def java_major(binary: str) -> int:
    try:
        out = subprocess.run([binary, "-version"], capture_output=True, text=True, check=False).stderr
    except OSError:
        return 0
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else 0


def registry_runtime() -> tuple[str, str]:
    """(java binary, Apicurio version): a Java 21+ found on this machine runs 3.3, else Java 17+ runs 3.0."""
    homes = [os.environ.get("RTML_REGISTRY_JAVA_HOME"), os.environ.get("JAVA_HOME"),
             *sorted(glob.glob("/usr/lib/jvm/*"), reverse=True)]  # fmt: skip
    candidates = [java(), *(str(Path(h) / "bin" / "java") for h in homes if h)]
    best = max(candidates, key=java_major)
    major = java_major(best)
    if major >= 21:
        return best, APICURIO_VERSION
    if major >= 17:
        return best, APICURIO_VERSION_JAVA17
    sys.exit("services: Java 17 or newer is needed (set JAVA_HOME)")


def broker_properties(stack: Stack, i: int) -> str:
    voters = ",".join(
        f"{n + 1}@{HOST}:{stack.kafka_port + CONTROLLER_OFFSET + n}" for n in range(stack.brokers)
    )
    replicas = min(3, stack.brokers)
    port = stack.kafka_port + i
    controller, proxied, proxy = port + CONTROLLER_OFFSET, port + PROXIED_OFFSET, port + PROXY_OFFSET
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={i + 1}",
        f"controller.quorum.voters={voters}",
        f"listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller},PROXIED://{HOST}:{proxied}",
        f"advertised.listeners=PLAINTEXT://{HOST}:{port},PROXIED://{HOST}:{proxy}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,PROXIED:PLAINTEXT",
        f"log.dirs={stack.run / f'kafka-{i}' / 'data'}",
        "num.partitions=1",
        f"default.replication.factor={replicas}",
        # RF 3 with min ISR 2 survives one lost broker without acknowledging a write held by one replica.
        f"min.insync.replicas={2 if stack.brokers >= 3 else 1}",
        f"offsets.topic.replication.factor={replicas}",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={max(1, replicas - 1)}",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={max(1, replicas - 1)}",
        "offsets.topic.num.partitions=12",
        "transaction.state.log.num.partitions=12",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "log.flush.interval.messages=9223372036854775807",
        "",
    ])  # fmt: skip


def new_cluster_id() -> str:
    """A random KRaft cluster id (16 bytes, base64url) that does not start with '-', as Kafka's own
    Uuid.randomUuid() avoids: about 1 in 64 would, and command-line tools read it as an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def format_command(jvm: Sequence[str], cluster_id: str, props: Path) -> list[str]:
    # The joined `--cluster-id=ID` form: StorageTool's parser rejects `-t -ID` ("expected one argument").
    return [*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props)]


def start_kafka(stack: Stack) -> None:
    libs = kafka_libs()
    classpath = f"{libs}/*"
    cluster_id = new_cluster_id()
    jvm = [java(), "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
           f"-Dlog4j2.configurationFile={write_log4j(stack.run)}", "-cp", classpath]  # fmt: skip
    for i in range(stack.brokers):
        folder = stack.run / f"kafka-{i}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        props = folder / "server.properties"
        props.write_text(broker_properties(stack, i))
        fmt = subprocess.run(
            format_command(jvm, cluster_id, props), capture_output=True, text=True, check=False
        )
        if fmt.returncode != 0:
            sys.exit(f"services: formatting kafka-{i} storage failed:\n{fmt.stdout}{fmt.stderr}")
        spawn(stack.run, f"kafka-{i}", [*jvm, "kafka.Kafka", str(props)])


def write_log4j(run: Path) -> Path:
    path = run / "log4j2.properties"
    path.write_text(
        "rootLogger.level=WARN\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
        "appender.stdout.type=Console\nappender.stdout.name=STDOUT\n"
        "appender.stdout.layout.type=PatternLayout\nappender.stdout.layout.pattern=[%d] %p %m (%c)%n\n"
        "logger.kafka.name=kafka\nlogger.kafka.level=INFO\n"
    )
    return path


def kafka_ready(stack: Stack, timeout: float = 2.0) -> bool:
    """True when the cluster answers a metadata request with every broker registered."""
    from confluent_kafka.admin import AdminClient  # the venv has it; `up` runs from the venv

    admin = AdminClient({"bootstrap.servers": stack.bootstrap, "socket.timeout.ms": 1000, "logger": _quiet})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return len(metadata.brokers) == stack.brokers


_quiet = logging.getLogger("services.librdkafka")  # swallows "connection refused" while the broker starts
_quiet.disabled = True

# --- registry -------------------------------------------------------------------------------------------


def start_registry(stack: Stack) -> None:
    binary, version = registry_runtime()
    jar = apicurio_app(version)
    spawn(stack.run, "registry", [
        binary, "-Xms128m", "-Xmx512m",
        f"-Dquarkus.http.port={stack.registry_port}", f"-Dquarkus.http.host={HOST}",
        "-Dapicurio.storage.kind=sql", "-Dapicurio.storage.sql.kind=h2",
        "-Dapicurio.datasource.url=jdbc:h2:mem:registry", "-Dapicurio.rest.deletion.artifact.enabled=true",
        "-Dapicurio.rest.deletion.artifact-version.enabled=true", "-Dquarkus.log.level=WARN",
        "-Dquarkus.analytics.disabled=true", f"-Dapicurio.root.dir={stack.run}",
        f"-Dquarkus.management.port={stack.registry_port + 1}", f"-Dquarkus.management.host={HOST}",
        "-jar", str(jar),
    ])  # fmt: skip


def registry_ready(stack: Stack, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{stack.registry_url}/subjects", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# --- object store ----------------------------------------------------------------------------------------


def s3_properties(stack: Stack) -> str:
    data = stack.run / "s3-data"
    (data / S3_BUCKET).mkdir(parents=True, exist_ok=True)  # the filesystem backend's bucket is a folder
    return (
        f"s3proxy.endpoint={stack.s3_endpoint}\n"
        "s3proxy.authorization=aws-v2-or-v4\n"
        f"s3proxy.identity={S3_ACCESS_KEY}\n"
        f"s3proxy.credential={S3_SECRET_KEY}\n"
        "jclouds.provider=filesystem\n"
        f"jclouds.filesystem.basedir={data}\n"
    )


def start_s3(stack: Stack) -> None:
    props = stack.run / "s3proxy.properties"
    props.write_text(s3_properties(stack))
    spawn(
        stack.run,
        "s3",
        [java(), "-Xms64m", "-Xmx256m", "-jar", str(s3proxy_jar()), "--properties", str(props)],
    )


def s3_ready(stack: Stack, timeout: float = 2.0) -> bool:
    """S3Proxy answers HTTP (an unsigned request is refused with 403: the server is up)."""
    try:
        with urllib.request.urlopen(f"{stack.s3_endpoint}/{S3_BUCKET}", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


# --- commands -----------------------------------------------------------------------------------------------


def healthy(stack: Stack) -> bool:
    alive = all(our_pid(stack.run, name) is not None for name in process_names(stack.brokers))
    return alive and registry_ready(stack) and s3_ready(stack) and kafka_ready(stack)


def wait_until_ready(stack: Stack) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    waiting = {
        "kafka": lambda: kafka_ready(stack),
        "registry": lambda: registry_ready(stack),
        "s3": lambda: s3_ready(stack),
    }
    while waiting:
        for name, ready in list(waiting.items()):
            if ready():
                del waiting[name]
        dead = [n for n in process_names(stack.brokers) if our_pid(stack.run, n) is None]
        if dead:
            sys.exit(f"services: {', '.join(dead)} exited at start; see {stack.run}/<name>.log")
        if waiting and time.monotonic() > deadline:
            sys.exit(
                f"services: {', '.join(waiting)} not ready after {START_TIMEOUT_S:.0f}s; logs in {stack.run}"
            )
        if waiting:
            time.sleep(0.3)


def up(stack: Stack) -> bool:
    """Start the stack, or reuse it when healthy. Returns True when this call started it."""
    stack.run.mkdir(parents=True, exist_ok=True)
    if healthy(stack) and set(recorded_names(stack.run)) == set(process_names(stack.brokers)):
        log(f"reusing the running stack ({stack.bootstrap}, {stack.registry_url})")
        return False
    if recorded_names(stack.run):
        if (holder := chaos_lock_holder(stack.run)) is not None:  # a broker may be down on purpose
            held = f"the stack on {stack.kafka_port} is held by a chaos test session (pid {holder})"
            sys.exit(f"services: {held}: not restarting it; run again once that session ends")
        log("a previous stack is half-dead or differently shaped: restarting it")
        down(stack.run)
    kafka_libs(), apicurio_app(registry_runtime()[1]), s3proxy_jar()  # resolve all before starting any
    started = time.monotonic()
    try:
        start_kafka(stack)
        start_registry(stack)
        start_s3(stack)
        wait_until_ready(stack)
    except BaseException:
        down(stack.run)  # a failed start leaves nothing running
        raise
    t = time.monotonic() - started
    log(f"ready in {t:.1f}s, kafka {stack.bootstrap}, registry {stack.registry_url}, s3 {stack.s3_endpoint}")
    return True


def down(run: Path) -> None:
    stop(run, recorded_names(run))
    for folder in [*run.glob("kafka-*"), run / "s3-data"]:
        shutil.rmtree(folder, ignore_errors=True)
    for command in run.glob("*.cmd"):
        command.unlink()  # their data is gone: nothing to restart


def run(stack: Stack, cmd: Sequence[str]) -> int:
    started = up(stack)
    env = {**os.environ, **stack.env()}
    try:
        return subprocess.call(list(cmd), env=env)
    finally:
        if started:
            down(stack.run)


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status", "env", "run", "restart-broker"])
    parser.add_argument("--node", type=int, help="restart-broker: the KRaft node id (1 for the first broker)")
    parser.add_argument("--brokers", type=int, default=int(os.environ.get("RTML_KAFKA_BROKERS", "1")))
    parser.add_argument("--kafka-port", type=int, default=int(os.environ.get("RTML_KAFKA_PORT", "9092")))
    parser.add_argument(
        "--registry-port", type=int, default=int(os.environ.get("RTML_REGISTRY_PORT", "8081"))
    )
    parser.add_argument("--s3-port", type=int, default=int(os.environ.get("RTML_S3_PORT", "0")),
                        help="S3Proxy's port (default: the registry port + 2)")  # fmt: skip
    argv = list(argv)
    rest: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, rest = argv[:at], argv[at + 1 :]
    return parser.parse_args(argv), rest


def main(argv: Sequence[str]) -> int:
    args, rest = parse(argv)
    stack = Stack(args.brokers, args.kafka_port, args.registry_port, args.s3_port)
    if args.command == "up":
        up(stack)
        print(stack.env_lines(), end="")
    elif args.command == "down":
        down(stack.run)
        log("stopped")
    elif args.command == "status":
        ok = healthy(stack)
        log("healthy" if ok else "not running")
        return 0 if ok else 1
    elif args.command == "env":
        print(stack.env_lines(), end="")
    elif args.command == "restart-broker":
        if args.node is None:
            sys.exit("services: restart-broker needs --node N")
        log(f"{broker_name(args.node)} restarted as pid {restart_broker(stack.run, args.node)}")
    else:
        if not rest:
            sys.exit("services: run needs a command after --")
        return run(stack, rest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
