import NFTModel
import SvcnatModel
import SvcnatExplain
import SvcnatSources

/// What a sync reads its Services from: everything for a full sync, and for a partial one the
/// Services changed since the last sync and their ports now. `ObjectStore` is one (files and
/// API objects alike).
public protocol ServiceSource: AnyObject {
    /// The whole cluster state, for a full sync.
    var state: ClusterState { get }
    /// The Services (ns/name) changed since the last call; forgets them.
    func takeDirty() -> Set<String>
    /// One Service's ports as they are now (empty when it is gone or gets no rules).
    func ports(ofService key: String, nodeName: String?, zone: String?, family: IPFamily) -> [ServicePortState]
}

extension ObjectStore: ServiceSource {}

/// What one sync did, for logs, metrics and health checks.
public struct SyncOutcome: Sendable {
    public var partial: Bool
    /// The non-empty changes sent, one per table.
    public var transactions: [Transaction]
    public var services: Int
    public var endpoints: Int
    /// Netlink messages sent over all batches (0 when nothing was sent).
    public var batchMessages: Int
    public var flowsDeleted = 0
    public var flowWarning: String?
    /// The Services whose ports this sync (re)computed, with those ports; for a full sync
    /// every Service (`replacesAll`).
    public var ports: [String: [ServicePortState]]
    public var replacesAll: Bool
    /// A full sync's rule and element counts.
    public var rules: Int?
    public var elements: Int?
    /// A full sync that had to change what svcnat had written: someone else edited the table.
    public var repairedDrift: String?
    /// Set when this sync leaves work only a full sync can do (a family's last Service went,
    /// so its table must go).
    public var needsFullSync: String?
    /// A full sync's time by phase, in order: state (the cluster state from the source), then
    /// the reconciler's (translate, read, plan, send, conntrack), then cache (the view the
    /// next partial sync plans from).
    public var phases: [(name: String, seconds: Double)] = []

    public var changeCount: Int { transactions.messageCount }
}

/// The one sync, full or partial, as kube-proxy's `syncProxyRules` is one function: plan,
/// apply as one batch, delete stale UDP flows, keep what the next sync needs.
///
/// A partial sync plans from a cached view of what svcnat last wrote (`IncrementalState`) and
/// touches only the Services the source marked; it is trusted while the kernel's change events
/// say nobody else touched svcnat's tables since (commits to other tables do not count), and
/// its batch is a compare-and-swap on that. Anything else (a first sync, drift, a failure, a
/// family's table to create or remove) is a full sync that reads the tables back and repairs
/// them. Failures count towards the retry backoff.
public final class Syncer {
    public var config: ProxyConfig
    public let kernel: Kernel
    /// What svcnat last wrote, port by port, per family; valid until another writer touches
    /// svcnat's tables.
    private var incremental: [IPFamily: IncrementalState]?
    /// Another writer's change seen since the last full sync, which that sync repairs.
    private var drifted: String?
    /// Per family, every frontend programmed and the Service holding it, as of the last sync.
    private var claims: [IPFamily: ClaimTable] = [:]
    /// The claims that lost at the last full sync (a partial sync never decides a clash).
    public private(set) var conflicts: [Conflict] = []
    /// The Services on either side of those clashes.
    private var contested: Set<String> { Set(conflicts.flatMap { [$0.loser.serviceKey, $0.winner.serviceKey] }) }
    /// Services the kernel refused at the last full sync, left out, with its error. A change
    /// to one of them is tried again in a full sync.
    public private(set) var refused: [String: String] = [:]
    /// Per family and Service, the frontends it claims and another Service holds.
    private var lost: [IPFamily: [String: Set<String>]] = [:]
    /// Failed syncs in a row.
    public private(set) var failures = 0

    public init(config: ProxyConfig, kernel: Kernel) {
        self.config = config
        self.kernel = kernel
    }

    /// How long to wait before retrying after `failures` failed syncs in a row: 0.5 s, doubling,
    /// at most 30 s.
    public static func backoff(afterFailures n: Int) -> Double {
        n <= 0 ? 0 : min(30, 0.5 * Double(1 << min(n - 1, 6)))
    }

