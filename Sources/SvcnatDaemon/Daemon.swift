import Dispatch
import Glibc
import Foundation
import Synchronization
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import SvcnatCore
import SvcnatHost
import SvcnatKube
import NFTModel
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
    /// Whether a manifest folder that holds no manifest file may remove every Service; without
    /// it the rules in force stay until the folder holds one again.
    public var allowEmpty = false
    /// `--allocate` (manifests mode): addresses and node ports for Services that lack them.
    public var allocation: Allocation.Settings?
    /// How often the kernel is asked about changes made by others when it cannot send change
    /// events; with events, that check is only a safety net, every `eventSafetyPeriod`.
    public var driftCheckPeriod: Duration = .milliseconds(500)
    public var eventSafetyPeriod: Duration = .seconds(10)

    public init(
        proxy: ProxyConfig, manifests: String, minSyncPeriod: Duration = .seconds(1), syncPeriod: Duration = .seconds(3600),
        metricsAddress: String = "127.0.0.1:10249", healthzAddress: String = "0.0.0.0:10256", cleanupOnExit: Bool = false
    ) {
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
/// The daemon only schedules: sources mark what changed in the store, and the `Syncer` (Core)
/// does the sync itself, full or partial. Everything that touches state runs on one serial
/// queue.
public final class Daemon: @unchecked Sendable {
    let config: DaemonConfig
    let queue = DispatchQueue(label: "svcnat.sync")
    let log: Logger
    let metrics = DaemonMetrics()
    let store: ObjectStore
    let syncer: Syncer
    private var watcher: DirectoryWatcher?
    private var api: APISource?
    private var timers: [DispatchSourceTimer] = []
    private var eventSource: DispatchSourceRead?
    private var flowSource: DispatchSourceRead?
    private var flowSourcePaused = false
    private var signals: [DispatchSourceSignal] = []
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let endpoints: NodeEndpoints

    // Scheduling (queue only).
    private var lastSyncEnd: ContinuousClock.Instant?
    private var syncScheduled = false
    private var retryScheduled = false
    /// The clashes of claims already logged.
    private var reportedConflicts: Set<String> = []
    /// The refused Services already logged, with their errors.
    private var reportedRefused: [String: String] = [:]
    private var pendingFull = false
    /// Set while syncs are held because the folder holds no manifest file (and read by /healthz).
    private let heldEmpty = HeldReason()

    final class HeldReason: Sendable {
        let reason = Mutex<String?>(nil)
    }
    private var pendingReason = "start"
    private let clock = ContinuousClock()
    /// Whether the source has given a complete view (at once for a folder; after the first
    /// list of every collection for the API). No sync runs before.
    private var sourceReady: Bool { api?.isReady ?? folderReady }
    private var folderReady = false
    private var exitSemaphore = DispatchSemaphore(value: 0)
    private var exitCode: Int32 = 0

    /// `kernel` is the kernel of this network namespace unless a test gives another.
    public init(config: DaemonConfig, logger: Logger, kernel: Kernel? = nil) throws {
        self.config = config
        self.log = logger
        self.store = ObjectStore(root: config.manifests)
        self.syncer = Syncer(config: config.proxy, kernel: try kernel ?? NetlinkKernel())
        let source = config.api.map { "api \($0.server)" } ?? "manifests \(config.manifests)"
        endpoints = NodeEndpoints(
            http: HTTPServer(group: group), metrics: metrics, metricsAddress: config.metricsAddress,
            healthzAddress: config.healthzAddress, sourceName: source,
            staleAfter: Double(config.syncPeriod.components.seconds) * 2 + 60)
        if config.api == nil {
            store.allocation = config.allocation
            store.reviews = true
            // What the tables hold as allocated stays allocated across a restart.
            if config.allocation != nil, let tables = try? syncer.kernel.readTables(config.proxy.table) {
                store.heldAtStart = Allocation.Held(tables: tables)
            }
        }
    }

    /// Starts everything and blocks until SIGTERM or SIGINT; returns the exit code.
    public func run() throws -> Int32 {
        if config.api == nil {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: config.manifests, isDirectory: &isDir), isDir.boolValue else {
                throw InputError(file: config.manifests, message: "--manifests must name a folder")
            }
        }
        if let client = try config.api.map(APIClient.init) {
            let api = APISource(
                client: client, store: store, nodeName: config.proxy.nodeName, followsNodeZone: config.proxy.zone == nil,
                queue: queue, log: log
            ) { [weak self] full, reason in self?.requestSync(full: full, reason: reason) }
            self.api = api
            endpoints.sourceProblems = { api.problems }
            endpoints.nodeEligible = { api.nodeEligible }
        } else {
            let held = heldEmpty
            endpoints.sourceProblems = { held.reason.withLock { $0 }.map { ["manifests": $0] } ?? [:] }
        }
        try endpoints.listen()
        let source = config.api.map { "the API server \($0.server) (\($0.origin))" } ?? "manifests \(config.manifests)"
        log.info(
            "svcnat run: \(source), table ip \(config.proxy.table), \(config.metricsAddress.isEmpty ? "no metrics server" : "metrics on \(config.metricsAddress)"), \(config.healthzAddress.isEmpty ? "no health server" : "health on \(config.healthzAddress)")"
        )
        // Before anything is synced: a SIGTERM sent as soon as the rules are in (by a test or
        // an operator who sees them) must find its handler in place. They were installed after
        // the first sync was queued, and once in CI such a SIGTERM was lost: the daemon ran on.
        handle(SIGTERM) { [weak self] in self?.stop(signal: "SIGTERM") }
        handle(SIGINT) { [weak self] in self?.stop(signal: "SIGINT") }

        if let api {
            queue.sync { api.start() }
        } else {
            queue.sync {
                store.loadAll()
                reportInput()
            }
            watcher = try DirectoryWatcher(root: config.manifests) { [weak self] change in
                guard let self else { return }
                self.queue.async {
                    switch change {
                    case .paths(let paths):
                        if self.store.reload(paths) {
                            self.reportInput()
                            self.requestSync(full: false, reason: "manifests changed: \(self.named(paths))")
                        }
                    case .everything(let reason):
                        self.rereadManifests(reason)
                    }
                }
            }
            queue.async {
                self.folderReady = true
                self.requestSync(full: true, reason: "start")
            }
        }
        startTimer(every: config.syncPeriod) { [weak self] in self?.requestSync(full: true, reason: "sync period") }
        // Another writer's commit wakes the daemon through the change events; the timer is the
        // safety net (and, without events, the only way to notice).
        let eventFD = syncer.kernel.eventDescriptor
        startTimer(every: eventFD == nil ? config.driftCheckPeriod : config.eventSafetyPeriod) { [weak self] in self?.checkDrift() }
        if let fd = eventFD {
            let s = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
            s.setEventHandler { [weak self] in self?.checkDrift() }
            s.resume()
            eventSource = s
        }
        // The DNATed UDP flows, from conntrack events: a UDP endpoint's removal then deletes its
        // stale flows without a conntrack dump.
        queue.sync {
            if let why = syncer.kernel.trackFlows() {
                log.info("stale UDP flows will be found by conntrack dumps: \(why)")
            } else if let fd = syncer.kernel.flowEventDescriptor {
                // Events are taken in batches, at most every 50 ms: a wake-up per event cost the
                // daemon 24 us of CPU per new flow, nearly all of it in task switches. The queue
                // holds 16 MB meanwhile, and a sync takes in what is queued before it looks.
                let s = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
                s.setEventHandler { [weak self] in
                    guard let self, let source = self.flowSource, !self.flowSourcePaused else { return }
                    self.syncer.kernel.takeFlowEvents()
                    self.recordFlowIndex()
                    source.suspend()
                    self.flowSourcePaused = true
                    self.queue.asyncAfter(deadline: .now() + .milliseconds(50)) {
                        guard self.flowSourcePaused else { return }
                        self.flowSourcePaused = false
                        self.flowSource?.resume()
                    }
                }
                flowSource = s
                s.resume()
            }
            recordFlowIndex()
        }
        handle(SIGHUP) { [weak self] in
            guard let self else { return }
            if self.api == nil {
                self.queue.async { self.rereadManifests("SIGHUP") }
            } else {
                self.requestSync(full: true, reason: "SIGHUP")
            }
        }

        exitSemaphore.wait()
        api?.stop()
        watcher?.stop()
        endpoints.http.close()
        try? group.syncShutdownGracefully()
        return exitCode
    }

    private func stop(signal: String) {
        queue.async {
            for t in self.timers { t.cancel() }
            self.eventSource?.cancel()
            if self.flowSourcePaused {
                self.flowSourcePaused = false
                self.flowSource?.resume()  // a suspended source cannot be released
            }
            self.flowSource?.cancel()
            if self.config.cleanupOnExit {
                do {
                    let removed = try Reconciler(config: self.config.proxy, kernel: self.syncer.kernel).cleanup()
                    let tables =
                        removed.isEmpty
                        ? "found no table ip \(self.config.proxy.table)"
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
        let ns = Int(period.nanoseconds)
        t.schedule(deadline: .now() + .nanoseconds(ns), repeating: .nanoseconds(ns), leeway: .milliseconds(20))
        t.setEventHandler(handler: action)
        t.resume()
        timers.append(t)
    }

    // MARK: scheduling (queue only)

    /// Runs a sync as soon as --min-sync-period allows; requests arriving meanwhile join it.
    func requestSync(full: Bool, reason: String) {
        dispatchPrecondition(condition: .onQueue(queue))
        // Nothing is programmed from a half-known source (the API before its first lists).
        guard sourceReady else { return }
        pendingFull = pendingFull || full
        // Requests that join one sync are all named in its log line.
        if !syncScheduled && !retryScheduled {
            pendingReason = reason
        } else if !pendingReason.contains(reason) {
            pendingReason += "; " + reason
        }
        metrics.lastQueuedTimestamp.record(Date().timeIntervalSince1970)
        metrics.serviceChangesPending.record(store.pendingServiceChanges.count)
        metrics.endpointChangesPending.record(store.pendingEndpointChanges.count)
        // After a failure the retry is already scheduled; requests join it, keeping the backoff.
        guard !syncScheduled, !retryScheduled else { return }
        syncScheduled = true
        var delay = Duration.zero
        if let last = lastSyncEnd {
            let next = last + config.minSyncPeriod
            let now = clock.now
            if next > now { delay = next - now }
        }
        queue.asyncAfter(deadline: .now() + .nanoseconds(Int(delay.nanoseconds))) { [self] in
            syncScheduled = false
            runPendingSync()
        }
    }

    private func runPendingSync() {
        let full = pendingFull
        pendingFull = false
        sync(full: full, reason: pendingReason)
    }

    private var flowIndexSeeds = 1
    private var flowIndexGivenUp = false
    /// The flow index's metrics, and a log line when it was read again or given up.
    private func recordFlowIndex() {
        let index = (syncer.kernel as? NetlinkKernel)?.udpFlowIndex
        metrics.flowIndexFlows.record(index?.count ?? -1)
        metrics.flowIndexEvents.record(index?.events ?? 0)
        metrics.conntrackDumps.record(syncer.kernel.conntrackDumps)
        if let index, let why = index.givenUp, !flowIndexGivenUp {
            flowIndexGivenUp = true
            log.warning("the UDP flow index is given up (\(why)): stale UDP flows are found by conntrack dumps from now on")
        }
        if let index, index.seeds > flowIndexSeeds {
            flowIndexSeeds = index.seeds
            log.warning("the UDP flow index was read again from a conntrack dump: \(index.lastLoss ?? "stale")")
        }
    }

    /// Someone else committed to the ruleset: a full sync compares and repairs. While a retry
    /// waits out its backoff, the retry does that.
    ///
    /// The events are read every time (a readable descriptor left unread would wake the queue
    /// again at once); a sync already waiting takes the request. If the kernel cannot be asked,
    /// the event source rests for a second.
    private func checkDrift() {
        let why: String?
        do { why = try syncer.drift() } catch {
            if eventSource != nil {
                eventSource?.suspend()
                queue.asyncAfter(deadline: .now() + 1) { [weak self] in self?.eventSource?.resume() }
            }
            return
        }
        if let why { requestSync(full: true, reason: why) }
    }

    func sync(full: Bool, reason: String) {
        var full = full
        // A folder emptied (or empty at start) would remove every Service: the rules in force
        // stay, and the log and /healthz say why, until the folder holds a manifest again (or
        // --allow-empty says that emptiness is meant).
        if config.api == nil, !config.allowEmpty, store.holdsNoFiles {
            let why =
                "\(config.manifests) holds no manifest file (*.yaml, *.yml, *.json); the rules in force stay, "
                + "and --allow-empty would let an empty folder remove them"
            let wasHeld = heldEmpty.reason.withLock { held in
                defer { held = why }
                return held != nil
            }
            if !wasHeld {
                log.warning("sync held: \(why)")
            }
            lastSyncEnd = clock.now
            return
        }
        let wasHeld = heldEmpty.reason.withLock { held in
            defer { held = nil }
            return held != nil
        }
        if wasHeld {
            log.info("the folder holds manifests again: syncing in full")
            full = true
        }
        let start = clock.now
        var proxy = config.proxy
        if proxy.zone == nil { proxy.zone = api?.nodeZone }
        syncer.config = proxy
        do {
            let outcome = try syncer.sync(store, full: full, reason: reason)
            // A full sync's ruleset, transaction and batch are large and short-lived: once they
            // are gone (after this function returns: the outcome holds the transaction), hand
            // the pages back. Trimmed here, before they were freed, they stayed in the heap.
            if !outcome.partial { queue.async { releaseFreeMemory() } }
            endpoints.updateHealthChecks(outcome.ports, replacingAll: outcome.replacesAll) { log.error("\($0)") }
            let d = clock.now - start
            lastSyncEnd = clock.now
            record(d, outcome)
            recordProgrammed(outcome)
            endpoints.syncSucceeded()
            if let who = outcome.repairedDrift {
                metrics.driftRepairs.increment()
                log.warning("drift: \(who); svcnat's table repaired with \(outcome.changeCount) changes")
            }
            if let w = outcome.flowWarning { log.warning("\(w)") }
            recordFlowIndex()
            reportConflicts(syncer.conflicts)
            reportRefused(syncer.refused)
            let flowNote = outcome.flowsDeleted > 0 ? ", \(outcome.flowsDeleted) stale UDP flows deleted" : ""
            let ms = String(format: "%.2f", Double(d.nanoseconds) / 1e6)
            let counts = "\(outcome.services) services, \(outcome.endpoints) endpoints, \(outcome.changeCount) changes"
            let kind = outcome.partial ? "partial" : "full"
            // A full sync says where its time went (a partial one is a few ms).
            let split = outcome.phases.isEmpty ? "" : " (\(phaseText(outcome.phases)))"
            log.info("sync (\(kind), \(reason)): \(counts) in \(outcome.batchMessages) netlink messages\(flowNote), \(ms) ms\(split)")
            if let why = outcome.needsFullSync { queue.async { [weak self] in self?.requestSync(full: true, reason: why) } }
        } catch {
            queue.async { releaseFreeMemory() }
            lastSyncEnd = clock.now
            metrics.syncFailures.increment()
            endpoints.syncFailed("\(error)")
            let backoff = syncer.retryDelay
            log.error("sync failed (\(reason)); the previous rules stay in force; retrying in \(backoff) s: \(error)")
            retryScheduled = true
            queue.asyncAfter(deadline: .now() + backoff) { [weak self] in
                guard let self else { return }
                self.retryScheduled = false
                self.pendingFull = true
                self.pendingReason = "retry after failure"
                self.runPendingSync()
            }
        }
    }

    private func record(_ duration: Duration, _ o: SyncOutcome) {
        metrics.syncDuration.recordNanoseconds(duration.nanoseconds)
        (o.partial ? metrics.partialSyncDuration : metrics.fullSyncDuration).recordNanoseconds(duration.nanoseconds)
        metrics.lastSyncTimestamp.record(Date().timeIntervalSince1970)
        metrics.services.record(o.services)
        metrics.endpoints.record(o.endpoints)
        metrics.lastBatchMessages.record(o.batchMessages)
        metrics.changes.increment(by: o.changeCount)
        if let r = o.rules { metrics.rules.record(r) }
        if let e = o.elements { metrics.elements.record(e) }
    }

    /// Per Service, its ports with a Local traffic policy and no endpoint on this node
    /// (internal, external), as of the syncs so far.
    private var noLocalEndpoints: [String: (internal: Int, external: Int)] = [:]

    /// kube-proxy's change metrics after a sync programmed the changes: how many Services and
    /// endpoint objects changed, the latency from each EndpointSlice's trigger time to now,
    /// and the Services left without a local endpoint.
    private func recordProgrammed(_ o: SyncOutcome) {
        let changes = store.takeChanges()
        metrics.serviceChanges.increment(by: changes.services)
        metrics.endpointChanges.increment(by: changes.endpoints)
        metrics.serviceChangesPending.record(0)
        metrics.endpointChangesPending.record(0)
        let now = Date().timeIntervalSince1970
        for t in changes.triggerTimes where t <= now {
            metrics.networkProgramming.recordNanoseconds(Int64((now - t) * 1e9))
        }
        if o.replacesAll { noLocalEndpoints = [:] }
        for (key, ports) in o.ports {
            let none = ports.filter { $0.localEndpointCount == 0 }
            let counts = (none.filter(\.internalLocal).count, none.filter(\.externalLocal).count)
            noLocalEndpoints[key] = counts == (0, 0) ? nil : counts
        }
        metrics.noLocalEndpoints("internal", noLocalEndpoints.values.reduce(0) { $0 + $1.internal })
        metrics.noLocalEndpoints("external", noLocalEndpoints.values.reduce(0) { $0 + $1.external })
    }

    /// Reads the whole manifest folder again and syncs in full: after SIGHUP, lost inotify
    /// events, or the folder replaced. A folder that is not there (yet) changes nothing: the
    /// rules in force stay.
    private func rereadManifests(_ reason: String) {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: config.manifests, isDirectory: &isDir), isDir.boolValue else {
            log.error("\(reason), but \(config.manifests) is not a folder now; the rules in force stay")
            return
        }
        log.info("reading \(config.manifests) again: \(reason)")
        store.loadAll()
        reportInput()
        requestSync(full: true, reason: reason)
    }

    /// Logs each Service the kernel refused once, when it appears, and lists all in /healthz
    /// and the metric; the other Services are programmed.
    private func reportRefused(_ refused: [String: String]) {
        for (key, why) in refused.sorted(by: { $0.key < $1.key }) where reportedRefused[key] != why {
            log.error("Service \(key) is left out: the kernel refused it (the other Services are programmed): \(why)")
        }
        reportedRefused = refused
        metrics.refusedServices.record(refused.count)
        endpoints.setRefused(refused)
    }

    /// Logs each clash of claims once, when it appears, and lists all in /healthz and the metric.
    private func reportConflicts(_ conflicts: [Conflict]) {
        let now = Set(conflicts.map(\.description))
        for c in conflicts where !reportedConflicts.contains(c.description) { log.warning("conflict: \(c)") }
        reportedConflicts = now
        metrics.skippedFrontends.record(conflicts.count)
        endpoints.setSkipped(conflicts.map(\.description))
    }

    /// The files of a change, relative to the folder: at most three, then how many more.
    func named(_ paths: [String]) -> String {
        let root = config.manifests.hasSuffix("/") ? config.manifests : config.manifests + "/"
        // Editors' and writers' temporary files (dot-entries, other extensions) are not named.
        let names = Set(
            paths.map { $0.hasPrefix(root) ? String($0.dropFirst(root.count)) : $0 }.filter { p in
                let last = p.split(separator: "/").last ?? ""
                return !last.hasPrefix(".") && (ManifestSource.isManifestName(p) || !last.contains("."))
            }
        ).sorted()
        guard !names.isEmpty else { return "files of \(config.manifests)" }
        return names.prefix(3).joined(separator: ", ") + (names.count > 3 ? " and \(names.count - 3) more" : "")
    }

    /// The rejections already logged, by file: a file's errors are logged once per change.
    private var reportedRejected: [String: [InputError]] = [:]

    /// Logs rejected files (each once per change of its errors), warnings, what the manifests
    /// leave Services without, and what was skipped, after the store changed.
    private func reportInput() {
        for w in store.takeWarnings() + store.takeReview() { log.warning("\(w)") }
        let skipped = store.takeSkipped()
        for line in SkippedObject.summary(skipped, verbose: false) { log.info("\(line)") }
        for line in SkippedObject.summary(skipped, verbose: true) { log.debug("\(line)") }
        var summary: [String: String] = [:]
        for (file, errors) in store.rejected.sorted(by: { $0.key < $1.key }) {
            summary[file] = errors.map(\.description).joined(separator: "; ")
            guard reportedRejected[file] != errors else { continue }
            // "Last good" only where there is one.
            let state =
                store.hasGoodVersion(file)
                ? "its last good version stays in force" : "it has no good version, so nothing of it is programmed"
            for e in errors { log.error("rejected input (\(state)): \(e)") }
        }
        reportedRejected = store.rejected
        metrics.rejectedFiles.record(summary.count)
        endpoints.setRejected(summary)
    }
}

extension Duration {
    var nanoseconds: Int64 { components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000 }
}
