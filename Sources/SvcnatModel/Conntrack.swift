import NFTModel

/// Which connection-tracking entries go stale when Services change, as kube-proxy cleans them
/// up. UDP has no connection to end: a client that keeps its socket keeps its conntrack entry,
/// and with it the NAT decision made for its first packet. So after a sync:
/// - flows to a frontend that were DNATed to an endpoint that is gone are deleted (the client's
///   next packet picks a live endpoint at once);
/// - flows to a frontend that had no endpoints (so were not DNATed) are deleted once it has some.
/// TCP is left alone (its connections end and are refused or reset on their own).
public enum StaleFlows {
    /// A UDP frontend: an address and port, or a node port.
    public struct Frontend: Hashable, Sendable {
        public var ip: IPAddress?
        public var port: UInt16
        public init(ip: IPAddress?, port: UInt16) {
            self.ip = ip
            self.port = port
        }
    }

    /// One table's UDP frontends and their endpoints, before and after a change.
    public struct Change: Sendable {
        public var before: [Frontend: Set<EndpointAddress>]
        public var after: [Frontend: Set<EndpointAddress>]
        public init(before: [Frontend: Set<EndpointAddress>], after: [Frontend: Set<EndpointAddress>]) {
            self.before = before
            self.after = after
        }
    }

    /// UDP frontends with their endpoints, from Service ports' states (the daemon's incremental
    /// path; `udpFrontends(_: Ruleset?)` reads the same off a ruleset).
    public static func udpFrontends(_ ports: [ServicePortState]) -> [Frontend: Set<EndpointAddress>] {
        var out: [Frontend: Set<EndpointAddress>] = [:]
        for sp in ports where sp.name.proto == .udp {
            var keys = sp.frontends.map { Frontend(ip: $0.ip, port: $0.port) }
            if let np = sp.nodePort { keys.append(Frontend(ip: nil, port: np)) }
            for k in keys { out[k, default: []].formUnion(sp.endpoints) }
        }
        return out
    }

    public static func filters(before: [Frontend: Set<EndpointAddress>], after: [Frontend: Set<EndpointAddress>]) -> [FlowFilter] {
        var out: [FlowFilter] = []
        for (f, now) in after.sorted(by: { ($0.key.ip?.description ?? "", $0.key.port) < ($1.key.ip?.description ?? "", $1.key.port) }) {
            let was = before[f] ?? []
            for gone in was.subtracting(now).sorted() { out.append(FlowFilter(destination: f.ip, port: f.port, endpoint: gone)) }
            if was.isEmpty && !now.isEmpty { out.append(FlowFilter(destination: f.ip, port: f.port, endpoint: nil)) }
        }
        for (f, was) in before where after[f] == nil {
            for gone in was.sorted() { out.append(FlowFilter(destination: f.ip, port: f.port, endpoint: gone)) }
        }
        return out
    }
}
