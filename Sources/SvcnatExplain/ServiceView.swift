import NFTModel
import SvcnatModel

/// What a Service port looks like in a ruleset, read off the ruleset itself: the frontends that
/// the dispatch maps send to it, its chain, and the endpoints its cascade chooses between with
/// the probability each gets. `svcnat show` prints this from the kernel's ruleset.
public struct ServiceView: Hashable, Sendable {
    public var name: String
    public var proto: TransportProtocol
    public var frontends: [String]
    /// The same frontends as keys (an address and port, or a node port).
    public var frontendKeys: [StaleFlows.Frontend] = []
    public var chain: String?
    /// Each endpoint with its probability as a fraction ("1/3").
    public var endpoints: [(EndpointAddress, String)]

    public static func == (a: Self, b: Self) -> Bool {
        a.name == b.name && a.proto == b.proto && a.frontends == b.frontends && a.chain == b.chain
            && a.endpoints.map(\.0) == b.endpoints.map(\.0) && a.endpoints.map(\.1) == b.endpoints.map(\.1)
    }
    public func hash(into h: inout Hasher) { h.combine(name); h.combine(frontends) }

    public var text: String {
        var s = "\(name) \(proto.lowercased)\n"
        s += "  frontends: \(frontends.joined(separator: ", "))\n"
        if let chain { s += "  chain: \(chain)\n" }
        if endpoints.isEmpty { s += "  endpoints: none (new connections are rejected)\n" }
        for (ep, p) in endpoints { s += "  endpoint \(ep)  probability \(p)\n" }
        return s
    }
}

extension Ruleset {
    public var serviceViews: [ServiceView] { serviceViews(only: nil) }

    /// The views, optionally of one protocol only. Chains and map elements are indexed once, so
    /// this is linear in the size of the ruleset.
    public func serviceViews(only wanted: TransportProtocol?) -> [ServiceView] {
        if let wanted {
            // Nothing of that protocol: no need to index the rest.
            let any = [Names.serviceIPs, Names.serviceNodePorts, Names.noEndpointServices, Names.noEndpointNodePorts].contains { name in
                (set(name)?.elements ?? []).contains { $0.key.contains(.proto(wanted)) }
            }
            if !any { return [] }
        }
        let index = Index(self)
        var views: [String: ServiceView] = [:]
        /// External frontends go through `ext-...`, which goes on to `svc-...`.
        func serviceChain(_ target: String?) -> String? {
            guard let t = target else { return nil }
            return t.hasPrefix("ext-") ? Names.serviceChainPrefix + t.dropFirst(4) : t
        }
        func add(_ e: SetElement, chain: String?) {
            var frontend: String, proto: TransportProtocol, key: StaleFlows.Frontend
            if e.key.count == 3, case .ip(let ip) = e.key[0], case .proto(let p) = e.key[1], case .port(let port) = e.key[2] {
                frontend = ip.withPort(port)
                proto = p
                key = .init(ip: ip, port: port)
            } else if e.key.count == 2, case .proto(let p) = e.key[0], case .port(let port) = e.key[1] {
                frontend = "node port \(port)"
                proto = p
                key = .init(ip: nil, port: port)
            } else {
                return
            }
            if let wanted, wanted != proto { return }
            var name = e.comment ?? chain ?? e.keyText
            if name.hasSuffix(Names.allocatedMark) {
                name.removeLast(Names.allocatedMark.count)
                frontend += " (allocated)"
            }
            let id = "\(name) \(proto)"
            var v = views[id] ?? ServiceView(name: name, proto: proto, frontends: [], chain: nil, endpoints: [])
            v.frontends.append(frontend)
            v.frontendKeys.append(key)
            if let chain, let c = index.chains[chain] { v.chain = chain; v.endpoints = endpoints(of: c, index) }
            views[id] = v
        }
        for set in [Names.serviceIPs, Names.serviceNodePorts] {
            for e in self.set(set)?.elements ?? [] { add(e, chain: serviceChain(e.verdict?.target)) }
        }
        for set in [Names.noEndpointServices, Names.noEndpointNodePorts] {
            for e in self.set(set)?.elements ?? [] { add(e, chain: nil) }
        }
        return views.values.sorted { ($0.name, $0.proto) < ($1.name, $1.proto) }
    }

    /// The endpoints a service chain chooses between: from its endpoint map slot, or its cascade.
    struct Index {
        var chains: [String: Chain] = [:]
        var endpointData: [String: [UInt32: EndpointAddress]] = [:]
        init(_ r: Ruleset) {
            for c in r.chains { chains[c.name] = c }
            for s in r.sets where s.name.hasPrefix(Names.endpointMapPrefix) {
                var m: [UInt32: EndpointAddress] = [:]
                for e in s.elements {
                    if case .integer(let k)? = e.key.first, let d = e.data, d.count == 2, case .ip(let ip) = d[0],
                        case .port(let port) = d[1]
                    {
                        m[k] = EndpointAddress(ip: ip, port: port)
                    }
                }
                endpointData[s.name] = m
            }
        }
    }

