import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NFTModel
import SvcnatModel

/// The daemon's HTTP side: /metrics, /healthz and /livez, and kube-proxy's per-Service health
/// check node ports. What they report is set from the sync queue and read from NIO's threads,
/// under one lock.
final class NodeEndpoints: @unchecked Sendable {
    typealias Response = (HTTPResponseStatus, String, String)

    let metrics: DaemonMetrics
    let http: HTTPServer
    let metricsAddress: String
    let healthzAddress: String
    /// What /healthz names as the source.
    let sourceName: String
    /// A sync this old or older makes /healthz unhealthy.
    let staleAfter: Double
    /// The collections the source cannot see now, with why (the API source sets it before
    /// `listen`; a folder has none).
    var sourceProblems: @Sendable () -> [String: String] = { [:] }
    /// kube-proxy's `nodeEligible`: false while this node's Node is being deleted.
    var nodeEligible: @Sendable () -> Bool = { true }
    private let started = Date()

    private let lock = NSLock()
    private var lastSuccess: Date?
    private var lastError: String?
    private var rejected: [String: String] = [:]
    private var skipped: [String] = []
    private var refused: [String: String] = [:]
    /// healthCheckNodePort -> the Service (ns, name) and its endpoints on this node.
    private var serviceHealth: [UInt16: (namespace: String, name: String, local: Int)] = [:]
    /// Which health check port each Service has (sync queue only).
    private var healthPortOfService: [String: UInt16] = [:]

    init(
        http: HTTPServer, metrics: DaemonMetrics, metricsAddress: String, healthzAddress: String, sourceName: String,
        staleAfter: Double
    ) {
        self.http = http
        self.metrics = metrics
        self.metricsAddress = metricsAddress
        self.healthzAddress = healthzAddress
        self.sourceName = sourceName
        self.staleAfter = staleAfter
    }

    /// Listens on both addresses; "" serves nothing there (kube-proxy's way to turn one off). A
    /// bind that fails names its flag and its address.
    func listen() throws {
        func bind(_ flag: String, _ address: String, _ handler: @escaping HTTPServer.Handler) throws {
            guard !address.isEmpty else { return }
            do { try http.listen(address, handler: handler) } catch {
                throw HTTPServerError(message: "\(flag) \(address): cannot listen there: \(Self.reason(error))")
            }
        }
        try bind("--metrics-bind-address", metricsAddress) { [weak self] r in
            self?.serveMetrics(r.path) ?? (.serviceUnavailable, "text/plain", "")
        }
        try bind("--healthz-bind-address", healthzAddress) { [weak self] r in
            self?.serveHealth(r) ?? (.serviceUnavailable, "text/plain", "")
        }
    }

    /// "Address already in use" rather than NIO's call and errno dump.
    static func reason(_ error: Error) -> String {
        if let e = error as? IOError { return String(cString: strerror(e.errnoCode)) }
        return "\(error)"
    }

    func syncSucceeded() {
        lock.withLock {
            lastSuccess = Date(); lastError = nil
        }
    }
    func syncFailed(_ error: String) { lock.withLock { lastError = error } }
    func setRejected(_ files: [String: String]) { lock.withLock { rejected = files } }
    /// Frontends a Service claims that another Service holds (`Conflict`), listed in /healthz.
    func setSkipped(_ claims: [String]) { lock.withLock { skipped = claims } }
    /// Services the kernel refused (left out, the rest programmed), listed in /healthz.
    func setRefused(_ services: [String: String]) { lock.withLock { refused = services } }

    /// kube-proxy's per-Service health check servers: for each LoadBalancer Service with
    /// externalTrafficPolicy Local and a healthCheckNodePort, an HTTP server on that port of the
    /// node answering 200 with the number of this node's endpoints, or 503 when there are none,
    /// so load balancers send traffic only to nodes that can serve it. `services` are the
    /// Services a sync recomputed (all of them when `replacingAll`).
    func updateHealthChecks(_ services: [String: [ServicePortState]], replacingAll: Bool, onError: (String) -> Void) {
        if replacingAll { healthPortOfService = [:] }
        var table = lock.withLock { replacingAll ? [:] : serviceHealth }
        for (key, ports) in services {
            if let old = healthPortOfService.removeValue(forKey: key) { table[old] = nil }
            guard let first = ports.first(where: { $0.healthCheckNodePort != nil }), let port = first.healthCheckNodePort else { continue }
            let local = ports.filter { $0.healthCheckNodePort == port }.map(\.localReadyCount).max() ?? 0
            table[port] = (first.name.namespace, first.name.name, local)
            healthPortOfService[key] = port
        }
        lock.withLock { serviceHealth = table }
        let wanted = Set(table.keys.map { "0.0.0.0:\($0)" })
        let running = http.addresses.filter { $0.hasPrefix("0.0.0.0:") && $0 != healthzAddress && $0 != metricsAddress }
        for gone in running.subtracting(wanted) { http.close(gone) }
        for address in wanted.subtracting(running).sorted() {
            let port = UInt16(address.split(separator: ":").last!)!
            do {
                try http.listen(address) { [weak self] _ in self?.serveServiceHealth(port) ?? (.serviceUnavailable, "text/plain", "") }
            } catch {
                onError("health check node port \(port): cannot listen: \(error)")
            }
        }
    }

