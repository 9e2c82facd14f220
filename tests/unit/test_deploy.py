"""Static checks of the deployment files: Dockerfile, compose, Prometheus, Grafana, Kubernetes."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import generate_latest

from streamscore.config import CONFIG_FILE_ENV, ENV_PREFIX, Settings
from streamscore.events import REJECT_REASONS, SCHEMAS_DIR_ENV
from streamscore.metrics import METRIC_NAMES, OPERATIONS, OUTCOMES, SCRIPTS, create_metrics
from streamscore.runtime.sensors import PrometheusSensor
from streamscore.scoring.rules import load_rules, parse_rules_text

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "streamscore-dashboard.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
K8S = DEPLOY / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

#: The oldest Kubernetes the manifests target; they are also checked against the newest
#: version the installed kubernetes-validate knows, so no API they use has been removed.
K8S_MIN_VERSION = "1.30"
#: prometheus-operator custom resources. kubernetes-validate ships schemas for built-in kinds
#: only (it cannot validate CRDs), so these files are excluded from schema validation and
#: cross-checked by hand in test_servicemonitor_targets_the_service.
K8S_CRD_FILES = frozenset({"servicemonitor.yaml"})

#: Read outside Settings (by the schema loader and load_settings), yet legitimate to set.
EXTRA_ENV_VARS = frozenset({SCHEMAS_DIR_ENV, CONFIG_FILE_ENV})
SETTINGS_ENV_VARS = frozenset(f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields)

PROMTOOL_MISSING = (
    "promtool is not on PATH: install Debian's `prometheus` package "
    "(apt-get install -y prometheus), which CI installs too"
)

# --- PromQL metric-name extraction -----------------------------------------------------------

#: Aggregation operators, binary and grouping keywords, modifiers and literals: identifiers in
#: PromQL that are not metric names. Functions need no list: they are always followed by "(".
PROMQL_WORDS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
        "by", "without", "on", "ignoring", "group_left", "group_right",
        "and", "or", "unless", "bool", "atan2", "offset", "start", "end", "inf", "nan",
    }
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not glued to a word, number, `$variable` or `.`, ending at a non-identifier
# character (so backtracking cannot shorten `rate(` to `rat`), and not followed by "(".
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


def metric_names_in(expr: str) -> set[str]:
    """Return the metric names a PromQL expression selects (Grafana variables allowed)."""
    text = _STRING.sub('""', expr)  # label values, label_replace() arguments
    text = _MATCHERS.sub("{}", text)  # label names in matchers
    text = _RANGE.sub("[]", text)  # durations, $__rate_interval, subqueries
    text = _GROUPING.sub(" ", text)  # label names in by (...), on (...) ...
    return {name for name in _IDENT.findall(text) if name.lower() not in PROMQL_WORDS}


def series_names_of(metric: str) -> set[str]:
    """Return the series names one prometheus_client metric may expose."""
    if metric.endswith("_total"):  # a counter: prometheus_client adds <base>_created
        return {metric, metric.removesuffix("_total") + "_created"}
    return {metric, *(f"{metric}{suffix}" for suffix in ("_bucket", "_sum", "_count", "_created"))}


def populated_metrics_text() -> str:
    """Return the exposition of a fresh metric set with every labelled metric given series."""
    metrics = create_metrics()
    topics = Settings.model_construct().input_topics  # the defaults, whatever the env says
    PrometheusSensor(metrics, topics)  # the zero samples a worker exports from the start
    for topic in topics:
        for outcome in OUTCOMES:
            metrics.events_total.labels(topic=topic, outcome=outcome).inc()
        metrics.consumer_lag_messages.labels(topic=topic).set(12)
    for reason in REJECT_REASONS:
        metrics.dead_letter_total.labels(reason=reason).inc()
    for tier in ("warm", "hot"):
        metrics.handoffs_total.labels(tier=tier, model="live").inc()
        metrics.sla_breaches_total.labels(tier=tier).inc()
        metrics.tier_changes_total.labels(direction="up", tier=tier, model="live").inc()
        metrics.account_handoffs_total.labels(tier=tier).inc()
    metrics.tier_changes_total.labels(direction="down", tier="cold", model="live").inc()
    metrics.event_to_scored_seconds.observe(0.042)
    for script in SCRIPTS:
        metrics.redis_script_seconds.labels(script=script).observe(0.0012)
    metrics.batch_events.observe(250)
    for operation in OPERATIONS:
        metrics.retries_total.labels(operation=operation).inc()
    metrics.ready.set(1)
    metrics.partitions_assigned.set(len(topics) * 4)
    for result in ("applied", "rejected"):
        metrics.rules_reloads_total.labels(result=result).inc()
    metrics.rules_version_info.labels(version="2024-06-01.1").set(1)
    metrics.outbox_pending.set(3)
    metrics.decay_due_leads.set(17)
    labels = ("live", "2024-06-01.1", "hot")
    metrics.kpi_handoffs.labels(*labels).set(12)
    metrics.kpi_conversion_ratio.labels(*labels, "won").set(0.25)
    metrics.kpi_sla_attainment_ratio.labels(*labels).set(0.9)
    metrics.kpi_time_to_touch_seconds.labels(*labels, "50").set(1800)
    return generate_latest(metrics.registry).decode()


def exposed_series_names(text: str) -> set[str]:
    """Return the series names in a text exposition."""
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@pytest.fixture(scope="module")
def metrics_text() -> str:
    """The populated exposition, built once."""
    return populated_metrics_text()


@pytest.fixture(scope="module")
def recorded_names() -> set[str]:
    """Series names produced by the recording rules in alerts.yml."""
    return {rule["record"] for rule in iter_rules() if "record" in rule}


@pytest.fixture(scope="module")
def defined_names(metrics_text: str) -> dict[str, str]:
    """Map every series name a query may use to the metric defining it."""
    defined = {series: name for name in METRIC_NAMES for series in series_names_of(name)}
    for series in exposed_series_names(metrics_text):
        if series.startswith(("process_", "python_")):
            defined[series] = series
    defined["up"] = "up"
    return defined


def iter_rules() -> Iterator[dict[str, Any]]:
    """Yield every rule of alerts.yml."""
    for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]:
        yield from group["rules"]


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Yield dashboard panels, descending into rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def load_dashboard() -> dict[str, Any]:
    """Return the parsed Grafana dashboard."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool, failing the test (never skipping) when it is not installed."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(PROMTOOL_MISSING, pytrace=False)
    return subprocess.run(
        [path, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


# --- The extractor itself --------------------------------------------------------------------


def test_metric_name_extraction_skips_functions_labels_and_variables() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_seconds_bucket{le="+Inf", '
        'job=~"$job"}[$__rate_interval]))) > 5 and on (job) sum without (topic) (b_total '
        'offset 5m) / ignoring (x) group_left c:rate5m unless absent(up{job="x"}) '
        'or label_replace(d, "dst", \'$1\', "src", "(.*)") > bool 1e3'
    )
    assert metric_names_in(expr) == {"a_seconds_bucket", "b_total", "c:rate5m", "up", "d"}


# --- Prometheus ------------------------------------------------------------------------------


def test_alert_and_recording_rules_name_only_defined_metrics(
    defined_names: dict[str, str], recorded_names: set[str]
) -> None:
    for rule in iter_rules():
        used = metric_names_in(rule["expr"])
        assert used, f"no metric found in {rule.get('alert') or rule['record']}: {rule['expr']}"
        unknown = used - defined_names.keys() - recorded_names
        assert not unknown, f"{rule.get('alert') or rule['record']} uses undefined {unknown}"


def test_alerts_have_severity_and_annotations() -> None:
    alerts = [rule for rule in iter_rules() if "alert" in rule]
    names = [alert["alert"] for alert in alerts]
    assert len(names) == len(set(names)), "duplicate alert names"
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, alert["alert"]
        for key in ("summary", "description"):
            assert alert["annotations"].get(key, "").strip(), f"{alert['alert']}: no {key}"


def test_alerts_cover_the_sre_signals() -> None:
    exprs = " ".join(rule["expr"] for rule in iter_rules())
    for needle in (
        "up{",
        "streamscore_ready",
        "streamscore_consumer_lag_messages",
        "streamscore_dead_letter_total",
        "streamscore_event_to_scored_seconds_bucket",
        "streamscore_retries_total",
        "streamscore_outbox_pending",
        'streamscore_rules_reloads_total{result="rejected"}',
        'streamscore_events_total{outcome="scored"}',
    ):
        assert needle in exprs, f"no rule watches {needle}"


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config_resolves_rule_files() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    # Relative, so the same file works mounted in compose and checked from the repo.
    assert config["rule_files"] == ["alerts.yml"]
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_unit_tests_of_alerts_pass_and_cover_every_alert() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    assert tests["rule_files"] == ["alerts.yml"]
    fired = {
        case["alertname"]
        for group in tests["tests"]
        for case in group.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    alerts = {rule["alert"] for rule in iter_rules() if "alert" in rule}
    assert alerts - fired == set(), "alerts without a firing unit test"
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_metrics_lints_the_exposition_clean(metrics_text: str) -> None:
    result = promtool("check", "metrics", stdin=metrics_text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == "", result.stdout + result.stderr


def test_every_metric_family_has_series_in_the_lint_input(metrics_text: str) -> None:
    # A new labelled metric must get a realistic label set in populated_metrics_text(), or
    # promtool would lint only its HELP/TYPE lines.
    families = set(re.findall(r"^# TYPE (streamscore_\w+) ", metrics_text, re.MULTILINE))
    exposed = exposed_series_names(metrics_text)
    for family in families:
        assert any(s == family or s.startswith(f"{family}_") for s in exposed), family


def test_metric_names_lists_every_exported_metric(
    metrics_text: str, defined_names: dict[str, str]
) -> None:
    exposed = {s for s in exposed_series_names(metrics_text) if s.startswith("streamscore_")}
    assert exposed - defined_names.keys() == set(), "exported but missing from METRIC_NAMES"
    for name in METRIC_NAMES:
        assert series_names_of(name) & exposed, f"{name} in METRIC_NAMES but not exported"


def test_prometheus_scrapes_the_compose_worker_port() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "streamscore"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = job["dns_sd_configs"]
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    assert sd["names"] == ["worker"] and "worker" in services
    assert sd["port"] == int(services["worker"]["environment"]["STREAMSCORE_WEB_PORT"])


# --- Grafana ---------------------------------------------------------------------------------


def test_dashboard_queries_name_only_defined_metrics(defined_names: dict[str, str]) -> None:
    dashboard = load_dashboard()
    for panel in iter_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            used = metric_names_in(target["expr"])
            assert used, f"panel {panel['title']!r}: no metric in {target['expr']}"
            unknown = used - defined_names.keys()
            assert not unknown, f"panel {panel['title']!r} uses undefined {unknown}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(<selector>, <label>): the label is no metric.
            selector = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["definition"])
            assert selector, variable["definition"]
            used = metric_names_in(selector.group(1))
            assert used and used <= defined_names.keys(), variable["definition"]


def test_dashboard_covers_every_metric(defined_names: dict[str, str]) -> None:
    used = {
        defined_names[name]
        for panel in iter_panels(load_dashboard()["panels"])
        for target in panel.get("targets", [])
        for name in metric_names_in(target["expr"])
        if name in defined_names
    }
    assert set(METRIC_NAMES) - used == set(), "metrics without a dashboard panel"
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= used


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    panels = list(iter_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables or var.startswith("__"), f"{panel['title']}: ${var}"


def test_grafana_provisioning_matches_compose() -> None:
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    mounts = dict(volume.split(":")[:2] for volume in services["grafana"]["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load(
        (GRAFANA_PROVISIONING / "dashboards" / "streamscore.yml").read_text(encoding="utf-8")
    )["providers"]
    assert providers[0]["options"]["path"] == mounts["./deploy/grafana"]
    datasources = yaml.safe_load(
        (GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )["datasources"]
    (prometheus,) = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert prometheus["url"] == "http://prometheus:9090" and "prometheus" in services


# --- Kubernetes ------------------------------------------------------------------------------


def k8s_docs(name: str) -> list[dict[str, Any]]:
    """Return the non-empty YAML documents of one manifest file."""
    text = (K8S / name).read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def k8s_doc(kind: str) -> dict[str, Any]:
    """Return the single manifest of `kind` under deploy/k8s."""
    (doc,) = [
        doc for path in sorted(K8S.glob("*.yaml")) for doc in k8s_docs(path.name)
        if doc["kind"] == kind
    ]  # fmt: skip
    return doc


K8S_FILES = sorted(path.name for path in K8S.glob("*.yaml"))


def test_k8s_has_the_expected_manifests() -> None:
    kinds = {doc["kind"] for name in K8S_FILES for doc in k8s_docs(name)}
    expected = {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"}
    assert kinds >= expected | {"ServiceMonitor"}
    assert set(K8S_FILES) >= K8S_CRD_FILES


@pytest.mark.parametrize("version", [K8S_MIN_VERSION, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("name", [name for name in K8S_FILES if name not in K8S_CRD_FILES])
def test_k8s_manifest_validates(name: str, version: str) -> None:
    docs = k8s_docs(name)
    assert docs, name
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_deployment_probes_security_and_wiring() -> None:
    deployment = k8s_doc("Deployment")
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 6066}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # Labels: the selector must match the pod template, the Service and the PDB.
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert k8s_doc("Service")["spec"]["selector"].items() <= labels.items()
    pdb_selector = k8s_doc("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert pdb_selector.items() <= labels.items()
    # Config and secrets come from the ConfigMap and Secret of this directory.
    configmaps = {doc["metadata"]["name"] for doc in k8s_docs("configmap.yaml")}
    (env_from,) = container["envFrom"]
    assert env_from["configMapRef"]["name"] in configmaps
    secret = k8s_doc("Secret")
    secret_env = {
        env["name"]: env["valueFrom"]["secretKeyRef"]
        for env in container["env"]
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    assert set(secret_env) == {"STREAMSCORE_REDIS_URL", "STREAMSCORE_KAFKA_SASL_PASSWORD"}
    for ref in secret_env.values():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    # The rules file named in the settings is the key of the mounted rules ConfigMap.
    settings = k8s_configmap_env()
    rules_file = Path(settings["STREAMSCORE_RULES_FILE"])
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == rules_file.parent]
    rules_cm = volumes[mount["name"]]["configMap"]["name"]
    (rules_doc,) = [
        doc for doc in k8s_docs("configmap.yaml") if doc["metadata"]["name"] == rules_cm
    ]
    parse_rules_text(rules_doc["data"][rules_file.name], f"configmap {rules_cm}")
    assert int(settings["STREAMSCORE_WEB_PORT"]) == ports["http"]


def test_servicemonitor_targets_the_service() -> None:
    (monitor,) = k8s_docs("servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    service = k8s_doc("Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"
    # The alerts select job="streamscore", which the operator derives from the Service name.
    assert service["metadata"]["name"] == "streamscore"


# --- Autoscaling on consumer lag: KEDA or an HPA (deploy/k8s/autoscaling/) ------------------

AUTOSCALING = K8S / "autoscaling"
#: KEDA's custom resources: no schema in kubernetes-validate (and none vendored here), so they
#: are checked by hand below, against the constraints of KEDA's CRD that matter to these files
#: (trigger metadata is a map of strings; scaleTargetRef needs a name) and against the
#: Deployment, ConfigMap and Secrets they must agree with.
KEDA_API = "keda.sh/v1alpha1"


def autoscaling_docs(name: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of one file under deploy/k8s/autoscaling."""
    text = (AUTOSCALING / name).read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def keda_doc(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in autoscaling_docs("keda-scaledobject.yaml") if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("version", [K8S_MIN_VERSION, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("name", sorted(p.name for p in AUTOSCALING.glob("*.yaml")))
def test_autoscaling_built_in_kinds_validate(name: str, version: str) -> None:
    docs = [doc for doc in autoscaling_docs(name) if doc["apiVersion"] != KEDA_API]
    assert docs, name
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_keda_scaledobject_scales_the_worker_up_to_the_partition_count() -> None:
    scaled = keda_doc("ScaledObject")
    assert scaled["apiVersion"] == KEDA_API
    spec = scaled["spec"]
    deployment = k8s_doc("Deployment")
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"],
    )  # fmt: skip
    settings = k8s_configmap_env()
    # One worker per input partition at most: the range assignor gives partition N of every
    # input topic to one worker.
    assert spec["maxReplicaCount"] == int(settings["STREAMSCORE_TOPIC_PARTITIONS"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA's CRD: metadata values are strings"
    assert meta["bootstrapServers"] == settings["STREAMSCORE_KAFKA_BOOTSTRAP"]
    assert meta["consumerGroup"] == settings["STREAMSCORE_CONSUMER_GROUP"]
    assert "topic" not in meta  # the lag of every input topic, not one
    assert meta["offsetResetPolicy"] == "earliest"  # the worker's auto_offset_reset
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0

    # The TriggerAuthentication: SASL_SSL with the worker's mechanism and user, its password.
    auth = keda_doc("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    secrets = {
        doc["metadata"]["name"]: doc["stringData"]
        for doc in [k8s_doc("Secret"), keda_doc("Secret")]
    }
    values = {}
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in secrets[ref["name"]], ref
        values[ref["parameter"]] = secrets[ref["name"]][ref["key"]]
    assert set(values) == {"sasl", "tls", "username", "password"}
    keda_sasl = {
        "PLAIN": "plaintext",
        "SCRAM-SHA-256": "scram_sha256",
        "SCRAM-SHA-512": "scram_sha512",
    }
    assert values["sasl"] == keda_sasl[settings["STREAMSCORE_KAFKA_SASL_MECHANISM"]]
    assert values["tls"] == (
        "enable" if "SSL" in settings["STREAMSCORE_KAFKA_SECURITY_PROTOCOL"] else "disable"
    )
    assert values["username"] == settings["STREAMSCORE_KAFKA_SASL_USERNAME"]
    assert values["password"] == k8s_doc("Secret")["stringData"]["STREAMSCORE_KAFKA_SASL_PASSWORD"]


def test_lag_hpa_uses_the_worker_lag_metric_through_the_adapter() -> None:
    docs = autoscaling_docs("hpa-lag.yaml")
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    (adapter,) = [d for d in docs if d["kind"] == "ConfigMap"]
    spec = hpa["spec"]
    assert spec["scaleTargetRef"]["name"] == k8s_doc("Deployment")["metadata"]["name"]
    assert spec["maxReplicas"] == int(k8s_configmap_env()["STREAMSCORE_TOPIC_PARTITIONS"])
    assert spec["minReplicas"] >= 1  # it only sees the lag that running workers report
    (metric,) = spec["metrics"]
    name = metric["external"]["metric"]["name"]
    assert name == "streamscore_consumer_lag_messages" and name in METRIC_NAMES
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["externalRules"]
    assert rule["name"]["as"] == name
    assert metric_names_in(rule["seriesQuery"]) == {name}
    assert "<<.Series>>" in rule["metricsQuery"] and "sum(" in rule["metricsQuery"]
    # The same scaling behaviour as the KEDA alternative: one rebalance at a time going down.
    keda = keda_doc("ScaledObject")["spec"]
    assert spec["behavior"] == keda["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert spec["maxReplicas"] == keda["maxReplicaCount"]


def test_autoscaling_is_not_applied_with_the_base_manifests() -> None:
    # `kubectl apply -f deploy/k8s/` is not recursive: the two autoscalers, which must not
    # both target the Deployment, stay out of it.
    kinds = {doc["kind"] for name in K8S_FILES for doc in k8s_docs(name)}
    assert not kinds & {"HorizontalPodAutoscaler", "ScaledObject", "TriggerAuthentication"}


# --- Environment variables: names are Settings fields, values validate -----------------------


def k8s_configmap_env() -> dict[str, str]:
    """Return the settings ConfigMap's data (the Deployment's envFrom)."""
    (doc,) = [doc for doc in k8s_docs("configmap.yaml") if "rules.yaml" not in doc["data"]]
    return {key: str(value) for key, value in doc["data"].items()}


def compose_env(service: str) -> dict[str, str]:
    """Return a compose service's environment with ${VAR:-default} resolved to defaults."""
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    env = services[service]["environment"]
    return {
        key: re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))
        for key, value in env.items()
    }


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return the Dockerfile's (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, args = stripped.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


def dockerfile_env() -> dict[str, str]:
    """Return the ENV settings of the Dockerfile (KEY=VALUE form)."""
    env: dict[str, str] = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def env_name_sources() -> dict[str, set[str]]:
    """Return every STREAMSCORE_* name set anywhere, by where it is set."""
    deployment = k8s_doc("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    secret = k8s_doc("Secret")
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    sources = {
        "Dockerfile": set(dockerfile_env()),
        "deploy/k8s/configmap.yaml": set(k8s_configmap_env()),
        "deploy/k8s/deployment.yaml": {env["name"] for env in container["env"]},
        "deploy/k8s/secret.example.yaml": set(secret["stringData"]),
    }
    for name, service in services.items():
        sources[f"docker-compose.yml {name}"] = set(service.get("environment", {}))
    return {
        where: {name for name in names if name.startswith(ENV_PREFIX)}
        for where, names in sources.items()
    }


def test_every_streamscore_env_var_is_a_setting() -> None:
    known = SETTINGS_ENV_VARS | EXTRA_ENV_VARS
    for where, names in env_name_sources().items():
        assert names - known == set(), f"{where}: unknown settings {names - known}"
    assert env_name_sources()["docker-compose.yml worker"], "the worker sets no STREAMSCORE_*"


def settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """Build Settings from exactly `env`, as the worker process would."""
    for name in SETTINGS_ENV_VARS | EXTRA_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_compose_worker_env_values_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**dockerfile_env(), **compose_env("worker")}
    env = {key: value for key, value in env.items() if key.startswith(ENV_PREFIX)}
    settings = settings_from_env(monkeypatch, env)
    assert settings.web_host == "0.0.0.0"
    assert settings.kafka_bootstrap == "kafka:9092"
    redis_password = compose_env("redis")["REDISCLI_AUTH"]
    assert settings.redis_url.get_secret_value().startswith(f"redis://:{redis_password}@redis:")


def test_k8s_env_values_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = k8s_doc("Secret")["stringData"]
    env = {**dockerfile_env(), **k8s_configmap_env(), **secret}
    env = {key: value for key, value in env.items() if key.startswith(ENV_PREFIX)}
    settings = settings_from_env(monkeypatch, env)
    assert settings.web_host == "0.0.0.0"
    assert settings.kafka_security_protocol == "SASL_SSL"
    # Redis Cluster settings are spelled out, for whoever points the URL at a cluster.
    assert {"STREAMSCORE_REDIS_CLUSTER", "STREAMSCORE_REDIS_KEY_GROUPS"} <= set(env)
    assert settings.redis_cluster == "auto"


# --- Dockerfile and compose ------------------------------------------------------------------


def exec_form(args: str) -> list[str]:
    """Parse a JSON exec-form argument list."""
    parsed: list[str] = json.loads(args)
    return parsed


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    froms = [args.split()[0] for keyword, args in instructions if keyword == "FROM"]
    assert froms and all(image == "python:3.11-slim" for image in froms)
    final_stage = instructions[
        max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM") :
    ]
    users = [args for keyword, args in final_stage if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    entrypoint = [args for keyword, args in instructions if keyword == "ENTRYPOINT"]
    cmd = [args for keyword, args in instructions if keyword == "CMD"]
    assert exec_form(entrypoint[-1]) == ["streamscore"]
    assert exec_form(cmd[-1]) == ["worker"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "streamscore" in pyproject["project"]["scripts"]
    assert any(keyword == "RUN" and "pip install ." in args for keyword, args in instructions)
    copies = [args.split() for keyword, args in final_stage if keyword == "COPY"]
    copied = {Path(parts[0]).name for parts in copies if not parts[0].startswith("--")}
    assert {"examples", "schemas"} <= copied
    env = dockerfile_env()
    assert env[SCHEMAS_DIR_ENV] == "/app/schemas"
    assert sorted((ROOT / "schemas").glob("*.json")), "COPY schemas/ would copy no schema"
    # The default rules file is the repository's example, copied to /app/examples.
    rules_file = Path(env["STREAMSCORE_RULES_FILE"])
    assert rules_file.parent == Path("/app/examples")
    assert (ROOT / "examples" / rules_file.name).is_file()
    (healthcheck,) = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    probe = exec_form(healthcheck.split(" CMD ", 1)[1])
    assert probe[:2] == ["python", "-c"] and "/healthz" in probe[2]
    compile(probe[2], "HEALTHCHECK", "exec")


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = DOCKERIGNORE.read_text(encoding="utf-8").split()
    assert "*" in patterns, "expected an allow-list .dockerignore"
    included = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    for keyword, args in dockerfile_instructions():
        parts = args.split()
        if keyword == "COPY" and not parts[0].startswith("--from"):
            for source in parts[:-1]:
                assert source.rstrip("/") in included, f"COPY {source} is dockerignored"
    for path in (".git", "tests", "deploy", ".venv"):
        assert path not in included


def test_compose_matches_the_compose_spec() -> None:
    # The compose-spec JSON schema vendored by check-jsonschema (a test dependency), read
    # directly: no Docker engine or compose plugin exists here to run `docker compose config`.
    files = importlib.metadata.files("check-jsonschema") or []
    (schema_file,) = [f for f in files if str(f).endswith("vendor/compose-spec.json")]
    schema = json.loads(Path(str(schema_file.locate())).read_text(encoding="utf-8"))
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(schema).validate(compose)


def test_compose_services() -> None:
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    assert {"kafka", "redis", "worker", "prometheus"} <= services.keys()

    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    kafka_env = {key: str(value) for key, value in kafka["environment"].items()}
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert "localhost:29092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["healthcheck"]["test"]

    redis = services["redis"]
    assert redis["image"] == "redis:7-alpine"
    assert "--requirepass" in redis["command"]
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])

    worker = services["worker"]
    assert worker["build"]["context"] == "."
    assert worker["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert "./examples:/app/examples:ro" in worker["volumes"]
    # The mounted rules file is the repository's example, which must load.
    rules_file = Path(compose_env("worker")["STREAMSCORE_RULES_FILE"])
    assert rules_file.parent == Path("/app/examples")
    load_rules(ROOT / "examples" / rules_file.name)
    probe = worker["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "python", "-c"] and "/readyz" in probe[3]
    compile(probe[3], "worker healthcheck", "exec")

    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_compose_cluster_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--profile cluster`: three cluster-mode nodes, an init that joins them, and a second
    worker on the cluster that shares nothing with `worker` but the inputs."""
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    nodes = [f"redis-node-{i}" for i in (1, 2, 3)]
    cluster_services = {*nodes, "redis-cluster-init", "worker-cluster"}
    for name, service in services.items():
        assert (service.get("profiles") == ["cluster"]) == (name in cluster_services), name
    password = compose_env("redis")["REDISCLI_AUTH"]
    for name in nodes:
        command = [str(arg) for arg in services[name]["command"]]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert "--appendonly" in command and "noeviction" in command
        assert f"{name}-data:/data" in services[name]["volumes"]

    init = services["redis-cluster-init"]
    assert init["depends_on"] == {n: {"condition": "service_healthy"} for n in nodes}
    script = init["command"][0]
    assert "redis-cli --cluster create" in script and "--cluster-replicas 0" in script
    assert all(n in script for n in nodes)
    assert init["restart"] == "no"

    worker = services["worker-cluster"]
    assert worker["depends_on"]["redis-cluster-init"] == {
        "condition": "service_completed_successfully"
    }
    base = {k: v for k, v in dockerfile_env().items() if k.startswith(ENV_PREFIX)}
    single = settings_from_env(monkeypatch, {**base, **compose_env("worker")})
    settings = settings_from_env(monkeypatch, {**base, **compose_env("worker-cluster")})
    url = settings.redis_url.get_secret_value()
    assert url == f"redis://:{password}@" + ",".join(f"{n}:6379" for n in nodes)
    assert settings.redis_cluster == "true" and settings.redis_key_groups == 48
    assert settings.consumer_group != single.consumer_group
    for topic in ("topic_handoffs", "topic_tier_changes", "topic_dead_letter"):
        assert getattr(settings, topic) != getattr(single, topic), topic
    assert settings.input_topics == single.input_topics
