/// Turns a `ProxyState` into the ruleset svcnat owns. Pure: the same state and configuration
/// always give the same ruleset, in the same order.
///
/// The shape (see README "How the rules look"):
/// - static base chains hook nat prerouting/output/postrouting and filter forward/output;
/// - one verdict map `service-ips` keyed by `daddr . l4proto . dport` sends each frontend to its
///   Service port's chain, so the per-packet cost does not grow with the number of Services;
/// - a Service port's chain marks traffic for masquerade when it comes from outside the cluster
///   CIDR, then picks an endpoint with the probability cascade: rule i of n fires with
///   probability 1/(n-i), the last always, and DNATs inline (no per-endpoint chains: each jump
///   the kernel must loop-check costs commit time);
/// - frontends without endpoints go in `no-endpoint-services`, which rejects new connections
///   in the filter hooks before NAT;
/// - postrouting masquerades marked traffic and hairpin traffic (a pod reaching itself), the
///   latter found by one lookup of `saddr . daddr` in the `hairpin` set.
public struct TranslatorConfig: Hashable, Sendable {
    public var table: String
    public var clusterCIDRs: [IPv4Prefix]
    public var masqueradeAll: Bool
    /// kube-proxy's --masquerade-bit (default 14 -> 0x4000).
    public var masqueradeMark: UInt32
    public var endpointSelection: EndpointSelection

    public init(table: String = "svcnat", clusterCIDRs: [IPv4Prefix] = [], masqueradeAll: Bool = false,
                masqueradeBit: Int = 14, endpointSelection: EndpointSelection = .map) {
        self.table = table
        self.clusterCIDRs = clusterCIDRs
        self.masqueradeAll = masqueradeAll
        self.masqueradeMark = 1 << UInt32(masqueradeBit)
        self.endpointSelection = endpointSelection
    }
}

/// How a Service port's chain picks an endpoint; both give each endpoint exactly 1/n.
public enum EndpointSelection: String, Hashable, Sendable, CaseIterable {
    /// One rule: `dnat ip to numgen random mod n offset base map @endpoints-K`, the endpoints
    /// being elements of one of 256 shared maps. Swapping an endpoint is an element update.
    case map
    /// The probability cascade: rule i of n matches with probability 1/(n-i), DNAT inline.
    case cascade
}

public enum Names {
    public static let serviceIPs = "service-ips"
    public static let noEndpointServices = "no-endpoint-services"
    public static let hairpin = "hairpin"
    public static let services = "services"
    public static let masquerading = "masquerading"
    public static let endpointsCheck = "service-endpoints-check"
    public static let rejectChain = "reject-chain"
    public static let serviceChainPrefix = "svc-"
    public static let endpointMapPrefix = "endpoints-"
    public static let endpointShards = 256

    public static func endpointMap(_ shard: Int) -> String { "\(endpointMapPrefix)\(shard)" }

    /// `svc-<namespace>/<name>/<protocol>/<port name, or number when unnamed>`: readable, unique
    /// (Kubernetes names cannot hold "/", and a port name always has a letter), and at most 152
    /// bytes, within nftables' 256.
    public static func serviceChain(_ spn: ServicePortName, port: UInt16) -> String {
        "\(serviceChainPrefix)\(spn.namespace)/\(spn.name)/\(spn.proto.lowercased)/\(spn.port.isEmpty ? String(port) : spn.port)"
    }
}

public struct Translator: Sendable {
    public var config: TranslatorConfig
    public init(_ config: TranslatorConfig) { self.config = config }

    static let dispatchKey: [KeyField] = [.ipv4Addr, .inetProto, .inetService]

    /// The ruleset for `state`. `previous` (what the kernel or the cache holds) keeps each
    /// Service port's place in the endpoint maps, so one Service's change moves no other.
    public func ruleset(for state: ProxyState, previous: Ruleset? = nil) -> Ruleset {
        assemble(fragments(for: state, previous: previous))
    }

    /// Each Service port's share of the ruleset.
    public func fragments(for state: ProxyState, previous: Ruleset? = nil) -> [PortFragment] {
        let slots = config.endpointSelection == .map
            ? EndpointSlots.allocate(state.servicePorts.filter { !$0.endpoints.isEmpty }.map { (PortFragment.key($0), UInt32($0.endpoints.count)) },
                                     previous: previous.map(EndpointSlots.read) ?? [:])
            : [:]
        return state.servicePorts.map { fragment($0, slot: slots[PortFragment.key($0)]) }
    }

    /// One Service port's chain and elements. Pure.
    public func fragment(_ sp: ServicePortState, slot: EndpointSlot?) -> PortFragment {
        let comment = sp.name.description
        let chain = PortFragment.key(sp)
        var f = PortFragment(name: sp.name, key: chain)
        if sp.endpoints.isEmpty {
            f.rejects = sp.frontends.map {
                SetElement(key: [.ipv4($0.ip), .proto(sp.name.proto), .port($0.port)], verdict: .goto(Names.rejectChain), comment: comment)
            }
            return f
        }
        f.dispatch = sp.frontends.map {
            SetElement(key: [.ipv4($0.ip), .proto(sp.name.proto), .port($0.port)], verdict: .goto(chain), comment: comment)
        }
        f.endpointIPs = sp.endpoints.map(\.ip)
        if let slot {
            f.slot = slot
            f.endpointElements = sp.endpoints.enumerated().map { i, ep in
                SetElement(key: [.integer(slot.base + UInt32(i))], data: [.ipv4(ep.ip), .port(ep.port)])
            }
            f.chain = Chain(name: chain, rules: serviceRules(sp, slot: (Names.endpointMap(slot.shard), slot.base)))
        } else {
            f.chain = Chain(name: chain, rules: serviceRules(sp, slot: nil))
        }
        return f
    }

