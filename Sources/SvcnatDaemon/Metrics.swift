import CoreMetrics
import Foundation
import Metrics
import Prometheus

/// The daemon's metrics, through swift-metrics with the Prometheus backend. Names follow
/// kube-proxy's where it has the metric; svcnat's own start with `svcnat_`.
final class DaemonMetrics: @unchecked Sendable {
    let registry = PrometheusCollectorRegistry()

    let syncDuration: Metrics.Timer
    let fullSyncDuration: Metrics.Timer
    let partialSyncDuration: Metrics.Timer
    let lastSyncTimestamp: CoreMetrics.Gauge
    let lastQueuedTimestamp: CoreMetrics.Gauge
    let syncFailures: CoreMetrics.Counter
    let services: CoreMetrics.Gauge
    let endpoints: CoreMetrics.Gauge
    let rules: CoreMetrics.Gauge
    let elements: CoreMetrics.Gauge
    let driftRepairs: CoreMetrics.Counter
    let rejectedFiles: CoreMetrics.Gauge
    let lastBatchMessages: CoreMetrics.Gauge
    let changes: CoreMetrics.Counter
    let skippedFrontends: CoreMetrics.Gauge
    let refusedServices: CoreMetrics.Gauge

    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
            .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
            .seconds(1), .seconds(2), .seconds(5), .seconds(10)
        ]
        MetricsSystem.bootstrapInternal(factory)
        syncDuration = Metrics.Timer(label: "kubeproxy_sync_proxy_rules_duration_seconds")
        fullSyncDuration = Metrics.Timer(label: "kubeproxy_sync_full_proxy_rules_duration_seconds")
        partialSyncDuration = Metrics.Timer(label: "kubeproxy_sync_partial_proxy_rules_duration_seconds")
        lastSyncTimestamp = CoreMetrics.Gauge(label: "kubeproxy_sync_proxy_rules_last_timestamp_seconds")
        lastQueuedTimestamp = CoreMetrics.Gauge(label: "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds")
        syncFailures = CoreMetrics.Counter(label: "kubeproxy_sync_proxy_rules_nftables_sync_failures_total")
        services = CoreMetrics.Gauge(label: "svcnat_services")
        endpoints = CoreMetrics.Gauge(label: "svcnat_endpoints")
        rules = CoreMetrics.Gauge(label: "svcnat_rules")
        elements = CoreMetrics.Gauge(label: "svcnat_set_elements")
        driftRepairs = CoreMetrics.Counter(label: "svcnat_drift_repairs_total")
        rejectedFiles = CoreMetrics.Gauge(label: "svcnat_rejected_input_files")
        lastBatchMessages = CoreMetrics.Gauge(label: "svcnat_sync_last_batch_netlink_messages")
        changes = CoreMetrics.Counter(label: "svcnat_sync_changes_total")
        skippedFrontends = CoreMetrics.Gauge(label: "svcnat_skipped_frontends")
        refusedServices = CoreMetrics.Gauge(label: "svcnat_refused_services")
    }

    // The API source, per collection (services, endpointslices, nodes).
    func sourceEvent(_ resource: String) {
        CoreMetrics.Counter(label: "svcnat_source_events_total", dimensions: [("resource", resource)]).increment()
    }
    func sourceList(_ resource: String) {
        CoreMetrics.Counter(label: "svcnat_source_lists_total", dimensions: [("resource", resource)]).increment()
    }
    func sourceError(_ resource: String) {
        CoreMetrics.Counter(label: "svcnat_source_errors_total", dimensions: [("resource", resource)]).increment()
    }
    /// 1 while the collection is listed and watched, 0 while it is stale.
    func sourceUp(_ resource: String, _ up: Bool) {
        CoreMetrics.Gauge(label: "svcnat_source_up", dimensions: [("resource", resource)]).record(up ? 1 : 0)
    }

    func exposition() -> String { registry.emitToString() }
}

extension MetricsSystem {
    /// Bootstraps once per process (tests may build several daemons).
    static func bootstrapInternal(_ factory: MetricsFactory) {
        bootstrapLock.withLock {
            if !bootstrapped { MetricsSystem.bootstrap(factory); bootstrapped = true }
        }
    }
}

private let bootstrapLock = NSLock()
nonisolated(unsafe) private var bootstrapped = false
