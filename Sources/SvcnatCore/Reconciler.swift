import Foundation
import NFNetlink
import NFTModel
import SvcnatModel
import SvcnatExplain
import SvcnatSources

/// Settings that decide the ruleset, from kube-proxy's flags where they exist.
public struct ProxyConfig: Sendable {
    public var table: String
    public var clusterCIDRs: [IPPrefix]
    public var masqueradeAll: Bool
    public var nodeName: String?
    public var endpointSelection: EndpointSelection
    public var nodePortAddresses: [IPPrefix]
    public var serviceCIDRs: [IPPrefix]
    /// This node's zone, for topology hints.
    public var zone: String?
    /// The node's own addresses (`TranslatorConfig.nodeIPs`); the CLI and the daemon read them
    /// from the network namespace.
    public var nodeIPs: Set<IPAddress> = []

    public init(
        table: String = "svcnat", clusterCIDRs: [IPPrefix] = [], masqueradeAll: Bool = false, nodeName: String? = nil,
        endpointSelection: EndpointSelection = .map, nodePortAddresses: [IPPrefix] = [], serviceCIDRs: [IPPrefix] = []
    ) {
        self.table = table
        self.clusterCIDRs = clusterCIDRs
        self.masqueradeAll = masqueradeAll
        self.nodeName = nodeName
        self.endpointSelection = endpointSelection
        self.nodePortAddresses = nodePortAddresses
        self.serviceCIDRs = serviceCIDRs
    }

    /// The IPv4 table's settings.
    public var translator: TranslatorConfig { translator(for: .v4) }

    /// The IPv4 table is always kept; the IPv6 one while there is an IPv6 Service, or an IPv6
    /// Service CIDR or node port address to guard.
    public func needsTable(_ family: IPFamily, hasServices: Bool) -> Bool {
        family == .v4 || hasServices || translator(for: family).hasPrefixes
    }

    public func translator(for family: IPFamily) -> TranslatorConfig {
        var t = TranslatorConfig(
            table: table, clusterCIDRs: clusterCIDRs, masqueradeAll: masqueradeAll, endpointSelection: endpointSelection,
            nodePortAddresses: nodePortAddresses, serviceCIDRs: serviceCIDRs, family: family)
        t.nodeIPs = nodeIPs.filter { $0.family == family }.sorted()
        return t
    }
}

/// One family's wanted table and the proxy state it was made from.
public struct DesiredTable: Sendable {
    public var family: IPFamily
    public var proxy: ProxyState
    public var ruleset: Ruleset
}

/// One family's table in a sync: what was planned for it, and the change sent.
public struct FamilySync: Sendable {
    public var family: IPFamily
    /// The table wanted, or nil when this family needs none (no IPv6 Service, say).
    public var desired: Ruleset?
    /// Each Service port's share of `desired` (the daemon keeps these to plan later changes
    /// incrementally).
    public var fragments: [PortFragment]
    public var transaction: Transaction
    /// Every frontend the table programs, with the Service that holds it.
    public var claims: [String: String] = [:]
    /// Per Service, the frontends it claims and another Service holds.
    public var lost: [String: Set<String>] = [:]
}

public struct SyncResult: Sendable {
    public var services: Int
    public var servicePorts: Int
    public var endpoints: Int
    /// The non-empty changes, one per table, all sent in the same batch.
    public var transactions: [Transaction]
    public var seconds: Double
    /// Each family's part, IPv4 first.
    public var families: [FamilySync]
    /// Stale UDP conntrack entries deleted after the change, and a warning if that failed.
    public var flowsDeleted = 0
    public var flowWarning: String?
    /// Batches committed (0 for a dry run or no change; 2 when endpoint-map entries only the
    /// old rules used were removed after the change).
    public var commits = 0
    /// Frontends left out because another Service holds them.
    public var conflicts: [Conflict] = []
    /// Services left out because the kernel refused them, with the kernel's error.
    public var refused: [String: String] = [:]

    /// Where the sync's time went, in order: translate (proxy state and rules), read (the
    /// kernel's tables), plan (the difference), send (encoding and the kernel's commit).
    public var phases: [(name: String, seconds: Double)] = []

    public func family(_ f: IPFamily) -> FamilySync? { families.first { $0.family == f } }
    /// The IPv4 table, which svcnat always keeps.
    public var desired: Ruleset { family(.v4)!.desired! }
    /// The IPv4 table's change.
    public var transaction: Transaction { family(.v4)!.transaction }

