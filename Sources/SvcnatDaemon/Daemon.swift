import Dispatch
import Glibc
import Foundation
import Logging
import NFNetlink
import NIOCore
import NIOHTTP1
import NIOPosix
import SvcnatCore
import SvcnatKube
import SvcnatModel
import SvcnatSources

public struct DaemonConfig: Sendable {
    public var proxy: ProxyConfig
    /// The folder of manifests, or "" when the Kubernetes API is the source.
    public var manifests: String
    /// The API server, when it is the source.
    public var api: APIConfig?
    public var minSyncPeriod: Duration
    public var syncPeriod: Duration
    public var metricsAddress: String
    public var healthzAddress: String
    public var cleanupOnExit: Bool
    /// How often the ruleset generation id is checked for changes made by others.
    public var driftCheckPeriod: Duration = .milliseconds(500)

    public init(proxy: ProxyConfig, manifests: String, minSyncPeriod: Duration = .seconds(1), syncPeriod: Duration = .seconds(3600),
                metricsAddress: String = "127.0.0.1:10249", healthzAddress: String = "0.0.0.0:10256", cleanupOnExit: Bool = false) {
        self.proxy = proxy
        self.manifests = manifests
        self.minSyncPeriod = minSyncPeriod
        self.syncPeriod = syncPeriod
        self.metricsAddress = metricsAddress
        self.healthzAddress = healthzAddress
        self.cleanupOnExit = cleanupOnExit
    }
}

/// `svcnat run`: keeps the kernel in step with a folder of manifests, or with the Kubernetes
/// API (Services, EndpointSlices and this node's Node, listed and watched).
///
/// Everything that touches state runs on one serial queue. A sync plans from a cached view of
/// what svcnat last wrote while the kernel's generation id says nobody else committed since;
/// otherwise (drift, SIGHUP, --sync-period) it reads the table back and repairs it.
public final class Daemon: @unchecked Sendable {
    let config: DaemonConfig
    let queue = DispatchQueue(label: "svcnat.sync")
    let log: Logger
    let metrics = DaemonMetrics()
    let store: ManifestStore
    let nft: NFTables
    let kernel: NetlinkKernel
    private var watcher: DirectoryWatcher?
    private var timers: [DispatchSourceTimer] = []
    private var signals: [DispatchSourceSignal] = []
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private lazy var http = HTTPServer(group: group)

    // Sync state (queue only).
    /// What svcnat last wrote, port by port; valid while the kernel's generation is
    /// `cacheGeneration`.
    private var incremental: [IPFamily: IncrementalState]?
    private var cacheGeneration: UInt32?
    private var lastSyncEnd: ContinuousClock.Instant?
    private var syncScheduled = false
    private var pendingFull = false
    private var pendingReason = "start"
    private var failures = 0
    private let clock = ContinuousClock()

    // Health (read from HTTP threads under the lock).
    private let healthLock = NSLock()
    private var lastSuccess: Date?
    private var lastError: String?
    private var rejectedSummary: [String: String] = [:]
    /// healthCheckNodePort -> the Service (ns, name) and its endpoints on this node.
    private var serviceHealth: [UInt16: (namespace: String, name: String, local: Int)] = [:]
    /// Which health check port each Service has (queue only).
    private var healthPortOfService: [String: UInt16] = [:]
    /// The zone of this node's Node object (its topology label), when --node-zone is not given.
    private var nodeZone: String?
    /// The proxy settings in force: the flags, with the Node's zone filled in.
    private var proxy: ProxyConfig {
        var p = config.proxy
        if p.zone == nil { p.zone = nodeZone }
        return p
    }
    // The API source (queue only, but `sourceProblems`, under healthLock).
    private var reflectorTasks: [Task<Void, Never>] = []
    private var apiClient: APIClient?
    private var resources: [Resource] = []
    private var listed = Set<String>()
    /// Whether the source has given a complete view (at once for a folder; after the first
    /// list of every collection for the API). No sync runs before.
    private var sourceReady = false
    private var sourceProblems: [String: String] = [:]
    private var exitSemaphore = DispatchSemaphore(value: 0)
    private var exitCode: Int32 = 0

