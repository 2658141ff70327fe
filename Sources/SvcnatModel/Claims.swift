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
    public var claimKeys: [String] { claims.map(\.spot.key) }

    /// What `claimKeys` names, as values (no string made per frontend), with how each is
    /// claimed: ClusterIP, ExternalIP, LoadBalancer or NodePort.
    var claims: [(spot: ClaimSpot, kind: String)] {
        frontends.map { (ClaimSpot(ip: $0.ip, port: $0.port, proto: name.proto), $0.kind.rawValue) }
            + (nodePort.map { [(ClaimSpot(ip: nil, port: $0, proto: name.proto), "NodePort")] } ?? [])
    }

    func claimKey(_ f: Frontend) -> String { ClaimSpot(ip: f.ip, port: f.port, proto: name.proto).key }
    func nodePortClaimKey(_ port: UInt16) -> String { ClaimSpot(ip: nil, port: port, proto: name.proto).key }

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

/// A frontend as claims meet on it: an address (none for a node port), a port, a protocol.
struct ClaimSpot: Hashable {
    var ip: IPAddress?
    var port: UInt16
    var proto: TransportProtocol

    /// The spot as `claimKeys` names it.
    var key: String { ip.map { "\($0.withPort(port))/\(proto.rawValue)" } ?? "node port \(port)/\(proto.rawValue)" }
}

extension ProxyState {
    /// This state with every contested frontend given to one Service by the rule above, and
    /// the claims that lost. Pure; `cluster` supplies the Services' ages.
    public func resolvingConflicts(_ cluster: ClusterState) -> (ProxyState, [Conflict]) {
        struct Claim {
            var port: Int
            var kind: String
        }
        // Each spot's first claim; the spots claimed more than once, with all their claims, in
        // the order they became contested. Most spots have one claim, and cost one lookup.
        var first: [ClaimSpot: Claim] = [:]
        first.reserveCapacity(servicePorts.count)
        var contested: [ClaimSpot: [Claim]] = [:]
        var order: [ClaimSpot] = []
        for (i, sp) in servicePorts.enumerated() {
            for (spot, kind) in sp.claims {
                let claim = Claim(port: i, kind: kind)
                guard let earlier = first[spot] else {
                    first[spot] = claim
                    continue
                }
                if contested[spot] == nil {
                    order.append(spot)
                    contested[spot] = [earlier]
                }
                contested[spot]!.append(claim)
            }
        }
        guard !order.isEmpty else { return (self, []) }
        var age: [String: String] = [:]
        for s in cluster.services { if let t = s.meta.creationTimestamp { age[s.meta.key] = t } }
        func rank(_ c: Claim) -> (Int, Int, String, String, String) {
            let n = servicePorts[c.port].name
            let t = age[servicePorts[c.port].serviceKey]
            let allocated = c.kind == FrontendKind.clusterIP.rawValue || c.kind == "NodePort"
            return (allocated ? 0 : 1, t == nil ? 1 : 0, t ?? "", n.namespace, n.name)
        }
        var lost: [Int: Set<String>] = [:]
        var conflicts: [Conflict] = []
        for spot in order {
            let all = contested[spot]!, key = spot.key
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