    func endpoints(of c: Chain, _ index: Index) -> [(EndpointAddress, String)] {
        for r in c.rules {
            for case .dnatFromMap(let n, let base, let map, _) in r.items {
                // Each endpoint's share is read off the map: the keys of base..<base+n it holds,
                // out of n (a key held twice, or not at all, shows, rather than 1/n assumed).
                let data = index.endpointData[map] ?? [:]
                var order: [EndpointAddress] = [], count: [EndpointAddress: UInt32] = [:]
                for i in 0..<n {
                    guard let ep = data[base + i] else { continue }
                    if count[ep] == nil { order.append(ep) }
                    count[ep, default: 0] += 1
                }
                return order.map { ($0, Self.fraction(count[$0]!, n)) }
            }
        }
        // Session affinity: the endpoints are in the chains the random choice goes to.
        let targets = c.rules.flatMap(\.chainTargets).filter { $0.hasPrefix("ep-") }
        if !targets.isEmpty {
            var seen = Set<String>()
            let eps = targets.filter { seen.insert($0).inserted }.compactMap { t -> EndpointAddress? in
                for r in index.chains[t]?.rules ?? [] {
                    for case .dnat(let ip, let port) in r.items { return EndpointAddress(ip: ip, port: port) }
                }
                return nil
            }
            return eps.map { ($0, "1/\(eps.count)") }
        }
        return Self.cascade(c.rules)
    }

    /// k/n in lowest terms ("1/3", "2/3", "1/1").
    static func fraction(_ k: UInt32, _ n: UInt32) -> String {
        var a = k, b = n
        while b != 0 { (a, b) = (b, a % b) }
        let g = max(a, 1)
        return "\(k / g)/\(n / g)"
    }

    /// Reads the probability cascade: rule i of n carries `numgen random mod (n-i) == 0`; the
    /// chance to reach it is the product of the misses before it.
    static func cascade(_ rules: [Rule]) -> [(EndpointAddress, String)] {
        var out: [(EndpointAddress, Int)] = []
        for r in rules {
            for case .dnat(let ip, let port) in r.items { out.append((EndpointAddress(ip: ip, port: port), 0)) }
        }
        // With the cascade each endpoint gets 1/n; check it rather than assume it.
        let n = out.count
        var remaining = 1.0, shares: [String] = []
        for r in rules where r.items.contains(where: { if case .dnat = $0 { true } else { false } }) {
            let mod = r.items.compactMap { if case .numgenIsZero(let m) = $0 { Int(m) } else { nil } }.first ?? 1
            let p = remaining / Double(mod)
            remaining -= p
            shares.append(abs(p - 1.0 / Double(n)) < 1e-9 ? "1/\(n)" : String(p))
        }
        return zip(out.map(\.0), shares).map { ($0, $1) }
    }
}

extension Array where Element == Ruleset {
    /// svcnat's tables as JSON: `ruleset` is the IPv4 table (null when absent), `ip6Ruleset` the
    /// IPv6 one when there is one, `services` both tables' Service ports.
    public var json: JSON {
        var fields: [(String, JSON)] = [("ruleset", first { $0.family == .ip }?.json ?? .null)]
        if let v6 = first(where: { $0.family == .ip6 }) { fields.append(("ip6Ruleset", v6.json)) }
        fields.append(("services", .array(flatMap(\.serviceViews).map(\.json))))
        return .object(fields)
    }
}

extension ServiceView {
    public var json: JSON {
        .object([
            ("service", .string(name)),
            ("protocol", .string(proto.lowercased)),
            ("frontends", .array(frontends.map { .string($0) })),
            ("chain", chain.map { .string($0) } ?? .null),
            ("endpoints", .array(endpoints.map { .object([("address", .string($0.description)), ("probability", .string($1))]) }))
        ])
    }
}

extension StaleFlows {
    /// UDP frontends with their endpoints, read off a ruleset (what is or will be in the kernel).
    public static func udpFrontends(_ r: Ruleset?) -> [Frontend: Set<EndpointAddress>] {
        guard let r else { return [:] }
        var out: [Frontend: Set<EndpointAddress>] = [:]
        for v in r.serviceViews(only: .udp) {
            for f in v.frontendKeys { out[f, default: []].formUnion(v.endpoints.map(\.0)) }
        }
        return out
    }
}
