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
    let conntrackDumps: CoreMetrics.Gauge
    let flowIndexFlows: CoreMetrics.Gauge
    let flowIndexEvents: CoreMetrics.Gauge
    let networkProgramming: Metrics.Timer
    let endpointChanges: CoreMetrics.Counter
    let endpointChangesPending: CoreMetrics.Gauge
    let serviceChanges: CoreMetrics.Counter
    let serviceChangesPending: CoreMetrics.Gauge

    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
            .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
            .seconds(1), .seconds(2), .seconds(5), .seconds(10)
        ]
        // kube-proxy's buckets for the latency from a change (a Pod or Service edit) to its rules:
        // 0.25 s and 0.5 s, each second to 59, every 5 s to 115, every 30 s to 300.
        factory.durationHistogramBuckets["kubeproxy_network_programming_duration_seconds"] =
            [.milliseconds(250), .milliseconds(500)] + (1...59).map { .seconds($0) }
            + stride(from: 60, through: 115, by: 5).map { .seconds($0) }
            + stride(from: 120, through: 300, by: 30).map { .seconds($0) }
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
        conntrackDumps = CoreMetrics.Gauge(label: "svcnat_conntrack_dumps")
        flowIndexFlows = CoreMetrics.Gauge(label: "svcnat_conntrack_index_flows")
        flowIndexEvents = CoreMetrics.Gauge(label: "svcnat_conntrack_index_events")
        networkProgramming = Metrics.Timer(label: "kubeproxy_network_programming_duration_seconds")
        endpointChanges = CoreMetrics.Counter(label: "kubeproxy_sync_proxy_rules_endpoint_changes_total")
        endpointChangesPending = CoreMetrics.Gauge(label: "kubeproxy_sync_proxy_rules_endpoint_changes_pending")
        serviceChanges = CoreMetrics.Counter(label: "kubeproxy_sync_proxy_rules_service_changes_total")
        serviceChangesPending = CoreMetrics.Gauge(label: "kubeproxy_sync_proxy_rules_service_changes_pending")
        for policy in ["internal", "external"] { noLocalEndpoints(policy, 0) }
    }

    /// Services with that traffic policy Local and no endpoint on this node (kube-proxy's gauge,
    /// despite its `_total` name).
    func noLocalEndpoints(_ policy: String, _ count: Int) {
        CoreMetrics.Gauge(label: "kubeproxy_sync_proxy_rules_no_local_endpoints_total", dimensions: [("traffic_policy", policy)])
            .record(count)
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

    /// The Prometheus text: every metric with its `# HELP` line, then the process's own.
    func exposition() -> String {
        var text = Self.withHelp(registry.emitToString())
        if !text.isEmpty, !text.hasSuffix("\n") { text += "\n" }
        return text + ProcessMetrics.read(startTime: startTime).exposition()
    }

    let startTime = Date().timeIntervalSince1970

    /// Inserts `# HELP name text` before each `# TYPE name ...` line (swift-metrics' labels carry
    /// no help text of their own).
    static func withHelp(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count + 4096)
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# TYPE ") {
                let name = line.dropFirst(7).split(separator: " ").first.map(String.init) ?? ""
                out += "# HELP \(name) \(help[name] ?? "svcnat metric \(name).")\n"
            }
            out += line + "\n"
        }
        return String(out.dropLast())
    }

    static let help: [String: String] = [
        "kubeproxy_sync_proxy_rules_duration_seconds": "SyncProxyRules latency in seconds (full and partial syncs).",
        "kubeproxy_sync_full_proxy_rules_duration_seconds": "SyncProxyRules latency in seconds, for full syncs.",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds": "SyncProxyRules latency in seconds, for partial syncs.",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds": "The last time proxy rules were successfully synced (Unix seconds).",
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": "The last time a sync of proxy rules was queued (Unix seconds).",
        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total":
            "Syncs whose nftables batch the kernel refused or that could not be sent.",
        "kubeproxy_network_programming_duration_seconds":
            "From a change of an EndpointSlice's endpoints (its last-change-trigger-time annotation) to its rules being programmed.",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total": "Endpoint objects (EndpointSlices, Endpoints, Pods) changed and programmed.",
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending": "Endpoint objects changed and not yet programmed.",
        "kubeproxy_sync_proxy_rules_service_changes_total": "Services changed and programmed.",
        "kubeproxy_sync_proxy_rules_service_changes_pending": "Services changed and not yet programmed.",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total":
            "Services with externalTrafficPolicy or internalTrafficPolicy Local and no endpoint on this node, by traffic_policy.",
        "svcnat_services": "Services programmed by the last sync.",
        "svcnat_endpoints": "Endpoints programmed by the last sync.",
        "svcnat_rules": "Rules in svcnat's tables after the last full sync.",
        "svcnat_conntrack_dumps":
            "Conntrack dumps made since the start (each walks the whole conntrack table; the flow index avoids them).",
        "svcnat_conntrack_index_flows": "DNATed UDP flows the conntrack event index holds (-1 without an index).",
        "svcnat_conntrack_index_events": "Conntrack events the flow index took in (the kernel passes on only those of DNATed UDP flows).",
        "svcnat_set_elements": "Set and map elements in svcnat's tables after the last full sync.",
        "svcnat_drift_repairs_total": "Full syncs that repaired changes someone else made to svcnat's tables.",
        "svcnat_rejected_input_files": "Input files (or API objects) rejected; their last good version stays in force.",
        "svcnat_sync_last_batch_netlink_messages": "Netlink messages in the last sync's batch.",
        "svcnat_sync_changes_total": "Changes (rules, chains, sets, elements) sent to the kernel.",
        "svcnat_skipped_frontends": "Frontends (address, protocol, port) one Service claims that another holds.",
        "svcnat_refused_services": "Services the kernel refused; the other Services are programmed.",
        "svcnat_source_events_total": "Watch events received from the API server, by resource.",
        "svcnat_source_lists_total": "Lists of a collection from the API server, by resource.",
        "svcnat_source_errors_total": "Failed lists and watches, by resource.",
        "svcnat_source_up": "1 while the collection is listed and watched, 0 while it is stale, by resource."
    ]
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

