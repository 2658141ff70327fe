/// `svcnat explain`: the path a new connection to a destination takes through what svcnat holds,
/// read off a ruleset (the kernel's, when the CLI asks): frontend, map entry, chain, endpoints.
public enum Explain {
    public enum Query: Hashable, Sendable {
        case address(IPv4Address, port: UInt16, proto: TransportProtocol)
        case nodePort(UInt16, proto: TransportProtocol)
        /// ns/name, optionally one port (by name or number).
        case service(namespace: String, name: String, port: String?)
    }

    /// Parses `IP:PORT[/PROTO]`, `:PORT[/PROTO]` (a node port), `namespace/name[:port]` or a DNS
    /// name `name.namespace[.svc.cluster.local][:port]`.
    public static func parse(_ text: String) -> Query? {
        var body = Substring(text), proto = TransportProtocol.tcp
        if let slash = body.lastIndex(of: "/"), let p = TransportProtocol(rawValue: body[body.index(after: slash)...].uppercased()) {
            proto = p
            body = body[..<slash]
        }
        let (host, port): (Substring, Substring?) = {
            guard let colon = body.lastIndex(of: ":") else { return (body, nil) }
            return (body[..<colon], body[body.index(after: colon)...])
        }()
        if host.isEmpty, let p = port.flatMap({ UInt16($0) }) { return .nodePort(p, proto: proto) }
        if let ip = IPv4Address(host) {
            guard let p = port.flatMap({ UInt16($0) }) else { return nil }
            return .address(ip, port: p, proto: proto)
        }
        let portName = port.map(String.init)
        if host.contains("/") {
            let parts = host.split(separator: "/")
            guard parts.count == 2 else { return nil }
            return .service(namespace: String(parts[0]), name: String(parts[1]), port: portName)
        }
        let labels = host.split(separator: ".")
        guard labels.count >= 2 else { return nil }
        return .service(namespace: String(labels[1]), name: String(labels[0]), port: portName)
    }

    /// The Service ports the query reaches, with how each frontend is matched.
    public static func matches(_ q: Query, in r: Ruleset) -> [ServiceView] {
        r.serviceViews.filter { v in
            switch q {
            case .address(let ip, let port, let proto):
                return v.proto == proto && v.frontendKeys.contains(.init(ip: ip, port: port))
            case .nodePort(let port, let proto):
                return v.proto == proto && v.frontendKeys.contains(.init(ip: nil, port: port))
            case .service(let ns, let name, let port):
                guard v.name.hasPrefix("\(ns)/\(name)") else { return false }
                let rest = v.name.dropFirst("\(ns)/\(name)".count)
                guard rest.isEmpty || rest.hasPrefix(":") else { return false }
                guard let port else { return true }
                return rest == ":\(port)" || v.frontendKeys.contains { $0.ip != nil && String($0.port) == port }
            }
        }
    }

    /// A readable tree of one Service port's path.
    public static func text(_ v: ServiceView, in r: Ruleset) -> String {
        var s = "\(v.name) (\(v.proto.lowercased))\n"
        s += "├─ frontends: \(v.frontends.joined(separator: ", "))\n"
        guard let chainName = v.chain, let chain = r.chain(chainName) else {
            s += "└─ no endpoints: new connections are rejected at once (\(Names.noEndpointServices) / \(Names.noEndpointNodePorts) -> \(Names.rejectChain): TCP reset, ICMP port unreachable)\n"
            return s
        }
        s += "├─ \(Names.serviceIPs) / \(Names.serviceNodePorts) -> goto \(chainName)\n"
        let ext = Names.externalChain(chainName)
        if let e = r.chain(ext) {
            s += "├─ external frontends (external IPs, load-balancer IPs, node ports) -> \(ext):\n"
            for rule in e.rules { s += "│    \(rule.nftText)\n" }
        }
        s += "├─ chain \(chainName):\n"
        for rule in chain.rules { s += "│    \(rule.nftText)\n" }
        if chain.rules.contains(where: { $0.items.contains { if case .saddrInSet = $0 { true } else { false } } }) {
            s += "├─ session affinity: a client seen before goes back to its endpoint until its entry times out\n"
        }
        s += "└─ endpoints (each new connection, for traffic the chain does not drop):\n"
        for (i, (ep, p)) in v.endpoints.enumerated() {
            s += "   \(i == v.endpoints.count - 1 ? "└─" : "├─") \(ep)  probability \(p)\n"
        }
        return s
    }
}
