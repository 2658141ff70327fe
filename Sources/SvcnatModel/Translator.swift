import NFTModel

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
    public var clusterCIDRs: [IPPrefix]
    public var masqueradeAll: Bool
    /// kube-proxy's --masquerade-bit (default 14 -> 0x4000).
    public var masqueradeMark: UInt32
    public var endpointSelection: EndpointSelection
    /// kube-proxy's --nodeport-addresses; empty means every local address but 127.0.0.0/8.
    public var nodePortAddresses: [IPPrefix]
    /// The Service CIDRs: traffic to an address in them that no Service has is dropped.
    public var serviceCIDRs: [IPPrefix]
    /// The family this table serves (`ip svcnat` or `ip6 svcnat`). The prefixes above may be of
    /// both families; each table uses its own.
    public var family: IPFamily
    /// The node's own addresses (not loopback). A Service whose loadBalancerSourceRanges hold
    /// one of them also admits its load-balancer IPs as sources, as kube-proxy does for its
    /// node IP: a VIP-like load balancer's address on the node reaches it from itself.
    public var nodeIPs: [IPAddress] = []

    public init(
        table: String = "svcnat", clusterCIDRs: [IPPrefix] = [], masqueradeAll: Bool = false,
        masqueradeBit: Int = 14, endpointSelection: EndpointSelection = .map,
        nodePortAddresses: [IPPrefix] = [], serviceCIDRs: [IPPrefix] = [], family: IPFamily = .v4
    ) {
        self.table = table
        self.clusterCIDRs = clusterCIDRs
        self.masqueradeAll = masqueradeAll
        self.masqueradeMark = 1 << UInt32(masqueradeBit)
        self.endpointSelection = endpointSelection
        self.nodePortAddresses = nodePortAddresses
        self.serviceCIDRs = serviceCIDRs
        self.family = family
    }

    /// Whether these settings alone give the family's table something to do (a Service CIDR to
    /// guard, or node port addresses of it).
    public var hasPrefixes: Bool {
        (serviceCIDRs + nodePortAddresses).contains { $0.family == family }
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
    public static let serviceNodePorts = "service-nodeports"
    public static let noEndpointNodePorts = "no-endpoint-nodeports"
    public static let firewallIPs = "firewall-ips"
    public static let clusterIPs = "cluster-ips"
    public static let hairpin = "hairpin"
    public static let services = "services"
    public static let masquerading = "masquerading"
    public static let endpointsCheck = "service-endpoints-check"
    public static let nodePortsCheck = "nodeport-endpoints-check"
    public static let firewallCheck = "firewall-check"
    public static let clusterIPsCheck = "cluster-ips-check"
    public static let rejectChain = "reject-chain"
    /// Ends the comment of a map element whose address or node port svcnat allocated.
    public static let allocatedMark = " (allocated)"
    /// The flags the table was applied with (`AppliedFlags`).
    public static let flags = "applied-flags"
    public static let serviceChainPrefix = "svc-"
    public static let endpointMapPrefix = "endpoints-"
    public static let endpointShards = 256

    public static func endpointMap(_ shard: Int) -> String { "\(endpointMapPrefix)\(shard)" }

    /// The table's comment: the marker that says the table is svcnat's. svcnat changes or
    /// removes only tables that carry it.
    public static let tableComment = "managed by svcnat"

    /// nftables keeps at most 128 bytes of comment (nft refuses to load a longer one).
    public static let commentLimit = 128

    /// `text` within `commentLimit` bytes: a longer one keeps its start and end around "...",
    /// cut between characters, so `ns/name:port` stays recognisable.
    public static func comment(_ text: String) -> String {
        guard text.utf8.count > commentLimit else { return text }
        let room = commentLimit - 3
        var head = "", tail = ""
        for c in text {
            guard head.utf8.count + c.utf8.count <= room / 2 else { break }
            head.append(c)
        }
        for c in text.reversed() {
            guard head.utf8.count + tail.utf8.count + c.utf8.count <= room else { break }
            tail.insert(c, at: tail.startIndex)
        }
        return head + "..." + tail
    }

    /// The chain and the client set of one endpoint of a Service port with session affinity:
    /// `ep-<namespace>/<name>/<protocol>/<port>__<ip>/<port>` and `aff-...` alike.
    public static func affinity(_ serviceChain: String, _ ep: EndpointAddress) -> (chain: String, set: String) {
        // nft reads ":" as a separator, so an IPv6 address is written with "." in names.
        let ip = String(ep.ip.description.map { $0 == ":" ? "." : $0 })
        let tail = serviceChain.dropFirst(serviceChainPrefix.count) + "__\(ip)/\(ep.port)"
        return ("ep-" + tail, "aff-" + tail)
    }

    /// The Service (namespace/name) whose chain or set this is, read off the name: every
    /// per-port object is `<kind>-<namespace>/<name>/...`. nil for shared objects.
    public static func service(ofObject name: String) -> String? {
        for p in [serviceChainPrefix, "ext-", "fw-", "ep-", "aff-"] where name.hasPrefix(p) {
            let parts = name.dropFirst(p.count).split(separator: "/", maxSplits: 2)
            if parts.count >= 2 { return "\(parts[0])/\(parts[1])" }
        }
        return nil
    }

    /// `ext-...`: where external IPs, load-balancer IPs and node ports enter (marks for
    /// masquerade, then the service chain). `fw-...`: the load-balancer source ranges.
    public static func externalChain(_ serviceChain: String) -> String { "ext-" + serviceChain.dropFirst(serviceChainPrefix.count) }
    public static func firewallChain(_ serviceChain: String) -> String { "fw-" + serviceChain.dropFirst(serviceChainPrefix.count) }

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

    var family: IPFamily { config.family }
    var dispatchKey: [KeyField] { [family.keyField, .inetProto, .inetService] }
    var clusterCIDRs: [IPPrefix] { config.clusterCIDRs.filter { $0.family == family } }

    /// The ruleset for `state`. `previous` (what the kernel or the cache holds) keeps each
    /// Service port's place in the endpoint maps, so one Service's change moves no other.
    public func ruleset(for state: ProxyState, previous: Ruleset? = nil) -> Ruleset {
        assemble(fragments(for: state, previous: previous))
    }

    /// Each Service port's share of the ruleset.
    public func fragments(for state: ProxyState, previous: Ruleset? = nil) -> [PortFragment] {
        let slots =
            config.endpointSelection == .map
            ? EndpointSlots.allocate(
                state.servicePorts.filter { !$0.endpoints.isEmpty }.map { (PortFragment.key($0), UInt32($0.endpoints.count)) },
                previous: previous.map(EndpointSlots.read) ?? [:])
            : [:]
        return Parallel.map(state.servicePorts) { fragment($0, slot: slots[PortFragment.key($0)]) }
    }

    /// One Service port's chains and elements. Pure.
    public func fragment(_ sp: ServicePortState, slot: EndpointSlot?) -> PortFragment {
        let comment = Names.comment(sp.name.description)
        let chain = PortFragment.key(sp)
        let ext = Names.externalChain(chain), fw = Names.firewallChain(chain)
        let proto = sp.name.proto
        let served = !sp.endpoints.isEmpty
        var f = PortFragment(name: sp.name, key: chain)
        // Kept for what the daemon needs after a change: UDP flows to clean, health checks.
        if sp.name.proto == .udp || sp.healthCheckNodePort != nil { f.state = sp }
        func add(_ set: String, _ key: ElementKey, _ verdict: Verdict, allocated: Bool = false) {
            let c = allocated ? Names.comment(sp.name.description + Names.allocatedMark) : comment
            f.elements[set, default: []].append(SetElement(key: key, verdict: verdict, comment: c))
        }
        let reject = Verdict.goto(Names.rejectChain)
        if let c = sp.clusterIP {
            add(
                served ? Names.serviceIPs : Names.noEndpointServices, [.ip(c.ip), .proto(proto), .port(c.port)],
                served ? .goto(chain) : reject, allocated: sp.clusterIPAllocated)
            f.shared[Names.clusterIPs, default: []].append(SetElement(key: [.ip(c.ip)]))
        }
        for e in sp.externalFrontends {
            add(
                served ? Names.serviceIPs : Names.noEndpointServices, [.ip(e.ip), .proto(proto), .port(e.port)],
                served ? .goto(ext) : reject)
            if e.kind == .loadBalancer && !sp.sourceRanges.isEmpty {
                add(Names.firewallIPs, [.ip(e.ip), .proto(proto), .port(e.port)], .goto(fw))
            }
        }
        if let np = sp.nodePort {
            add(
                served ? Names.serviceNodePorts : Names.noEndpointNodePorts, [.proto(proto), .port(np)], served ? .goto(ext) : reject,
                allocated: sp.nodePortAllocated)
        }
        if !sp.sourceRanges.isEmpty && sp.externalFrontends.contains(where: { $0.kind == .loadBalancer }) {
            f.chains.append(
                Chain(
                    name: fw,
                    rules: sp.sourceRanges.map { Rule([.ipMatch(.saddr, .eq, $0), .verdict(.return)]) }
                        + lbSourcesAllowedFromNode(sp).map {
                            Rule([.ipMatch(.saddr, .eq, IPPrefix(address: $0, length: family.bits)), .verdict(.return)])
                        }
                        + [Rule([.verdict(.drop)])]))
        }
        guard served else { return f }
        f.endpointCount = sp.endpoints.count
        f.shared[Names.hairpin] = sp.endpoints.map { SetElement(key: [.ip($0.ip), .ip($0.ip)]) }
        var mapSlot: (map: String, base: UInt32)?
        let external = !sp.externalFrontends.isEmpty || sp.nodePort != nil
        // A slot no rule would use (internal traffic local-only with no local endpoint, and no
        // external frontend) is not kept.
        let slotUsed = (external || !sp.internalLocal || sp.localEndpointCount > 0) && sp.affinityTimeout == nil
        if let slot, slotUsed {
            f.slot = slot
            mapSlot = (Names.endpointMap(slot.shard), slot.base)
            f.elements[Names.endpointMap(slot.shard)] = sp.endpoints.enumerated().map { i, ep in
                SetElement(key: [.integer(slot.base + UInt32(i))], data: [.ip(ep.ip), .port(ep.port)])
            }
        }
        // Endpoint choice over all endpoints, or over this node's (the first localEndpointCount
        // of the same slot); with no local endpoint, traffic for "local only" is dropped.
        // Cluster traffic skips local endpoints that serve only Local traffic (`clusterStart`).
        func choose(local: Bool, when prefix: [RuleItem] = []) -> [Rule] {
            let range = local ? 0..<sp.localEndpointCount : sp.clusterStart..<sp.endpoints.count
            guard !range.isEmpty else { return [Rule(prefix + [.verdict(.drop)])] }
            let eps = Array(sp.endpoints[range])
            if sp.affinityTimeout != nil { return affinitySelection(chain, eps, when: prefix) }
            return selection(sp.name.proto, eps, slot: mapSlot.map { ($0.map, $0.base + UInt32(range.lowerBound)) }, when: prefix)
        }
        if let timeout = sp.affinityTimeout {
            // ClientIP affinity, as kube-proxy does it: per endpoint, a chain that remembers the
            // client in the endpoint's set and DNATs; the service chain first sends a remembered
            // client to its endpoint, and picks at random (the cascade) otherwise.
            for ep in sp.endpoints {
                let (epChain, set) = Names.affinity(chain, ep)
                f.sets.append(NamedSet(name: set, key: [family.keyField], data: .none, timeout: timeout))
                f.chains.append(
                    Chain(
                        name: epChain,
                        rules: [
                            Rule([.rememberSaddr(set, family)]),
                            Rule([.l4proto(sp.name.proto), .dnat(ep.ip, port: ep.port)])
                        ]))
            }
        }
        f.chains.append(Chain(name: chain, rules: masqueradeRules(sp) + choose(local: sp.internalLocal)))
        if external {
            var rules: [Rule] = []
            if sp.externalLocal {
                // Local policy: pods and the node itself still reach every endpoint (the node
                // masqueraded); everyone else reaches this node's endpoints with their own source.
                for c in clusterCIDRs { rules += choose(local: false, when: [.ipMatch(.saddr, .eq, c)]) }
                rules.append(Rule([.fibSaddrLocal, .markSetOr(config.masqueradeMark)]))
                rules += choose(local: false, when: [.fibSaddrLocal])
                rules += choose(local: true)
            } else {
                // Cluster policy: always masqueraded, as kube-proxy does.
                rules.append(Rule([.markSetOr(config.masqueradeMark)]))
                rules += choose(local: false)
            }
            f.chains.append(Chain(name: ext, rules: rules))
        }
        return f
    }

    /// The load-balancer IPs admitted as sources because a source range holds a node IP.
    public func lbSourcesAllowedFromNode(_ sp: ServicePortState) -> [IPAddress] {
        guard sp.sourceRanges.contains(where: { r in config.nodeIPs.contains { r.contains($0) } }) else { return [] }
        return sp.externalFrontends.filter { $0.kind == .loadBalancer }.map(\.ip)
    }

    var setDefinitions: [NamedSet] {
        [
            NamedSet(name: Names.serviceIPs, key: dispatchKey, data: .verdict),
            NamedSet(name: Names.noEndpointServices, key: dispatchKey, data: .verdict),
            NamedSet(name: Names.serviceNodePorts, key: [.inetProto, .inetService], data: .verdict),
            NamedSet(name: Names.noEndpointNodePorts, key: [.inetProto, .inetService], data: .verdict),
            NamedSet(name: Names.firewallIPs, key: dispatchKey, data: .verdict),
            NamedSet(name: Names.clusterIPs, key: [family.keyField], data: .none),
            NamedSet(name: Names.hairpin, key: [family.keyField, family.keyField], data: .none)
        ]
    }

    /// The whole table from the ports' fragments. Each fragment is let go once it is taken in,
    /// so a caller that hands over the only copy (a dry run) never holds the fragments and the
    /// whole table at once.
    public func assemble(_ fragments: consuming [PortFragment]) -> Ruleset {
        var elements: [String: [SetElement]] = [:]
        var sharedSets = Set<String>()
        var endpointShards = Set<Int>()
        var chains: [Chain] = []
        chains.reserveCapacity(fragments.count)
        var ownSets: [NamedSet] = []
        fragments.reverse()
        while let f = fragments.popLast() {
            ownSets += f.sets
            for (set, es) in f.elements { elements[set, default: []] += es }
            for (set, es) in f.shared { elements[set, default: []] += es; sharedSets.insert(set) }
            chains += f.chains
            if let slot = f.slot { endpointShards.insert(slot.shard) }
        }
        var sets = setDefinitions
        sets += endpointShards.sorted().map { Self.endpointMap(Names.endpointMap($0), family: family) }
        sets += ownSets.sorted { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
        for i in sets.indices {
            var sorted = SetElement.sorted(elements.removeValue(forKey: sets[i].name) ?? [])
            if sharedSets.contains(sets[i].name) {
                // Several ports count on the same element: keep one.
                var unique: [SetElement] = []
                unique.reserveCapacity(sorted.count)
                for e in sorted where unique.last?.key != e.key { unique.append(e) }
                sorted = unique
            }
            sets[i].elements = sorted
        }
        chains.sort { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
        return Ruleset(
            family: family.tableFamily, table: config.table, comment: Names.tableComment, sets: sets, chains: staticChains() + chains)
    }

    public static func endpointMap(_ name: String, family: IPFamily) -> NamedSet {
        NamedSet(
            name: name, key: [.integer], data: .values([family.keyField, .inetService]),
            typeof: "numgen random mod 1 : \(family.nftName) daddr . th dport")
    }

    /// Marks ClusterIP traffic for masquerade: from outside the cluster CIDRs, or all of it.
    func masqueradeRules(_ sp: ServicePortState) -> [Rule] {
        if config.masqueradeAll { return [Rule([.markSetOr(config.masqueradeMark)])] }
        if clusterCIDRs.isEmpty { return [] }
        return [Rule(clusterCIDRs.map { .saddrNotIn($0) } + [.markSetOr(config.masqueradeMark)])]
    }

    /// Session affinity: a remembered client goes to its endpoint's chain; anyone else to a
    /// random one (rule i of n with probability 1/(n-i)), whose chain remembers it.
    func affinitySelection(_ chain: String, _ endpoints: [EndpointAddress], when prefix: [RuleItem]) -> [Rule] {
        let n = endpoints.count
        let names = endpoints.map { Names.affinity(chain, $0) }
        return names.map { Rule(prefix + [.saddrInSet($0.set, family), .verdict(.goto($0.chain))]) }
            + names.enumerated().map { i, name in
                Rule(prefix + (i < n - 1 ? [.numgenIsZero(modulus: UInt32(n - i))] : []) + [.verdict(.goto(name.chain))])
            }
    }

    /// DNAT to one of `endpoints`, each with probability 1/n: one lookup in the endpoint map slot
    /// (its first n elements are these endpoints), or the cascade. `prefix` guards every rule.
    func selection(
        _ proto: TransportProtocol, _ endpoints: [EndpointAddress], slot: (map: String, base: UInt32)?,
        when prefix: [RuleItem] = []
    ) -> [Rule] {
        let n = endpoints.count
        if let slot {
            return [Rule(prefix + [.l4proto(proto), .dnatFromMap(modulus: UInt32(n), offset: slot.base, map: slot.map, family: family)])]
        }
        return endpoints.enumerated().map { i, ep in
            Rule(prefix + (i < n - 1 ? [.numgenIsZero(modulus: UInt32(n - i))] : []) + [.l4proto(proto), .dnat(ep.ip, port: ep.port)])
        }
    }

    /// kube-proxy's hook priorities: filter checks at -110 run before DNAT at -100 (dstnat); the
    /// ClusterIP check of locally made connections runs after it (-90).
    func staticChains() -> [Chain] {
        let toServices = Rule([.verdict(.jump(Names.services))])
        func check(_ chain: String) -> Rule { Rule([.ctStateNew, .verdict(.jump(chain))]) }
        // Node ports: the configured node addresses, or every local address but loopback.
        let nodePortAddresses = config.nodePortAddresses.filter { $0.family == family }
        let nodePortMatches: [[RuleItem]] =
            nodePortAddresses.isEmpty
            ? [[.fibDaddrLocal, .ipMatch(.daddr, .neq, family.loopback)]]
            : nodePortAddresses.map { [.ipMatch(.daddr, .eq, $0)] }
        let filter = { (hook: Hook, prio: Int32) in BaseChain(type: .filter, hook: hook, priority: prio) }
        let nat = { (hook: Hook, prio: Int32) in BaseChain(type: .nat, hook: hook, priority: prio) }
        return [
            Chain(name: "filter-prerouting", base: filter(.prerouting, -110), rules: [check(Names.firewallCheck)]),
            // Delivered to this host: node ports, and Service addresses that are the node's own
            // (an external IP that is a node address) without endpoints are refused, as kube-proxy does.
            Chain(name: "filter-input", base: filter(.input, -110), rules: [check(Names.nodePortsCheck), check(Names.endpointsCheck)]),
            Chain(
                name: "filter-forward", base: filter(.forward, -110),
                rules: [check(Names.endpointsCheck), check(Names.clusterIPsCheck)]),
            Chain(
                name: "filter-output", base: filter(.output, -110),
                rules: [check(Names.endpointsCheck), check(Names.nodePortsCheck), check(Names.firewallCheck)]),
            Chain(name: "filter-output-post-dnat", base: filter(.output, -90), rules: [check(Names.clusterIPsCheck)]),
            Chain(name: "nat-prerouting", base: nat(.prerouting, -100), rules: [toServices]),
            Chain(name: "nat-output", base: nat(.output, -100), rules: [toServices]),
            Chain(name: "nat-postrouting", base: nat(.postrouting, 100), rules: [Rule([.verdict(.jump(Names.masquerading))])]),
            Chain(name: Names.endpointsCheck, rules: [Rule([.dispatch(map: Names.noEndpointServices, family: family)])]),
            Chain(
                name: Names.nodePortsCheck, rules: nodePortMatches.map { Rule($0 + [.nodePortDispatch(map: Names.noEndpointNodePorts)]) }),
            Chain(name: Names.firewallCheck, rules: [Rule([.dispatch(map: Names.firewallIPs, family: family)])]),
            // A ClusterIP on a port its Service lacks is refused; an unused address of the
            // Service CIDR is dropped.
            Chain(
                name: Names.clusterIPsCheck,
                rules: [Rule([.daddrInSet(Names.clusterIPs, family), .verdict(.goto(Names.rejectChain))])]
                    + config.serviceCIDRs.filter { $0.family == family }.map { Rule([.ipMatch(.daddr, .eq, $0), .verdict(.drop)]) }),
            Chain(
                name: Names.rejectChain,
                rules: [
                    Rule([.l4proto(.tcp), .reject(.tcpReset)]),
                    Rule([.reject(family == .v4 ? .icmpPortUnreachable : .icmpv6PortUnreachable)])
                ]),
            Chain(
                name: Names.services,
                rules: [Rule([.dispatch(map: Names.serviceIPs, family: family)])]
                    + nodePortMatches.map { Rule($0 + [.nodePortDispatch(map: Names.serviceNodePorts)]) }),
            Chain(
                name: Names.masquerading,
                rules: [
                    Rule([.ctStatusDNAT, .saddrDaddrIn(set: Names.hairpin, family: family), .masquerade(fullyRandom: true)]),
                    Rule([.markIsClear(config.masqueradeMark), .verdict(.return)]),
                    Rule([.markSetXor(config.masqueradeMark)]),
                    Rule([.masquerade(fullyRandom: true)])
                ]),
            AppliedFlags(config).chain
        ]
    }
}
