import NFTModel

/// Two Services that claim one frontend (an address, port and protocol, or a node port and
/// protocol). The API server lets a user put any address in `externalIPs` or a load balancer's
/// status, so a tenant can claim another Service's ClusterIP (CVE-2020-8554). svcnat decides
/// every such clash by one rule, the same in every sync, and programs all else:
/// - a ClusterIP or node port, which the API server allocates, wins over an external or
///   load-balancer IP, which a user writes;
/// - between claims of the same kind, the older Service wins (`creationTimestamp`; a Service
///   with one before a Service without), then the lower namespace/name.
///
/// The loser keeps its other frontends; only the contested one is left out of its rules.
public struct Conflict: Hashable, Sendable, CustomStringConvertible {
    public var loser: ServicePortName
    public var winner: ServicePortName
    /// `198.18.100.10:80/TCP` or `node port 30080/TCP`.
    public var frontend: String
    /// How the loser claimed it: ClusterIP, ExternalIP, LoadBalancer or NodePort.
    public var claim: String

    public var description: String {
        "Service \(loser.namespace)/\(loser.name) port \(loser.port.isEmpty ? "(unnamed)" : loser.port): "
            + "its \(claim) \(frontend) is skipped, Service \(winner.namespace)/\(winner.name) holds it"
    }
}

extension ServicePortState {
    /// The key of each frontend this port claims: `ip:port/PROTO` per frontend, then
    /// `node port N/PROTO`.
    public var claimKeys: [String] { frontends.map(claimKey) + (nodePort.map { [nodePortClaimKey($0)] } ?? []) }

    func claimKey(_ f: Frontend) -> String { "\(f.ip.withPort(f.port))/\(name.proto.rawValue)" }
    func nodePortClaimKey(_ port: UInt16) -> String { "node port \(port)/\(name.proto.rawValue)" }

    /// This port without the claims in `lost`.
    public func dropping(_ lost: Set<String>) -> ServicePortState {
        guard !lost.isEmpty else { return self }
        var out = self
        out.frontends = frontends.filter { !lost.contains(claimKey($0)) }
        if let np = nodePort, lost.contains(nodePortClaimKey(np)) { out.nodePort = nil }
        return out
    }

    var serviceKey: String { name.serviceKey }
}

extension ProxyState {
    /// This state with every contested frontend given to one Service by the rule above, and
    /// the claims that lost. Pure; `cluster` supplies the Services' ages.
    public func resolvingConflicts(_ cluster: ClusterState) -> (ProxyState, [Conflict]) {
        var age: [String: String] = [:]
        for s in cluster.services { if let t = s.meta.creationTimestamp { age[s.meta.key] = t } }
        struct Claim {
            var port: Int
            var kind: String
        }
        func rank(_ c: Claim) -> (Int, Int, String, String, String) {
            let n = servicePorts[c.port].name
            let t = age[servicePorts[c.port].serviceKey]
            let allocated = c.kind == FrontendKind.clusterIP.rawValue || c.kind == "NodePort"
            return (allocated ? 0 : 1, t == nil ? 1 : 0, t ?? "", n.namespace, n.name)
        }
        var claims: [String: [Claim]] = [:]
        var order: [String] = []
        for (i, sp) in servicePorts.enumerated() {
            let kinds = sp.frontends.map(\.kind.rawValue) + (sp.nodePort == nil ? [] : ["NodePort"])
            for (key, kind) in zip(sp.claimKeys, kinds) {
                if claims[key] == nil { order.append(key) }
                claims[key, default: []].append(Claim(port: i, kind: kind))
            }
        }
        var lost: [Int: Set<String>] = [:]
        var conflicts: [Conflict] = []
        for key in order {
            guard let all = claims[key], all.count > 1 else { continue }
            let winner = all.min { rank($0) < rank($1) }!
            let w = servicePorts[winner.port]
            for c in all {
                let n = servicePorts[c.port]
                // One Service may list an address twice (its ClusterIP among its external IPs).
                if n.serviceKey == w.serviceKey { continue }
                lost[c.port, default: []].insert(key)
                conflicts.append(Conflict(loser: n.name, winner: w.name, frontend: key, claim: c.kind))
            }
        }
        var out = self
        for (i, keys) in lost { out.servicePorts[i] = servicePorts[i].dropping(keys) }
        return (out, conflicts.sorted { ($0.loser, $0.frontend) < ($1.loser, $1.frontend) })
    }

    /// Every frontend key this state programs, with the Service (namespace/name) that holds it:
    /// what a partial sync checks a changed Service's new claims against.
    public var claimedFrontends: [String: String] {
        var out: [String: String] = [:]
        for sp in servicePorts { for k in sp.claimKeys { out[k] = sp.serviceKey } }
        return out
    }
}
