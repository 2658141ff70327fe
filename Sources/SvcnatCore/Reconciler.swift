import Foundation
import SvcnatModel
import SvcnatSources

/// Settings that decide the ruleset, from kube-proxy's flags where they exist.
public struct ProxyConfig: Sendable {
    public var table: String
    public var clusterCIDRs: [IPv4Prefix]
    public var masqueradeAll: Bool
    public var nodeName: String?
    public var endpointSelection: EndpointSelection
    public var nodePortAddresses: [IPv4Prefix]
    public var serviceCIDRs: [IPv4Prefix]
    /// This node's zone, for topology hints.
    public var zone: String?

    public init(table: String = "svcnat", clusterCIDRs: [IPv4Prefix] = [], masqueradeAll: Bool = false, nodeName: String? = nil,
                endpointSelection: EndpointSelection = .map, nodePortAddresses: [IPv4Prefix] = [], serviceCIDRs: [IPv4Prefix] = []) {
        self.table = table
        self.clusterCIDRs = clusterCIDRs
        self.masqueradeAll = masqueradeAll
        self.nodeName = nodeName
        self.endpointSelection = endpointSelection
        self.nodePortAddresses = nodePortAddresses
        self.serviceCIDRs = serviceCIDRs
    }

    public var translator: TranslatorConfig {
        TranslatorConfig(table: table, clusterCIDRs: clusterCIDRs, masqueradeAll: masqueradeAll, endpointSelection: endpointSelection,
                         nodePortAddresses: nodePortAddresses, serviceCIDRs: serviceCIDRs)
    }
}

public struct SyncResult: Sendable {
    public var services: Int
    public var servicePorts: Int
    public var endpoints: Int
    public var transaction: Transaction
    public var seconds: Double
    /// What was planned, and each Service port's share of it (the daemon keeps these to plan
    /// later changes incrementally).
    public var desired: Ruleset
    public var fragments: [PortFragment]
    /// Stale UDP conntrack entries deleted after the change, and a warning if that failed.
    public var flowsDeleted = 0
    public var flowWarning: String?
    /// Batches committed (0 for a dry run or no change; 2 when endpoint-map entries only the
    /// old rules used were removed after the change).
    public var commits = 0

    public var summary: String {
        var changes = transaction.isEmpty ? "no changes, the kernel already matches"
            : "\(transaction.messageCount) changes applied in one transaction"
                + (commits > 1 ? " (unreachable endpoint-map entries removed in a second)" : "")
        if flowsDeleted > 0 { changes += ", \(flowsDeleted) stale UDP flows deleted" }
        return "svcnat: \(services) services (\(servicePorts) ports), \(endpoints) endpoints: \(changes) in \(String(format: "%.1f", seconds * 1000)) ms"
    }
}

/// Desired state from the cluster, current state from the kernel, the difference as one batch.
public struct Reconciler {
    public var config: ProxyConfig
    public var kernel: Kernel

    public init(config: ProxyConfig, kernel: Kernel) {
        self.config = config
        self.kernel = kernel
    }

    /// Pure: what svcnat wants in its table for this cluster state. Throws when two Services
    /// claim the same address, protocol and port.
    public static func desired(_ state: ClusterState, config: ProxyConfig, previous: Ruleset? = nil) throws -> (ProxyState, Ruleset) {
        let proxy = try proxyState(state, config: config)
        return (proxy, Translator(config.translator).ruleset(for: proxy, previous: previous))
    }

    /// What the proxy must do for this cluster state; throws when two Services claim the same
    /// frontend, before anything is read from or sent to the kernel.
    static func proxyState(_ state: ClusterState, config: ProxyConfig) throws -> ProxyState {
        let proxy = ProxyState(state, nodeName: config.nodeName, zone: config.zone)
        try checkConflicts(proxy, state)
        return proxy
    }

    public static func checkConflicts(_ proxy: ProxyState, _ state: ClusterState) throws {
        var owner: [String: ServicePortName] = [:]
        var errors: [InputError] = []
        for sp in proxy.servicePorts {
            for f in sp.frontends {
                let key = "\(f.ip):\(f.port)/\(sp.name.proto.rawValue)"
                if let other = owner[key], other.namespace != sp.name.namespace || other.name != sp.name.name {
                    errors.append(InputError(file: "input", object: "Service \(sp.name.namespace)/\(sp.name.name)",
                                             field: "spec.clusterIP",
                                             message: "\(key) is also claimed by Service \(other.namespace)/\(other.name)"))
                }
                owner[key] = sp.name
            }
            if let np = sp.nodePort {
                let key = "node port \(np)/\(sp.name.proto.rawValue)"
                if let other = owner[key], other.namespace != sp.name.namespace || other.name != sp.name.name {
                    errors.append(InputError(file: "input", object: "Service \(sp.name.namespace)/\(sp.name.name)", field: "spec.ports",
                                             message: "\(key) is also claimed by Service \(other.namespace)/\(other.name)"))
                }
                owner[key] = sp.name
            }
        }
        if !errors.isEmpty { throw InputErrors(errors: errors) }
    }

    /// Reads the kernel, plans, and (unless `dryRun`) applies. Returns what was (or would be) sent.
    @discardableResult
    public func reconcile(_ state: ClusterState, dryRun: Bool = false) throws -> SyncResult {
        let clock = ContinuousClock()
        let start = clock.now
        let proxy = try Self.proxyState(state, config: config)
        let current = try kernel.read(table: config.table)
        let translator = Translator(config.translator)
        let fragments = translator.fragments(for: proxy, previous: current)
        let desired = translator.assemble(fragments)
        let tx = Planner.plan(from: current, to: desired)
        var deleted = 0, commits = 0
        var warning: String?
        if !dryRun {
            commits = try kernel.apply(tx)
            (deleted, warning) = Self.deleteStaleFlows(kernel, before: StaleFlows.udpFrontends(current), after: StaleFlows.udpFrontends(desired))
        }
        let d = clock.now - start
        var result = SyncResult(services: proxy.serviceCount, servicePorts: proxy.servicePorts.count, endpoints: proxy.endpointCount,
                                transaction: tx, seconds: Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18,
                                desired: desired, fragments: fragments)
        result.flowsDeleted = deleted
        result.commits = commits
        result.flowWarning = warning
        return result
    }

    /// After a committed change: deletes the UDP flows it left pointing at gone endpoints, or
    /// stuck un-NATed on a frontend that now has endpoints. A failure here does not undo the
    /// sync; it is reported.
    public static func deleteStaleFlows(_ kernel: Kernel, before: [StaleFlows.Frontend: Set<EndpointAddress>],
                                        after: [StaleFlows.Frontend: Set<EndpointAddress>]) -> (Int, String?) {
        let filters = StaleFlows.filters(before: before, after: after)
        guard !filters.isEmpty else { return (0, nil) }
        do { return (try kernel.deleteStaleFlows(filters), nil) }
        catch { return (0, "stale UDP conntrack entries were not deleted: \(error)") }
    }

    /// Removes svcnat's table and nothing else. Returns whether there was one.
    @discardableResult
    public func cleanup() throws -> Bool {
        guard let tx = Planner.cleanup(try kernel.read(table: config.table)) else { return false }
        try kernel.apply(tx)
        return true
    }
}