    public var summary: String {
        var changes =
            transactions.isEmpty
            ? "no changes, the kernel already matches"
            : "\(transactions.messageCount) changes applied in one transaction"
                + (commits > 1 ? " (unreachable endpoint-map entries removed in a second)" : "")
        if flowsDeleted > 0 { changes += ", \(flowsDeleted) stale UDP flows deleted" }
        let split = phases.isEmpty ? "" : " (\(phaseText(phases)))"
        return
            "svcnat: \(services) services (\(servicePorts) ports), \(endpoints) endpoints: \(changes) in "
            + "\(String(format: "%.1f", seconds * 1000)) ms\(split)"
    }
}

/// Phases as a log shows them: `translate 235.0, read 0.5, plan 8.1` (milliseconds).
public func phaseText(_ phases: [(name: String, seconds: Double)]) -> String {
    phases.map { "\($0.name) \(String(format: "%.1f", $0.seconds * 1000))" }.joined(separator: ", ")
}

extension Array where Element == Transaction {
    public var messageCount: Int { reduce(0) { $0 + $1.messageCount } }
    /// The changes as one nft script.
    public var nftText: String { map(\.nftText).joined() }
}

/// Desired state from the cluster, current state from the kernel, the difference as one batch.
/// Each family has its own table (`ip svcnat`, `ip6 svcnat`), planned on its own as kube-proxy
/// runs one proxier per family; the changes to both go to the kernel in one batch.
public struct Reconciler {
    public var config: ProxyConfig
    public var kernel: Kernel

    public init(config: ProxyConfig, kernel: Kernel) {
        self.config = config
        self.kernel = kernel
    }

    /// Pure: what svcnat wants in its IPv4 table for this cluster state. Throws when two
    /// Services claim the same address, protocol and port.
    public static func desired(_ state: ClusterState, config: ProxyConfig, previous: Ruleset? = nil) throws -> (ProxyState, Ruleset) {
        let proxy = proxyState(state, config: config, family: .v4)
        return (proxy, Translator(config.translator).ruleset(for: proxy, previous: previous))
    }

    /// Pure: each family's wanted table, IPv4 first; IPv6 only when it has work to do.
    public static func desiredTables(_ state: ClusterState, config: ProxyConfig) throws -> [DesiredTable] {
        try desiredTablesAndConflicts(state, config: config).tables
    }

    /// The wanted tables and the claims that lost, from one translation (a dry run prints the
    /// one and warns of the other). The state is let go once the proxy states are made from it,
    /// so a caller that hands over the only copy does not hold the objects and the rules at
    /// once (at 10,000 Services, 19 MB of objects beside 40 MB of rules).
    public static func desiredTablesAndConflicts(_ state: consuming ClusterState, config: ProxyConfig) throws -> (
        tables: [DesiredTable], conflicts: [Conflict]
    ) {
        let (proxies, conflicts) = proxyStates(state, config: config)
        _ = consume state
        let tables = zip(IPFamily.allCases, proxies).compactMap { family, proxy -> DesiredTable? in
            guard config.needsTable(family, hasServices: !proxy.servicePorts.isEmpty) else { return nil }
            return DesiredTable(family: family, proxy: proxy, ruleset: Translator(config.translator(for: family)).ruleset(for: proxy))
        }
        return (tables, merge(conflicts))
    }

    /// What the proxy must do for this cluster state, with every frontend two Services claim
    /// given to one of them (`ProxyState.resolvingConflicts`); the claims that lost are in
    /// `conflicts`. One Service's claim never stops the others being programmed.
    static func proxyState(_ state: ClusterState, config: ProxyConfig, family: IPFamily) -> ProxyState {
        ProxyState(state, nodeName: config.nodeName, zone: config.zone, family: family).resolvingConflicts(state).0
    }

    /// Both families' proxy states (`IPFamily.allCases` order), conflicts resolved, and each
    /// family's claims that lost.
    static func proxyStates(_ state: ClusterState, config: ProxyConfig) -> (proxies: [ProxyState], conflicts: [[Conflict]]) {
        let resolved = ProxyState.perFamily(state, nodeName: config.nodeName, zone: config.zone).map { $0.resolvingConflicts(state) }
        return (resolved.map(\.0), resolved.map(\.1))
    }