    private func serveServiceHealth(_ port: UInt16) -> Response {
        guard let s = lock.withLock({ serviceHealth[port] }) else { return (.notFound, "text/plain", "not found\n") }
        let body =
            JSON.object([
                ("service", .object([("namespace", .string(s.namespace)), ("name", .string(s.name))])),
                ("localEndpoints", .number(s.local)),
                ("serviceProxyHealthy", .bool(true))
            ]).text() + "\n"
        return (s.local > 0 ? .ok : .serviceUnavailable, "application/json", body)
    }

    static func rfc3339(_ d: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: d)
    }

    /// /metrics, and kube-proxy's /proxyMode (which says "nftables").
    private func serveMetrics(_ path: String) -> Response {
        if path == "/proxyMode" { return (.ok, "text/plain", "nftables") }
        guard path == "/metrics" else { return (.notFound, "text/plain", "not found\n") }
        return (.ok, "text/plain; version=0.0.4", metrics.exposition())
    }

    /// /healthz: 200 while the last sync succeeded and syncs are recent; 503 with the reason
    /// otherwise. Rejected input files are listed either way (their last good version serves).
    /// The details (file paths, the offending line, error text, which can quote a manifest)
    /// go only to the node itself; another host learns what failed, and counts.
    private func serveHealth(_ request: HTTPServer.Request) -> Response {
        switch request.path {
        case "/livez": return (.ok, "text/plain", "ok\n")
        case "/healthz":
            let (success, error, rejected, skipped, refused) = lock.withLock {
                (lastSuccess, lastError, self.rejected, self.skipped, self.refused)
            }
            let problems = sourceProblems()
            let details = request.fromLoopback
            var reason: String?
            if !problems.isEmpty {
                // The rules keep serving, but they may be out of date.
                reason =
                    "source stale: "
                    + problems.sorted { $0.key < $1.key }.map { details ? "\($0.key): \($0.value)" : $0.key }.joined(separator: "; ")
            } else if !nodeEligible() {
                reason = "this node is being deleted (nodeEligible false)"
            } else if let error {
                reason = details ? "last sync failed: \(error)" : "last sync failed"
            } else if let success {
                if Date().timeIntervalSince(success) > staleAfter { reason = "no successful sync for more than \(Int(staleAfter)) s" }
            } else {
                reason = "no sync has completed yet"
            }
            var fields: [(String, JSON)] = [
                ("status", .string(reason == nil ? "ok" : "unhealthy")),
                ("reason", reason.map { .string($0) } ?? .null),
                ("lastSuccessfulSync", success.map { .string(Self.rfc3339($0)) } ?? .null),
                // kube-proxy's own fields, for tools that read them.
                ("lastUpdated", .string(Self.rfc3339(success ?? started))),
                ("currentTime", .string(Self.rfc3339(Date()))),
                ("nodeEligible", .bool(nodeEligible()))
            ]
            if details {
                let files = rejected.sorted { $0.key < $1.key }.map {
                    JSON.object([("file", .string($0.key)), ("error", .string($0.value))])
                }
                fields += [
                    ("source", .string(sourceName)), ("rejectedFiles", .array(files)),
                    ("skippedFrontends", .array(skipped.map { .string($0) }))
                ]
            } else {
                fields += [
                    ("rejectedFiles", .number(rejected.count)), ("skippedFrontends", .number(skipped.count)),
                    ("refusedServices", .number(refused.count)),
                    ("details", .string("on the node (127.0.0.1) and in the log"))
                ]
            }
            return (reason == nil ? .ok : .serviceUnavailable, "application/json", JSON.object(fields).text() + "\n")
        default: return (.notFound, "text/plain", "not found\n")
        }
    }
}