    public init(config: DaemonConfig, logger: Logger) throws {
        self.config = config
        self.log = logger
        self.store = ManifestStore(root: config.manifests)
        self.nft = try NFTables()
        self.kernel = NetlinkKernel(nft)
    }

    /// Starts everything and blocks until SIGTERM or SIGINT; returns the exit code.
    public func run() throws -> Int32 {
        if config.api == nil {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: config.manifests, isDirectory: &isDir), isDir.boolValue else {
                throw InputError(file: config.manifests, message: "--manifests must name a folder")
            }
        }
        let client = try config.api.map(APIClient.init)
        try http.listen(config.metricsAddress) { [weak self] path in self?.serveMetrics(path) ?? (.serviceUnavailable, "text/plain", "") }
        try http.listen(config.healthzAddress) { [weak self] path in self?.serveHealth(path) ?? (.serviceUnavailable, "text/plain", "") }
        let source = config.api.map { "the API server \($0.server) (\($0.origin))" } ?? "manifests \(config.manifests)"
        log.info("svcnat run: \(source), table ip \(config.proxy.table), metrics on \(config.metricsAddress), health on \(config.healthzAddress)")

        if let client {
            queue.sync { startReflectors(client) }
        } else {
            queue.sync {
                store.loadAll()
                reportInput()
            }
            watcher = try DirectoryWatcher(root: config.manifests) { [weak self] paths in
                guard let self else { return }
                self.queue.async {
                    if self.store.reload(paths) {
                        self.reportInput()
                        self.requestSync(full: false, reason: "manifests changed")
                    }
                }
            }
            queue.async {
                self.sourceReady = true
                self.requestSync(full: true, reason: "start")
            }
        }
        startTimer(every: config.syncPeriod) { [weak self] in self?.requestSync(full: true, reason: "sync period") }
        startTimer(every: config.driftCheckPeriod) { [weak self] in self?.checkDrift() }
        handle(SIGHUP) { [weak self] in self?.requestSync(full: true, reason: "SIGHUP") }
        handle(SIGTERM) { [weak self] in self?.stop(signal: "SIGTERM") }
        handle(SIGINT) { [weak self] in self?.stop(signal: "SIGINT") }