    /// The wait before the next retry, after the failures so far.
    public var retryDelay: Double { Self.backoff(afterFailures: failures) }

    /// Why the cached view can no longer be trusted, or nil while it can: someone else changed
    /// svcnat's tables since svcnat's last sync (or there is no cached view).
    public func drift() throws -> String? {
        try noteChanges()
        return incremental == nil ? drifted.map { "drift: \($0)" } ?? "no cached view of the kernel's tables" : nil
    }

    /// Reads the kernel's news; another writer's change drops the cached view. Returns the
    /// generation now.
    @discardableResult private func noteChanges() throws -> UInt32 {
        let c = try kernel.changes(table: config.table)
        if let why = c.foreign {
            drifted = why
            incremental = nil
        }
        return c.generation
    }

    /// One sync. A partial one when asked for and the cached view is still the kernel's;
    /// otherwise full. On failure the cache is dropped (the next sync is full) and the failure
    /// counted; the error is rethrown.
    public func sync(_ source: ServiceSource, full requestedFull: Bool, reason: String) throws -> SyncOutcome {
        do {
            let gen = try noteChanges()
            let dirty = source.takeDirty()
            var partial: SyncOutcome?
            if !requestedFull, let (ports, held) = partialPorts(source, dirty) {
                do {
                    partial = try partialSync(ports, dirty: dirty, generation: gen)
                    for (family, services) in held {
                        for (service, frontends) in services { claims[family, default: ClaimTable()].replace(service, with: frontends) }
                    }
                } catch is GenerationChanged {
                    // Another writer touched svcnat's tables since the cached view: a full sync.
                    incremental = nil
                }
            }
            if let partial {
                failures = 0
                return partial
            }
            let clock = ContinuousClock()
            let start = clock.now
            let state = source.state
            let stateTime = (clock.now - start).seconds
            var done = try fullSync(state)
            done.phases.insert(("state", stateTime), at: 0)
            done.repairedDrift = done.transactions.isEmpty ? nil : drifted
            drifted = nil
            failures = 0
            return done
        } catch {
            failures += 1
            incremental = nil
            throw error
        }
    }

    /// The changed Services' ports per family, or nil when a partial sync cannot do the work:
    /// no cached view, a family whose table was not needed at the last full sync now is, or a
    /// clash of claims to decide: a changed Service now claims a frontend another holds, or a
    /// Service in a clash claims something other than before. Clashes are decided only by a
    /// full sync, so the rule is applied to the whole input the same way every time; a partial
    /// sync of a Service in a clash whose claims did not change keeps the full sync's decision.
    /// With the ports, the frontends each changed Service holds once the kernel takes them.
    /// The work is proportional to the changed Services' frontends, not to all Services.
    private func partialPorts(
        _ source: ServiceSource, _ dirty: Set<String>
    ) -> (ports: [IPFamily: [String: [ServicePortState]]], claims: [IPFamily: [String: Set<String>]])? {
        let contested = self.contested
        guard let incremental, dirty.allSatisfy({ refused[$0] == nil }) else { return nil }
        var ports: [IPFamily: [String: [ServicePortState]]] = [:]
        var newClaims: [IPFamily: [String: Set<String>]] = [:]
        for family in IPFamily.allCases {
            var byService: [String: [ServicePortState]] = [:]
            for key in dirty {
                byService[key] = source.ports(ofService: key, nodeName: config.nodeName, zone: config.zone, family: family)
            }
            if incremental[family] == nil, byService.values.contains(where: { !$0.isEmpty }) { return nil }
            let before = claims[family] ?? ClaimTable()
            let lost = self.lost[family] ?? [:]
            // The changed Services' claims in this sync; the others' stay as they are.
            var taken: [String: String] = [:]
            var held: [String: Set<String>] = [:]
            for (key, states) in byService {
                let wanted = Set(states.flatMap(\.claimKeys))
                if contested.contains(key) {
                    let had = before.claims(of: key).union(lost[key] ?? [])
                    guard wanted == had else { return nil }
                    let drop = lost[key] ?? []
                    byService[key] = states.map { $0.dropping(drop) }
                    held[key] = wanted.subtracting(drop)
                    for k in wanted.subtracting(drop) { taken[k] = key }
                } else {
                    for k in wanted {
                        if let other = taken[k], other != key { return nil }
                        if let other = before.holder[k], other != key, !dirty.contains(other) { return nil }
                        taken[k] = key
                    }
                    held[key] = wanted
                }
            }
            newClaims[family] = held
            ports[family] = byService
        }
        return (ports, newClaims)
    }

