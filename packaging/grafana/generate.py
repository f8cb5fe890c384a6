#!/usr/bin/env python3
"""Write packaging/grafana/sluice-dashboard.json: a Grafana dashboard over
Sluice's Prometheus metrics (src/telemetry/names.rs).

Edit the panels here and rerun; the JSON is committed so operators import it
without running anything. tests/integration/metrics.rs checks that every
metric it queries is in a real broker's exposition.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
INSTANCE = 'instance=~"$instance"'
panels = []
next_id = [1]
y = [0]


def row(title):
    panels.append({"type": "row", "title": title, "collapsed": False, "id": next_id[0],
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]}, "panels": []})
    next_id[0] += 1
    y[0] += 1


def panel(title, kind, targets, unit, w=8, h=8, x=0, description="", stack=False):
    """targets: [(expr, legend)]"""
    p = {
        "id": next_id[0], "type": kind, "title": title, "description": description,
        "datasource": DS, "gridPos": {"h": h, "w": w, "x": x, "y": y[0]},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(65 + i)}
                    for i, (expr, legend) in enumerate(targets)],
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
            "stacking": {"mode": "normal" if stack else "none"}}
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["mean", "max", "lastNotNull"]},
                        "tooltip": {"mode": "multi"}}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    next_id[0] += 1
    panels.append(p)
    return p


def line(cells):
    """Lay out a row of (title, kind, targets, unit, kwargs) panels of equal width."""
    width = 24 // len(cells)
    for i, (title, kind, targets, unit, extra) in enumerate(cells):
        panel(title, kind, targets, unit, w=width, x=i * width, **extra)
    y[0] += 8


def by(metric, labels, rate=True, window="$__rate_interval"):
    inner = f"rate({metric}{{{INSTANCE}}}[{window}])" if rate else f"{metric}{{{INSTANCE}}}"
    return f"sum by ({labels}) ({inner})"


def quantile(q, metric, labels):
    return (f"histogram_quantile({q}, sum by (le, {labels}) "
            f"(rate({metric}_bucket{{{INSTANCE}}}[$__rate_interval])))")


row("Overview")
line([
    ("Ready", "stat", [(f"min(sluice_ready{{{INSTANCE}}})", "ready")], "none", {}),
    ("Connections", "stat", [(f"sum(sluice_kafka_connections{{{INSTANCE}}})", "connections")], "none", {}),
    ("Disk used", "gauge", [(f"max(sluice_disk_usage_ratio{{{INSTANCE}}})", "disk")], "percentunit",
     {"description": "Above 0.75 retention deletes expired segments at once; above 0.85 the oldest go regardless; above 0.90 appends are refused."}),
    ("Recovery at last start", "stat", [(f"max(sluice_recovery_duration_seconds{{{INSTANCE}}})", "duration"),
                                        (f"sum(sluice_recovery_truncated_bytes{{{INSTANCE}}})", "truncated")], "s", {}),
])
row("Kafka requests")
line([
    ("Requests / s by API", "timeseries", [(by("sluice_kafka_requests_total", "api"), "{{api}}")], "reqps", {}),
    ("Request latency p99 by API", "timeseries",
     [(quantile(0.99, "sluice_kafka_request_duration_seconds", "api"), "{{api}} p99")], "s",
     {"description": "From reading the request to writing its response; acks=all Produce includes the group-commit fdatasync; Fetch includes the long-poll wait."}),
    ("Errors / s by API and error", "timeseries",
     [(by("sluice_kafka_request_errors_total", "api, error"), "{{api}} {{error}}")], "reqps", {}),
])
line([
    ("Request latency p50 by API", "timeseries",
     [(quantile(0.5, "sluice_kafka_request_duration_seconds", "api"), "{{api}} p50")], "s", {}),
    ("Connections accepted / refused", "timeseries",
     [(by("sluice_kafka_connections_accepted_total", "shard"), "accepted shard {{shard}}"),
      (by("sluice_kafka_connections_refused_total", "shard"), "refused shard {{shard}}")], "cps", {}),
])
line([
    ("Request budget in use", "timeseries",
     [(f"max(sluice_kafka_queued_request_bytes{{{INSTANCE}}})", "queued request bytes")], "bytes",
     {"description": "Bytes of requests being read or served, against kafka.queued_requests_max_bytes; at the limit connections stop reading until requests finish."}),
    ("Connections waiting for the request budget", "timeseries",
     [(f"max(sluice_kafka_connections_waiting_for_request_budget{{{INSTANCE}}})", "waiting")], "none",
     {"description": "Connections whose next request waits for kafka.queued_requests_max_bytes; steadily above 0 means the budget is too small for the load, or clients are stalling large requests."}),
])
row("Topics")
line([
    ("Bytes in / s by topic", "timeseries", [(by("sluice_topic_bytes_in_total", "topic"), "{{topic}}")], "Bps", {"stack": True}),
    ("Bytes out / s by topic", "timeseries", [(by("sluice_topic_bytes_out_total", "topic"), "{{topic}}")], "Bps", {"stack": True}),
    ("Records in / out per s", "timeseries",
     [(by("sluice_topic_records_in_total", "topic"), "in {{topic}}"),
      (by("sluice_topic_records_out_total", "topic"), "out {{topic}}")], "ops", {}),
])
row("Group commit")
line([
    ("fdatasync latency p50 / p99", "timeseries",
     [(quantile(0.5, "sluice_log_fsync_duration_seconds", "shard"), "p50 shard {{shard}}"),
      (quantile(0.99, "sluice_log_fsync_duration_seconds", "shard"), "p99 shard {{shard}}")], "s", {}),
    ("Bytes per fdatasync (mean)", "timeseries",
     [(f"{by('sluice_log_fsync_size_bytes_sum', 'shard')} / {by('sluice_log_fsync_size_bytes_count', 'shard')}",
       "shard {{shard}}")], "bytes", {}),
    ("Producers released per fdatasync (mean)", "timeseries",
     [(f"{by('sluice_log_fsync_waiters_sum', 'shard')} / {by('sluice_log_fsync_waiters_count', 'shard')}",
       "shard {{shard}}")], "none", {"description": "acks=all appends acknowledged by one fdatasync: the group-commit fan-in."}),
])
line([
    ("Flush queue depth", "timeseries",
     [(by("sluice_log_flush_queue_depth", "shard", rate=False), "shard {{shard}}")], "none", {}),
    ("Bytes not yet durable", "timeseries",
     [(by("sluice_log_unflushed_bytes", "shard", rate=False), "shard {{shard}}")], "bytes", {}),
    ("Commit-log writes and fdatasyncs / s", "timeseries",
     [(by("sluice_log_writes_total", "shard"), "writes shard {{shard}}"),
      (by("sluice_log_fsyncs_total", "shard"), "fdatasyncs shard {{shard}}"),
      (by("sluice_log_written_bytes_total", "shard"), "bytes shard {{shard}}")], "ops", {}),
])
row("Shards and io_uring")
line([
    ("Shard busy ratio", "timeseries",
     [(by("sluice_shard_busy_ratio", "shard", rate=False), "shard {{shard}}")], "percentunit", {}),
    ("io_uring SQEs / CQEs per s", "timeseries",
     [(by("sluice_io_uring_submissions_total", "shard, ring"), "submitted {{ring}} {{shard}}"),
      (by("sluice_io_uring_completions_total", "shard, ring"), "completed {{ring}} {{shard}}")], "ops", {}),
    ("io_uring queue full / s", "timeseries",
     [(by("sluice_io_uring_queue_full_total", "shard, ring"), "{{ring}} shard {{shard}}")], "ops", {}),
])
line([
    ("Partitions per shard", "timeseries",
     [(by("sluice_shard_partitions", "shard", rate=False), "shard {{shard}}")], "none", {}),
    ("Segments per shard", "timeseries",
     [(by("sluice_shard_segments", "shard", rate=False), "shard {{shard}}")], "none", {}),
    ("Log bytes per shard", "timeseries",
     [(by("sluice_shard_log_bytes", "shard", rate=False), "shard {{shard}}")], "bytes", {"stack": True}),
])
row("Retention and rejections")
line([
    ("Segments deleted / min", "timeseries",
     [(f"60 * {by('sluice_retention_deleted_segments_total', 'reason')}", "{{reason}}")], "none", {}),
    ("Bytes deleted / s", "timeseries",
     [(by("sluice_retention_deleted_bytes_total", "shard"), "shard {{shard}}")], "Bps", {}),
    ("Appends rejected / s", "timeseries",
     [(by("sluice_appends_rejected_total", "reason"), "{{reason}}")], "ops", {}),
])
row("Log compaction")
line([
    ("Bytes read / written by the cleaner per s", "timeseries",
     [(by("sluice_compaction_read_bytes_total", "shard"), "read, shard {{shard}}"),
      (by("sluice_compaction_written_bytes_total", "shard"), "written, shard {{shard}}")], "Bps",
     {"description": "Both count against storage.cleaner_io_max_bytes_per_second."}),
    ("Records removed / s", "timeseries",
     [(by("sluice_compaction_removed_records_total", "shard"), "shard {{shard}}")], "ops", {}),
    ("Pass duration p50 / p99", "timeseries",
     [(quantile(0.5, "sluice_compaction_pass_duration_seconds", "shard"), "p50 shard {{shard}}"),
      (quantile(0.99, "sluice_compaction_pass_duration_seconds", "shard"), "p99 shard {{shard}}")], "s", {}),
])
line([
    ("Dirty ratio by partition (top 20)", "timeseries",
     [(f"topk(20, sluice_compaction_dirty_ratio{{{INSTANCE}}})", "{{topic}}/{{partition}}")], "percentunit",
     {"description": "Share of a compacted partition not yet cleaned; a pass starts above min.cleanable.dirty.ratio."}),
    ("Compaction delay by partition (top 20)", "timeseries",
     [(f"topk(20, sluice_compaction_delay_seconds{{{INSTANCE}}})", "{{topic}}/{{partition}}")], "s",
     {"description": "Age of the partition's oldest uncleaned batch when the cleaner last looked (Kafka's max-compaction-delay-secs); compare with max.compaction.lag.ms."}),
])
row("Consumer groups")
line([
    ("Lag by group and topic", "timeseries",
     [(by("sluice_consumer_group_lag", "group, topic", rate=False), "{{group}} {{topic}}")], "none", {"stack": True}),
    ("Lag by partition (top 20)", "table",
     [(f"topk(20, sluice_consumer_group_lag{{{INSTANCE}}})", "{{group}} {{topic}}/{{partition}}")], "none", {}),
])

dashboard = {
    "title": "Sluice",
    "uid": "sluice-broker",
    "description": "Sluice broker: Kafka requests, topics, group commit, shards, retention, log compaction, consumer lag.",
    "tags": ["sluice", "kafka"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "30s",
    "time": {"from": "now-1h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        {"name": "instance", "type": "query", "datasource": DS, "label": "Broker",
         "query": "label_values(sluice_up, instance)", "includeAll": True, "multi": True,
         "current": {"text": "All", "value": "$__all"}, "refresh": 2},
    ]},
    "panels": panels,
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sluice-dashboard.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
print(f"wrote {out}: {len(panels)} panels")