    /// The claims that lose to another Service's, for this cluster state (what a dry run warns of).
    public static func conflicts(_ state: ClusterState, config: ProxyConfig) -> [Conflict] {
        merge(proxyStates(state, config: config).conflicts)
    }

    /// A node port is claimed in both families' states: one report.
    static func merge(_ perFamily: [[Conflict]]) -> [Conflict] {
        Array(Set(perFamily.joined())).sorted { ($0.loser, $0.frontend) < ($1.loser, $1.frontend) }
    }

    /// Reads the kernel, plans, and (unless `dryRun`) applies. Returns what was (or would be) sent.
    @discardableResult
    public func reconcile(_ state: ClusterState, dryRun: Bool = false) throws -> SyncResult {
        guard !dryRun else { return try reconcileOnce(state, dryRun: true) }
        // When the kernel refuses the batch, the Services its refusals name are left out and
        // the rest is sent again, so one Service the kernel will not take (a feature this
        // kernel lacks, say) never stops the others. A refusal that names no single Service
        // is retried once with an error per element; one that still names none fails the sync.
        var excluded: [String: String] = [:]
        defer { kernel.preciseErrors = false }
        var stale = 0
        for _ in 0..<Self.isolationRounds + Self.staleTries {
            do {
                var result = try reconcileOnce(excluded.isEmpty ? state : state.without(services: Set(excluded.keys)), dryRun: false)
                result.refused = excluded
                return result
            } catch let e as GenerationChanged {
                // Another writer changed svcnat's tables after the read: read and plan again.
                stale += 1
                if stale >= Self.staleTries { throw e }
            } catch let e as BatchError {
                var named: [String: String] = [:]
                var unnamed = false
                for f in e.failures {
                    let keys = f.refused.map { Self.services(of: $0.change) } ?? []
                    if keys.count == 1 { named[keys[0]] = f.description } else { unnamed = true }
                }
                let fresh = named.filter { excluded[$0.key] == nil }
                if fresh.isEmpty {
                    guard unnamed, !kernel.preciseErrors else { throw e }
                    kernel.preciseErrors = true
                    continue
                }
                excluded.merge(fresh) { a, _ in a }
            }
        }
        return try reconcileOnce(state.without(services: Set(excluded.keys)), dryRun: false)
    }

    /// How many times a refused sync is tried again without the Services it named.
    static let isolationRounds = 6
    /// How many times a sync is read and planned again after another writer changed svcnat's
    /// tables between the read and the commit.
    static let staleTries = 5

    /// The Services (namespace/name) a change belongs to, read off svcnat's names: a Service
    /// port's chains and sets carry its namespace and name, and the dispatch maps' elements
    /// jump to its chains. Empty for shared objects.
    static func services(of change: NFTModel.Operation) -> [String] {
        let owner = Names.service(ofObject:)
        var out = Set<String>()
        switch change {
        case .addChain(let c): if let o = owner(c.name) { out.insert(o) }
        case .addRule(let chain, _), .flushChain(let chain), .deleteChain(let chain), .deleteRule(let chain, _):
            if let o = owner(chain) { out.insert(o) }
        case .addSet(let s): if let o = owner(s.name) { out.insert(o) }
        case .deleteSet(let s): if let o = owner(s) { out.insert(o) }
        case .addElements(_, let es), .deleteElements(_, let es):
            for e in es { if let o = e.verdict?.target.flatMap(owner) { out.insert(o) } }
        case .addTable, .deleteTable, .deleteForeign: break
        }
        return out.sorted()
    }