        exitSemaphore.wait()
        for t in reflectorTasks { t.cancel() }
        if let client { Self.blocking { await client.shutdown() } }
        watcher?.stop()
        http.close()
        try? group.syncShutdownGracefully()
        return exitCode
    }

    /// Runs async work to its end from synchronous code (shutdown only).
    static func blocking(_ work: @escaping @Sendable () async -> Void) {
        let done = DispatchSemaphore(value: 0)
        Task { await work(); done.signal() }
        done.wait()
    }

    // MARK: the API source (queue only)

    /// One reflector per collection; the first sync waits until each has listed once, so a
    /// half-known cluster is never programmed and nothing is deleted while a list loads.
    private func startReflectors(_ client: APIClient) {
        apiClient = client
        resources = [.services, .endpointSlices] + (config.proxy.nodeName.map { [Resource.node($0)] } ?? [])
        healthLock.withLock { for r in resources { sourceProblems[r.name] = "not listed yet" } }
        for r in resources { metrics.sourceUp(r.name, false) }
        for r in resources {
            let reflector = Reflector(client: client, resource: r, onChange: { [weak self] change in
                guard let self else { return }
                self.queue.async { self.apply(change, of: r) }
            }, onStatus: { [weak self] status in
                guard let self else { return }
                self.queue.async { self.note(status, of: r) }
            })
            reflectorTasks.append(Task { await reflector.run() })
        }
    }

    private func apply(_ change: Reflector.Change, of r: Resource) {
        let prefix = "api:\(r.name):"
        var changed = false
        var nodes: [APIObjects.Object] = []
        switch change {
        case .replaced(let objects, let kept):
            let keep = Set(objects.map { prefix + $0.key } + kept.map { prefix + $0 })
            for s in store.sources(withPrefix: prefix) where !keep.contains(s) { changed = store.put(s, nil) || changed }
            for o in objects { changed = store.put(prefix + o.key, o.state) || changed }
            nodes = objects
        case .put(let o):
            changed = store.put(prefix + o.key, o.state)
            nodes = [o]
            metrics.sourceEvent(r.name)
        case .deleted(let o):
            changed = store.put(prefix + o.key, nil)
            metrics.sourceEvent(r.name)
        }
        if r.kind == "Node", let node = nodes.first?.node, node.zone != nodeZone {
            log.info("node \(node.name): zone \(node.zone ?? "none"), addresses \(node.addresses.joined(separator: ", "))")
            nodeZone = node.zone
            if config.proxy.zone == nil { requestSync(full: true, reason: "node zone changed") }
        }
        if changed { requestSync(full: false, reason: "\(r.name) changed") }
    }

    private func note(_ status: Reflector.Status, of r: Resource) {
        switch status {
        case .listed(let n, let rv):
            log.info("source: listed \(n) \(r.name) at resourceVersion \(rv)")
            healthLock.withLock { sourceProblems[r.name] = nil }
            metrics.sourceList(r.name)
            metrics.sourceUp(r.name, true)
            listed.insert(r.name)
            if !sourceReady && listed.count == resources.count {
                sourceReady = true
                requestSync(full: true, reason: "initial lists complete")
            }
        case .watching(let rv):
            log.debug("source: watching \(r.name) from resourceVersion \(rv)")
            healthLock.withLock { sourceProblems[r.name] = nil }
            metrics.sourceUp(r.name, true)
        case .relisting(let reason):
            log.warning("source: \(r.name): \(reason); listing again")
        case .failed(let message, let retry):
            log.error("source: \(message); the last good rules stay in force; retrying in \(String(format: "%.1f", retry)) s")
            healthLock.withLock { sourceProblems[r.name] = message }
            metrics.sourceError(r.name)
            metrics.sourceUp(r.name, false)
        case .rejected(let errors):
            for e in errors { log.warning("source: \(r.name): skipped an object: \(e)") }
        }
    }

    private func stop(signal: String) {
        queue.async {
            for t in self.timers { t.cancel() }
            if self.config.cleanupOnExit {
                do {
                    let removed = try Reconciler(config: self.config.proxy, kernel: self.kernel).cleanup()
                    let tables = removed.isEmpty ? "found no table ip \(self.config.proxy.table)"
                        : "removed " + removed.map { "table \($0.rawValue) \(self.config.proxy.table)" }.joined(separator: " and ")
                    self.log.info("\(signal): \(tables)")
                } catch {
                    self.log.error("\(signal): cleanup failed: \(error)")
                    self.exitCode = 1
                }
            } else {
                self.log.info("\(signal): stopping; the rules stay in place and keep serving")
            }
            self.exitSemaphore.signal()
        }
    }

    private func handle(_ sig: Int32, _ action: @escaping @Sendable () -> Void) {
        signal(sig, SIG_IGN)
        let s = DispatchSource.makeSignalSource(signal: sig, queue: queue)
        s.setEventHandler(handler: action)
        s.resume()
        signals.append(s)
    }

    private func startTimer(every period: Duration, _ action: @escaping @Sendable () -> Void) {
        let t = DispatchSource.makeTimerSource(queue: queue)
        let ns = Int(period.components.seconds) * 1_000_000_000 + Int(period.components.attoseconds / 1_000_000_000)
        t.schedule(deadline: .now() + .nanoseconds(ns), repeating: .nanoseconds(ns), leeway: .milliseconds(20))
        t.setEventHandler(handler: action)
        t.resume()
        timers.append(t)
    }

    // MARK: syncing (queue only)

    /// Runs a sync as soon as --min-sync-period allows; requests arriving meanwhile join it.
    func requestSync(full: Bool, reason: String) {
        dispatchPrecondition(condition: .onQueue(queue))
        // Nothing is programmed from a half-known source (the API before its first lists).
        guard sourceReady else { return }
        pendingFull = pendingFull || full
        pendingReason = reason
        metrics.lastQueuedTimestamp.record(Date().timeIntervalSince1970)
        guard !syncScheduled else { return }
        syncScheduled = true
        var delay = Duration.zero
        if let last = lastSyncEnd {
            let next = last + config.minSyncPeriod
            let now = clock.now
            if next > now { delay = next - now }
        }
        let ms = Int(delay.components.seconds) * 1000 + Int(delay.components.attoseconds / 1_000_000_000_000_000)
        queue.asyncAfter(deadline: .now() + .milliseconds(ms)) { [self] in
            syncScheduled = false
            let full = pendingFull
            pendingFull = false
            sync(full: full, reason: pendingReason)
        }
    }

    private func checkDrift() {
        guard !syncScheduled else { return }
        guard let gen = try? nft.generation() else { return }
        if cacheGeneration != gen {
            requestSync(full: true, reason: "ruleset generation changed (\(cacheGeneration.map(String.init) ?? "unknown") -> \(gen))")
        }
    }

    func sync(full requestedFull: Bool, reason: String) {
        let start = clock.now
        // A full sync's ruleset, transaction and batch are large and short-lived: once they are
        // gone, hand the pages back.
        var wasFull = true
        defer { if wasFull { releaseFreeMemory() } }
        do {
            let gen = try nft.generation()
            let txs: [Transaction]
            var partial = !requestedFull && incremental != nil && cacheGeneration == gen
            var counts: (services: Int, endpoints: Int)
            var flows: (deleted: Int, warning: String?) = (0, nil)
            // Only the Services the changed files touch are recomputed, per family.
            let dirty = store.takeDirty()
            var ports: [IPFamily: [String: [ServicePortState]]] = [:]
            if partial {
                for family in IPFamily.allCases {
                    ports[family] = [:]
                    for key in dirty { ports[family, default: [:]][key] = store.ports(ofService: key, nodeName: proxy.nodeName, zone: proxy.zone, family: family) }
                    // A family whose table was not needed at the last full sync and now is: a full sync makes it.
                    if incremental![family] == nil, ports[family, default: [:]].values.contains(where: { !$0.isEmpty }) { partial = false }
                }
            }
            if partial {
                wasFull = false
                var changes: [StaleFlows.Change] = []
                var planned: [Transaction] = []
                // Updated in place: a copy of a 10,000-port state would cost more than the change.
                for family in incremental!.keys.sorted() {
                    changes.append(.init(before: StaleFlows.udpFrontends(incremental![family]!.states(ofServices: dirty)),
                                         after: StaleFlows.udpFrontends(ports[family, default: [:]].values.flatMap { $0 })))
                    planned.append(incremental![family]!.update(ports[family, default: [:]]))
                }
                txs = planned.filter { !$0.isEmpty }
                updateHealthChecks(ports.values.reduce(into: [:]) { all, byKey in all.merge(byKey) { $0 + $1 } }, replacingAll: false)
                cacheGeneration = nil
                let commits = try kernel.apply(txs)
                try noteGeneration(commits: commits, before: gen)
                flows = Reconciler.deleteStaleFlows(kernel, changes)
                let incs = incremental!.values
                counts = (incs.map(\.serviceCount).max() ?? 0, incs.reduce(0) { $0 + $1.endpointCount })
                if let gone = incremental!.first(where: { !proxy.needsTable($0.key, hasServices: $0.value.serviceCount > 0) })?.key {
                    // The family's last Service is gone: a full sync removes its table.
                    queue.async { [weak self] in self?.requestSync(full: true, reason: "no \(gone.rawValue) Service left") }
                }
            } else {
                incremental = nil
                cacheGeneration = nil
                let result = try Reconciler(config: proxy, kernel: kernel).reconcile(store.state)
                txs = result.transactions
                try noteGeneration(commits: result.commits, before: gen)
                flows = (result.flowsDeleted, result.flowWarning)
                var states: [IPFamily: IncrementalState] = [:]
                for f in result.families where f.desired != nil {
                    states[f.family] = IncrementalState(translator: Translator(proxy.translator(for: f.family)), fragments: f.fragments)
                }
                incremental = states
                var all: [String: [ServicePortState]] = [:]
                for family in result.families {
                    for f in family.fragments { if let st = f.state { all[f.serviceKey, default: []].append(st) } }
                }
                updateHealthChecks(all, replacingAll: true)
                counts = (result.services, result.endpoints)
                metrics.rules.record(result.families.compactMap(\.desired).reduce(0) { $0 + $1.ruleCount })
                metrics.elements.record(result.families.compactMap(\.desired).reduce(0) { $0 + $1.elementCount })
            }
            let drift = !partial && !txs.isEmpty && reason.hasPrefix("ruleset generation changed")
            let d = clock.now - start
            lastSyncEnd = clock.now
            failures = 0
            record(duration: d, partial: partial, txs: txs, services: counts.services, endpoints: counts.endpoints)
            healthLock.withLock { lastSuccess = Date(); lastError = nil }
            let ms = String(format: "%.2f", Double(d.components.attoseconds) / 1e15 + Double(d.components.seconds) * 1000)
            if drift {
                metrics.driftRepairs.increment()
                log.warning("drift: someone else changed svcnat's table \(config.proxy.table); repaired with \(txs.messageCount) changes")
            }
            if let w = flows.warning { log.warning("\(w)") }
            let flowNote = flows.deleted > 0 ? ", \(flows.deleted) stale UDP flows deleted" : ""
            log.info("sync (\(partial ? "partial" : "full"), \(reason)): \(counts.services) services, \(counts.endpoints) endpoints, \(txs.messageCount) changes in \(txs.isEmpty ? 0 : kernel.lastBatchMessages) netlink messages\(flowNote), \(ms) ms")
        } catch {
            lastSyncEnd = clock.now
            failures += 1
            metrics.syncFailures.increment()
            incremental = nil
            cacheGeneration = nil
            healthLock.withLock { lastError = "\(error)" }
            let backoff = min(30.0, pow(2.0, Double(min(failures, 5))) * 0.5)
            log.error("sync failed (\(reason)); the previous rules stay in force; retrying in \(backoff) s: \(error)")
            queue.asyncAfter(deadline: .now() + backoff) { [weak self] in self?.requestSync(full: true, reason: "retry after failure") }
        }
    }

    /// After a sync: the cached view is trusted at the kernel's new generation only if svcnat's
    /// own commits were the only ones since `gen`.
    private func noteGeneration(commits: Int, before gen: UInt32) throws {
        let now = try nft.generation()
        cacheGeneration = now == gen &+ UInt32(commits) ? now : nil
    }

    private func record(duration: Duration, partial: Bool, txs: [Transaction], services: Int, endpoints: Int) {
        metrics.syncDuration.recordNanoseconds(duration.nanoseconds)
        (partial ? metrics.partialSyncDuration : metrics.fullSyncDuration).recordNanoseconds(duration.nanoseconds)
        metrics.lastSyncTimestamp.record(Date().timeIntervalSince1970)
        metrics.services.record(services)
        metrics.endpoints.record(endpoints)
        metrics.lastBatchMessages.record(txs.isEmpty ? 0 : kernel.lastBatchMessages)
        metrics.changes.increment(by: txs.messageCount)
    }

    /// kube-proxy's per-Service health check servers: for each LoadBalancer Service with
    /// externalTrafficPolicy Local and a healthCheckNodePort, an HTTP server on that port of the
    /// node answering 200 with the number of this node's endpoints, or 503 when there are none,
    /// so load balancers send traffic only to nodes that can serve it.
    private func updateHealthChecks(_ services: [String: [ServicePortState]], replacingAll: Bool) {
        if replacingAll { healthPortOfService = [:] }
        var table = healthLock.withLock { replacingAll ? [:] : serviceHealth }
        for (key, ports) in services {
            if let old = healthPortOfService.removeValue(forKey: key) { table[old] = nil }
            guard let first = ports.first(where: { $0.healthCheckNodePort != nil }), let port = first.healthCheckNodePort else { continue }
            let local = ports.filter { $0.healthCheckNodePort == port }.map(\.localEndpointCount).max() ?? 0
            table[port] = (first.name.namespace, first.name.name, local)
            healthPortOfService[key] = port
        }
        healthLock.withLock { serviceHealth = table }
        let wanted = Set(table.keys.map { "0.0.0.0:\($0)" })
        let running = http.addresses.filter { $0.hasPrefix("0.0.0.0:") && $0 != config.healthzAddress && $0 != config.metricsAddress }
        for gone in running.subtracting(wanted) { http.close(gone) }
        for address in wanted.subtracting(running).sorted() {
            let port = UInt16(address.split(separator: ":").last!)!
            do {
                try http.listen(address) { [weak self] _ in self?.serveServiceHealth(port) ?? (.serviceUnavailable, "text/plain", "") }
            } catch {
                log.error("health check node port \(port): cannot listen: \(error)")
            }
        }
    }

    private func serveServiceHealth(_ port: UInt16) -> (HTTPResponseStatus, String, String) {
        guard let s = healthLock.withLock({ serviceHealth[port] }) else { return (.notFound, "text/plain", "not found\n") }
        let body = JSON.object([
            ("service", .object([("namespace", .string(s.namespace)), ("name", .string(s.name))])),
            ("localEndpoints", .number(s.local)),
            ("serviceProxyHealthy", .bool(true)),
        ]).text() + "\n"
        return (s.local > 0 ? .ok : .serviceUnavailable, "application/json", body)
    }

    /// Logs rejected files and warnings after the store changed.
    private func reportInput() {
        for w in store.takeWarnings() { log.warning("\(w)") }
        var summary: [String: String] = [:]
        for (file, errors) in store.rejected.sorted(by: { $0.key < $1.key }) {
            summary[file] = errors.map(\.description).joined(separator: "; ")
            for e in errors { log.error("rejected input (its last good version stays in force): \(e)") }
        }
        metrics.rejectedFiles.record(summary.count)
        healthLock.withLock { rejectedSummary = summary }
    }

    // MARK: HTTP

    private func serveMetrics(_ path: String) -> (HTTPResponseStatus, String, String) {
        guard path == "/metrics" else { return (.notFound, "text/plain", "not found\n") }
        return (.ok, "text/plain; version=0.0.4", metrics.exposition())
    }

    /// /healthz: 200 while the last sync succeeded and syncs are recent; 503 with the reason
    /// otherwise. Rejected input files are listed either way (their last good version serves).
    private func serveHealth(_ path: String) -> (HTTPResponseStatus, String, String) {
        switch path {
        case "/livez": return (.ok, "text/plain", "ok\n")
        case "/healthz":
            let (success, error, rejected, problems) = healthLock.withLock { (lastSuccess, lastError, rejectedSummary, sourceProblems) }
            let staleAfter = Double(config.syncPeriod.components.seconds) * 2 + 60
            var reason: String?
            if !problems.isEmpty {
                // The rules keep serving, but they may be out of date.
                reason = "source stale: " + problems.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: "; ")
            } else if let error { reason = "last sync failed: \(error)" }
            else if success == nil { reason = "no sync has completed yet" }
            else if Date().timeIntervalSince(success!) > staleAfter { reason = "no successful sync for more than \(Int(staleAfter)) s" }
            let body = JSON.object([
                ("status", .string(reason == nil ? "ok" : "unhealthy")),
                ("reason", reason.map { .string($0) } ?? .null),
                ("lastSuccessfulSync", success.map { .string(ISO8601DateFormatter().string(from: $0)) } ?? .null),
                ("source", .string(config.api.map { "api \($0.server)" } ?? "manifests \(config.manifests)")),
            ("rejectedFiles", .array(rejected.sorted { $0.key < $1.key }.map { .object([("file", .string($0.key)), ("error", .string($0.value))]) })),
            ]).text() + "\n"
            return (reason == nil ? .ok : .serviceUnavailable, "application/json", body)
        default: return (.notFound, "text/plain", "not found\n")
        }
    }
}

extension Duration {
    var nanoseconds: Int64 { components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000 }
}