    private func partialSync(_ ports: [IPFamily: [String: [ServicePortState]]], dirty: Set<String>, generation: UInt32) throws
        -> SyncOutcome
    {
        // Moved out, so it is the only reference and is updated in place: a copy of a 10,000-port
        // state would cost more than the change. It goes back once the kernel took the change
        // (after a failure the next sync is full anyway).
        var states = incremental ?? [:]
        incremental = nil
        var changes: [StaleFlows.Change] = []
        var planned: [Transaction] = []
        for family in states.keys.sorted() {
            let now = ports[family] ?? [:]
            let before = states[family]?.states(ofServices: dirty) ?? []
            changes.append(.init(before: StaleFlows.udpFrontends(before), after: StaleFlows.udpFrontends(now.values.flatMap { $0 })))
            if let tx = states[family]?.update(now) { planned.append(tx) }
        }
        let txs = planned.filter { !$0.isEmpty }
        try kernel.apply(txs, generation: generation)
        incremental = states
        let (deleted, warning) = Reconciler.deleteStaleFlows(kernel, changes)
        var merged: [String: [ServicePortState]] = [:]
        for byService in ports.values { merged.merge(byService) { $0 + $1 } }
        var result = SyncOutcome(
            partial: true, transactions: txs, services: states.values.map(\.serviceCount).max() ?? 0,
            endpoints: states.values.reduce(0) { $0 + $1.endpointCount },
            batchMessages: txs.isEmpty ? 0 : kernel.lastBatchMessages,
            flowsDeleted: deleted, flowWarning: warning, ports: merged, replacesAll: false)
        if let gone = states.first(where: { !config.needsTable($0.key, hasServices: $0.value.serviceCount > 0) })?.key {
            result.needsFullSync = "no \(gone.rawValue) Service left"
        }
        return result
    }

    private func fullSync(_ state: ClusterState) throws -> SyncOutcome {
        incremental = nil
        let clock = ContinuousClock()
        let r = try Reconciler(config: config, kernel: kernel).reconcile(state)
        let cached = clock.now
        claims = Dictionary(uniqueKeysWithValues: r.families.map { ($0.family, ClaimTable($0.claims)) })
        lost = Dictionary(uniqueKeysWithValues: r.families.map { ($0.family, $0.lost) })
        conflicts = r.conflicts
        refused = r.refused
        var states: [IPFamily: IncrementalState] = [:]
        var ports: [String: [ServicePortState]] = [:]
        for f in r.families {
            if f.desired != nil {
                states[f.family] = IncrementalState(translator: Translator(config.translator(for: f.family)), fragments: f.fragments)
            }
            for fragment in f.fragments { if let st = fragment.state { ports[fragment.serviceKey, default: []].append(st) } }
        }
        incremental = states
        let tables = r.families.compactMap(\.desired)
        var result = SyncOutcome(
            partial: false, transactions: r.transactions, services: r.services, endpoints: r.endpoints,
            batchMessages: r.transactions.isEmpty ? 0 : kernel.lastBatchMessages,
            flowsDeleted: r.flowsDeleted, flowWarning: r.flowWarning, ports: ports, replacesAll: true,
            rules: tables.reduce(0) { $0 + $1.ruleCount }, elements: tables.reduce(0) { $0 + $1.elementCount })
        result.phases = r.phases + [("cache", (clock.now - cached).seconds)]
        return result
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
