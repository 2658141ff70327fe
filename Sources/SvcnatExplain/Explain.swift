import NFTModel
import SvcnatModel

/// `svcnat explain`: the path a new connection to a destination takes through what svcnat holds,
/// read off a ruleset (the kernel's, when the CLI asks): frontend, map entry, chain, endpoints.
public enum Explain {
    public enum Query: Hashable, Sendable {
        case address(IPAddress, port: UInt16, proto: TransportProtocol)
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
        // An IPv6 address goes in brackets: [2001:db8::1]:80.
        if host.hasPrefix("["), host.hasSuffix("]"), let ip = IPAddress(host.dropFirst().dropLast()), ip.family == .v6 {
            guard let p = port.flatMap({ UInt16($0) }) else { return nil }
            return .address(ip, port: p, proto: proto)
        }
        if let ip = IPAddress(host), ip.family == .v4 {
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
    /// An address of the node (`local`) with a node port reaches that node port.
    public static func matches(_ q: Query, in r: Ruleset, local: Set<IPAddress> = []) -> [ServiceView] {
        r.serviceViews.filter { v in
            switch q {
            case .address(let ip, let port, let proto):
                let nodePort = local.contains(ip) && v.frontendKeys.contains(.init(ip: nil, port: port))
                return v.proto == proto && (v.frontendKeys.contains(.init(ip: ip, port: port)) || nodePort)
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
            s +=
                "└─ no endpoints: new connections are rejected at once (\(Names.noEndpointServices) / \(Names.noEndpointNodePorts) "
                + "-> \(Names.rejectChain): TCP reset, ICMP port unreachable)\n"
            return s
        }
        // The map elements that really send each frontend on, as the kernel holds them.
        for line in dispatch(v, in: r) { s += "├─ \(line)\n" }
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

extension Explain {
    /// Where each frontend of the view is sent: `service-ips: 198.18.128.10:80 -> goto svc-...`
    /// for a ClusterIP, `... -> goto ext-...` for external and load-balancer IPs,
    /// `service-nodeports: node port 30080 -> goto ext-...`, read off the maps' elements.
    public static func dispatch(_ v: ServiceView, in r: Ruleset) -> [String] {
        var out: [String] = []
        for (key, text) in zip(v.frontendKeys, v.frontends) {
            let (map, elementKey): (String, ElementKey) =
                key.ip.map { (Names.serviceIPs, [.ip($0), .proto(v.proto), .port(key.port)]) }
                ?? (Names.serviceNodePorts, [.proto(v.proto), .port(key.port)])
            guard let e = r.set(map)?.elements.first(where: { $0.key == elementKey }), let verdict = e.verdict else { continue }
            out.append("\(map): \(text) -> \(verdict)")
        }
        return out
    }

    /// What happens to a connection that matches no Service port, as the rules decide it: a
    /// ClusterIP on a port its Service lacks is rejected, an address of a Service CIDR that
    /// no Service has is dropped, anything else is not svcnat's.
    public static func unmatched(_ q: Query, in tables: [Ruleset]) -> String? {
        guard case .address(let ip, let port, let proto) = q else { return nil }
        for r in tables {
            guard let family = IPFamily(r.family), family == ip.family else { continue }
            if r.set(Names.clusterIPs)?.elements.contains(where: { $0.key == [.ip(ip)] }) == true {
                let owners = Set(
                    r.serviceViews.filter { $0.frontendKeys.contains { $0.ip == ip } }.map { $0.name.split(separator: ":")[0] })
                let whose = owners.isEmpty ? "a Service's ClusterIP" : "the ClusterIP of Service \(owners.sorted().joined(separator: ", "))"
                return "\(ip) is \(whose), which has no port \(port)/\(proto.rawValue): new connections are rejected "
                    + "(\(Names.clusterIPsCheck): ip daddr @\(Names.clusterIPs) goto \(Names.rejectChain): TCP reset, ICMP port unreachable)"
            }
            for rule in r.chain(Names.clusterIPsCheck)?.rules ?? [] {
                guard rule.items.contains(.verdict(.drop)) else { continue }
                for case .ipMatch(.daddr, .eq, let prefix) in rule.items where prefix.contains(ip) {
                    return "\(ip) is in the Service CIDR \(prefix), and no Service has it: packets to it are dropped "
                        + "(\(Names.clusterIPsCheck): \(rule.nftText))"
                }
            }
        }
        return nil
    }

    /// What to say of a Service (namespace/name) that has no rules: why, when its manifest is
    /// at hand (headless, ExternalName, no cluster IP), with how DNS serves it.
    public static func noRules(for service: Service?, namespace: String, name: String) -> String {
        guard let s = service else {
            return "no Service \(namespace)/\(name) in svcnat's tables. A headless Service (clusterIP: None) or one of type ExternalName "
                + "has no rules: DNS serves it (the addresses of its ready pods, or a CNAME to its externalName); "
                + "give -f with its manifest to check"
        }
        if s.type == .externalName {
            return "Service \(s.meta.key) is of type ExternalName: no proxy programs it; DNS answers its name with a CNAME to its "
                + "spec.externalName, and clients connect there"
        }
        if s.isHeadless {
            return "Service \(s.meta.key) is headless (clusterIP: None): no proxy programs it; DNS answers its name with the addresses "
                + "of its ready pods, and clients connect to them directly"
        }
        if s.clusterIPs.isEmpty {
            return "Service \(s.meta.key) has no clusterIP in its manifest, so it has no rules (give it one, or apply with --allocate)"
        }
        return "Service \(s.meta.key) is in the manifests but not in svcnat's tables: apply them (svcnat diff -f shows what would change)"
    }

    /// The addresses a walk for this Service port starts at: the queried frontend, or each of
    /// the port's frontends (node ports at `nodeAddress`, when there is one).
    public static func destinations(_ q: Query, _ v: ServiceView, nodeAddress: IPAddress?) -> [(IPAddress, UInt16)] {
        switch q {
        case .address(let ip, let port, _): return [(ip, port)]
        case .nodePort(let port, _): return nodeAddress.map { [($0, port)] } ?? []
        case .service:
            return v.frontendKeys.compactMap { k in
                if let ip = k.ip { return (ip, k.port) }
                return nodeAddress.map { ($0, k.port) }
            }
        }
    }

    /// The outcomes of one walk as a tree: each fate with its probability, and the rules that
    /// acted on the packet (jumps into chains where nothing happened left out).
    public static func text(_ p: PacketWalk.Packet, _ outcomes: [PacketWalk.Outcome], fromNode: Bool) -> String {
        var s =
            "from \(p.source) to \(p.destination.withPort(p.port))/\(p.proto.lowercased) ("
            + (fromNode ? "starts on the node: output hook" : "arrives from another host or a pod: prerouting hook") + "):\n"
        // The rules every outcome passed are printed once, then each outcome's own.
        let traces = outcomes.map { trimmed($0.trace) }
        var common = 0
        while let first = traces.first, common < first.count, traces.allSatisfy({ common < $0.count && $0[common] == first[common] }) {
            common += 1
        }
        if outcomes.count > 1 { for line in traces[0].prefix(common) { s += "│     \(line)\n" } } else { common = 0 }
        for (i, o) in outcomes.enumerated() {
            let last = i == outcomes.count - 1
            s += "\(last ? "└─" : "├─") \(o.probabilityText)  \(o.summary)\n"
            for line in traces[i].dropFirst(common) { s += "\(last ? "   " : "│  ")   \(line)\n" }
        }
        var notes: [String] = []
        for n in outcomes.flatMap(\.notes) where !notes.contains(n) { notes.append(n) }
        for n in notes { s += "   note: \(n)\n" }
        return s
    }

    public static func json(_ p: PacketWalk.Packet, _ outcomes: [PacketWalk.Outcome], fromNode: Bool) -> JSON {
        .object([
            ("source", .string(p.source.description)),
            ("destination", .string(p.destination.withPort(p.port))),
            ("protocol", .string(p.proto.lowercased)),
            ("startsOnNode", .bool(fromNode)),
            (
                "outcomes",
                .array(
                    outcomes.map { o in
                        var fields: [(String, JSON)] = [("probability", .string(o.probabilityText))]
                        switch o.fate {
                        case .accepted(let ep):
                            fields += [
                                ("fate", .string(ep == nil ? "not-nated" : "dnat")),
                                ("endpoint", ep.map { .string($0.description) } ?? .null)
                            ]
                        case .dropped: fields.append(("fate", .string("dropped")))
                        case .rejected: fields.append(("fate", .string("rejected")))
                        case .unknownRule(let r): fields += [("fate", .string("unknown-rule")), ("rule", .string(r))]
                        }
                        fields += [
                            ("masqueraded", .bool(o.masqueraded)), ("summary", .string(o.summary)),
                            ("trace", .array(trimmed(o.trace).map { .string($0) })), ("notes", .array(o.notes.map { .string($0) }))
                        ]
                        return .object(fields)
                    })
            )
        ])
    }

    /// Drops "chain: ... jump X" (or goto) lines not followed by anything X did.
    static func trimmed(_ trace: [String]) -> [String] {
        trace.enumerated().filter { i, line in
            let words = line.split(separator: " ")
            guard words.count >= 2, ["jump", "goto"].contains(words[words.count - 2]), !words.contains("vmap") else { return true }
            return i + 1 < trace.count && trace[i + 1].hasPrefix(words.last! + ": ")
        }.map(\.1)
    }
}

/// Ingress rules, matched as the Ingress API defines them: a rule's host exactly, or a
/// wildcard `*.example.com` for one label; paths `Exact` (equal) or `Prefix` (whole path
/// elements; `ImplementationSpecific` read as Prefix); the longest matching path wins, Exact
/// before Prefix at equal length; the default backend when nothing matches.
public enum IngressMatch {
    public struct Found: Hashable, Sendable {
        public var ingress: String
        public var rule: String
        public var namespace: String
        public var backend: Ingress.Backend
    }

    public static func find(host: String, path: String, in ingresses: [Ingress]) -> Found? {
        var best: (Found, Int, Bool)?  // found, path length, exact
        for ing in ingresses.sorted(by: { ($0.meta.namespace, $0.meta.name) < ($1.meta.namespace, $1.meta.name) }) {
            for p in ing.paths where hostMatches(p.host, host) {
                guard let len = pathMatch(p.path, type: p.pathType, request: path) else { continue }
                let exact = p.pathType == "Exact"
                if let b = best, (b.1, b.2 ? 1 : 0) >= (len, exact ? 1 : 0) { continue }
                best = (
                    Found(
                        ingress: "\(ing.meta.namespace)/\(ing.meta.name)", rule: "host \(p.host ?? "*") path \(p.path) (\(p.pathType))",
                        namespace: ing.meta.namespace, backend: p.backend), len, exact
                )
            }
        }
        if let best { return best.0 }
        for ing in ingresses.sorted(by: { ($0.meta.namespace, $0.meta.name) < ($1.meta.namespace, $1.meta.name) }) {
            if let d = ing.defaultBackend {
                return Found(
                    ingress: "\(ing.meta.namespace)/\(ing.meta.name)", rule: "default backend", namespace: ing.meta.namespace, backend: d)
            }
        }
        return nil
    }

    static func hostMatches(_ rule: String?, _ host: String) -> Bool {
        guard let rule, !rule.isEmpty else { return true }
        let h = host.lowercased(), r = rule.lowercased()
        if r.hasPrefix("*.") {
            let suffix = r.dropFirst(1)  // ".example.com"
            guard h.hasSuffix(suffix) else { return false }
            let label = h.dropLast(suffix.count)
            return !label.isEmpty && !label.contains(".")
        }
        return h == r
    }

    /// The matched length, or nil.
    static func pathMatch(_ rule: String, type: String, request: String) -> Int? {
        if type == "Exact" { return rule == request ? rule.count : nil }
        let ruleParts = rule.split(separator: "/"), reqParts = request.split(separator: "/")
        guard ruleParts.count <= reqParts.count, zip(ruleParts, reqParts).allSatisfy({ $0 == $1 }) else { return nil }
        return ruleParts.joined(separator: "/").count + 1
    }
}