    private func reconcileOnce(_ state: ClusterState, dryRun: Bool) throws -> SyncResult {
        let clock = ContinuousClock()
        let start = clock.now
        // Every family's input is checked before anything is read or sent.
        var mark = start
        var phases: [(name: String, seconds: Double)] = []
        func lap(_ name: String) {
            let now = clock.now
            let d = now - mark
            mark = now
            if let i = phases.firstIndex(where: { $0.name == name }) {
                phases[i].seconds += d.seconds
            } else {
                phases.append((name, d.seconds))
            }
        }
        let (proxies, conflicts) = Self.proxyStates(state, config: config)
        lap("translate")
        var families: [FamilySync] = []
        // Each family's UDP frontends before and after, for the stale-flow cleanup.
        var flows: [StaleFlows.Change] = []
        var counted: [ProxyState] = []
        // Both tables as of one generation, which the batch then names (a compare-and-swap).
        let (tables, generation) = try kernel.consistentRead(config.table)
        lap("read")
        for (family, (proxy, lost)) in zip(IPFamily.allCases, zip(proxies, conflicts)) {
            let current = try Self.owned(tables.first { $0.family == family.tableFamily })
            guard config.needsTable(family, hasServices: !proxy.servicePorts.isEmpty) else {
                // Not needed (any more): the table goes, if there is one.
                let tx = current.flatMap(Planner.cleanup) ?? Transaction(family: family.tableFamily, table: config.table)
                families.append(FamilySync(family: family, desired: nil, fragments: [], transaction: tx))
                if !dryRun { flows.append(.init(before: StaleFlows.udpFrontends(current), after: [:])) }
                continue
            }
            counted.append(proxy)
            let translator = Translator(config.translator(for: family))
            let fragments = translator.fragments(for: proxy, previous: current)
            let desired = translator.assemble(fragments)
            lap("translate")
            let transaction = Planner.plan(from: current, to: desired)
            lap("plan")
            families.append(
                FamilySync(
                    family: family, desired: desired, fragments: fragments,
                    transaction: transaction, claims: proxy.claimedFrontends,
                    lost: Dictionary(lost.map { ($0.loser.serviceKey, [$0.frontend]) }, uniquingKeysWith: +)
                        .mapValues(Set.init)))
            if !dryRun { flows.append(.init(before: StaleFlows.udpFrontends(current), after: StaleFlows.udpFrontends(desired))) }
        }
        let txs = families.map(\.transaction).filter { !$0.isEmpty }
        var deleted = 0, commits = 0
        var warning: String?
        if !dryRun {
            commits = try kernel.apply(txs, generation: generation)
            lap("send")
            (deleted, warning) = Self.deleteStaleFlows(kernel, flows)
            if !flows.isEmpty { lap("conntrack") }
        }
        let d = clock.now - start
        let used = counted
        var result = SyncResult(
            services: Set(used.flatMap { $0.servicePorts.map(\.name.serviceKey) }).count,
            servicePorts: used.reduce(0) { $0 + $1.servicePorts.count },
            endpoints: used.reduce(0) { $0 + $1.endpointCount },
            transactions: txs, seconds: d.seconds,
            families: families)
        result.flowsDeleted = deleted
        result.commits = commits
        result.flowWarning = warning
        result.conflicts = Self.merge(conflicts)
        result.phases = phases
        return result
    }

    /// After a committed change: deletes the UDP flows it left pointing at gone endpoints, or
    /// stuck un-NATed on a frontend that now has endpoints. A failure here does not undo the
    /// sync; it is reported.
    /// One change per family: a node port is a frontend in both, with each family's endpoints.
    public static func deleteStaleFlows(_ kernel: Kernel, _ changes: [StaleFlows.Change]) -> (Int, String?) {
        let filters = changes.flatMap { StaleFlows.filters(before: $0.before, after: $0.after) }
        guard !filters.isEmpty else { return (0, nil) }
        do { return (try kernel.deleteStaleFlows(filters), nil) } catch {
            return (0, "stale UDP conntrack entries were not deleted: \(error)")
        }
    }

    /// The table, if svcnat may change it: it carries svcnat's marker, or it is a table of an
    /// earlier svcnat (its dispatch map and chain, no comment), which the next change rebuilds
    /// with the marker. Throws for anyone else's table.
    static func owned(_ table: Ruleset?) throws -> Ruleset? {
        guard let t = table, t.comment != Names.tableComment else { return table }
        if t.comment == nil, t.set(Names.serviceIPs) != nil, t.chain(Names.services) != nil { return t }
        throw ForeignTable(family: t.family.rawValue, table: t.table)
    }

    /// Removes svcnat's tables (both families) and nothing else, in one batch. Returns the
    /// families whose table was there.
    @discardableResult
    public func cleanup() throws -> [TableFamily] {
        var attempt = 1
        while true {
            let (tables, generation) = try kernel.consistentRead(config.table)
            let txs = try tables.map(Self.owned).compactMap(Planner.cleanup)
            guard !txs.isEmpty else { return [] }
            do {
                try kernel.apply(txs, generation: generation)
                return txs.map(\.family)
            } catch is GenerationChanged where attempt < Self.staleTries {
                attempt += 1  // read and plan again
            }
        }
    }
}