    /// The whole table from the ports' fragments.
    public func assemble(_ fragments: [PortFragment]) -> Ruleset {
        var serviceIPs = NamedSet(name: Names.serviceIPs, key: Self.dispatchKey, data: .verdict)
        var noEndpoints = NamedSet(name: Names.noEndpointServices, key: Self.dispatchKey, data: .verdict)
        var hairpin = NamedSet(name: Names.hairpin, key: [.ipv4Addr, .ipv4Addr], data: .none)
        var endpointMaps: [Int: NamedSet] = [:]
        var hairpinIPs = Set<IPv4Address>()
        var chains: [Chain] = []
        for f in fragments {
            serviceIPs.elements += f.dispatch
            noEndpoints.elements += f.rejects
            if let c = f.chain { chains.append(c) }
            hairpinIPs.formUnion(f.endpointIPs)
            if let slot = f.slot {
                endpointMaps[slot.shard, default: Self.endpointMap(Names.endpointMap(slot.shard))].elements += f.endpointElements
            }
        }
        hairpin.elements = hairpinIPs.sorted().map { SetElement(key: [.ipv4($0), .ipv4($0)]) }
        serviceIPs.elements.sort { $0.key.lexicographicallyPrecedes($1.key) }
        noEndpoints.elements.sort { $0.key.lexicographicallyPrecedes($1.key) }
        chains.sort { $0.name < $1.name }
        let maps = endpointMaps.keys.sorted().map { k -> NamedSet in
            var m = endpointMaps[k]!
            m.elements.sort { $0.key.lexicographicallyPrecedes($1.key) }
            return m
        }
        return Ruleset(family: .ip, table: config.table, sets: [serviceIPs, noEndpoints, hairpin] + maps,
                       chains: staticChains() + chains)
    }

    public static func endpointMap(_ name: String) -> NamedSet {
        NamedSet(name: name, key: [.integer], data: .values([.ipv4Addr, .inetService]),
                 typeof: "numgen random mod 1 : ip daddr . th dport")
    }

    /// The mark rule (if any), then the endpoint choice: one map lookup, or the cascade.
    func serviceRules(_ sp: ServicePortState, slot: (map: String, base: UInt32)?) -> [Rule] {
        var rules: [Rule] = []
        if config.masqueradeAll {
            rules.append(Rule([.markSetOr(config.masqueradeMark)]))
        } else if !config.clusterCIDRs.isEmpty {
            rules.append(Rule(config.clusterCIDRs.map { .saddrNotIn($0) } + [.markSetOr(config.masqueradeMark)]))
        }
        let n = sp.endpoints.count
        if let slot {
            rules.append(Rule([.l4proto(sp.name.proto), .dnatFromMap(modulus: UInt32(n), offset: slot.base, map: slot.map)]))
            return rules
        }
        for (i, ep) in sp.endpoints.enumerated() {
            var items: [RuleItem] = []
            if i < n - 1 { items.append(.numgenIsZero(modulus: UInt32(n - i))) }
            items += [.l4proto(sp.name.proto), .dnat(ep.ip, port: ep.port)]
            rules.append(Rule(items))
        }
        return rules
    }

    /// kube-proxy's hook priorities: filter checks at -110 run before DNAT at -100 (dstnat).
    func staticChains() -> [Chain] {
        let toServices = Rule([.verdict(.jump(Names.services))])
        let endpointsCheck = Rule([.ctStateNew, .verdict(.jump(Names.endpointsCheck))])
        return [
            Chain(name: "filter-forward", base: BaseChain(type: .filter, hook: .forward, priority: -110), rules: [endpointsCheck]),
            Chain(name: "filter-output", base: BaseChain(type: .filter, hook: .output, priority: -110), rules: [endpointsCheck]),
            Chain(name: "nat-prerouting", base: BaseChain(type: .nat, hook: .prerouting, priority: -100), rules: [toServices]),
            Chain(name: "nat-output", base: BaseChain(type: .nat, hook: .output, priority: -100), rules: [toServices]),
            Chain(name: "nat-postrouting", base: BaseChain(type: .nat, hook: .postrouting, priority: 100),
                  rules: [Rule([.verdict(.jump(Names.masquerading))])]),
            Chain(name: Names.endpointsCheck, rules: [Rule([.dispatch(map: Names.noEndpointServices)])]),
            Chain(name: Names.rejectChain, rules: [Rule([.l4proto(.tcp), .reject(.tcpReset)]),
                                                   Rule([.reject(.icmpPortUnreachable)])]),
            Chain(name: Names.services, rules: [Rule([.dispatch(map: Names.serviceIPs)])]),
            Chain(name: Names.masquerading, rules: [
                Rule([.ctStatusDNAT, .saddrDaddrIn(set: Names.hairpin), .masquerade(fullyRandom: true)]),
                Rule([.markIsClear(config.masqueradeMark), .verdict(.return)]),
                Rule([.markSetXor(config.masqueradeMark)]),
                Rule([.masquerade(fullyRandom: true)]),
            ]),
        ]
    }
}