/// Prometheus' standard process metrics (as client_golang's process collector gives them to
/// kube-proxy), read from /proc/self at each scrape.
struct ProcessMetrics {
    var cpuSeconds: Double
    var residentBytes: Double
    var virtualBytes: Double
    var openFDs: Int
    var maxFDs: Double
    var startTime: Double

    static func read(startTime: Double) -> ProcessMetrics {
        let stat = (try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8)) ?? ""
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let page = Double(sysconf(Int32(_SC_PAGESIZE)))
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        var m = parse(stat: stat, ticksPerSecond: ticks, pageSize: page)
        m.openFDs = fds
        m.maxFDs = Double(limit.rlim_cur)
        m.startTime = startTime
        return m
    }

    /// From /proc/self/stat: utime and stime (fields 14 and 15, in clock ticks), vsize (23, in
    /// bytes) and rss (24, in pages). The fields are counted after the command's closing
    /// parenthesis, which a command name may itself contain.
    static func parse(stat: String, ticksPerSecond: Double, pageSize: Double) -> ProcessMetrics {
        var m = ProcessMetrics(cpuSeconds: 0, residentBytes: 0, virtualBytes: 0, openFDs: 0, maxFDs: 0, startTime: 0)
        guard let close = stat.lastIndex(of: ")") else { return m }
        let f = stat[stat.index(after: close)...].split(separator: " ")
        // f[0] is field 3 (state).
        func field(_ n: Int) -> Double { n - 3 < f.count ? Double(f[n - 3]) ?? 0 : 0 }
        m.cpuSeconds = (field(14) + field(15)) / max(ticksPerSecond, 1)
        m.virtualBytes = field(23)
        m.residentBytes = field(24) * pageSize
        return m
    }

    func exposition() -> String {
        func metric(_ name: String, _ type: String, _ help: String, _ value: Double) -> String {
            "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        return metric("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpuSeconds)
            + metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", residentBytes)
            + metric("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", virtualBytes)
            + metric("process_open_fds", "gauge", "Number of open file descriptors.", Double(openFDs))
            + metric("process_max_fds", "gauge", "Maximum number of open file descriptors.", maxFDs)
            + metric("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", startTime)
    }
}
