/// A Service port's share of svcnat's table: its chain, its elements in the dispatch maps, its
/// endpoints' elements in an endpoint map, and the endpoint addresses the hairpin set needs.
public struct PortFragment: Hashable, Sendable {
    public var name: ServicePortName
    /// The service chain's name, also when the port has no endpoints and so no chain.
    public var key: String
    public var chain: Chain?
    public var dispatch: [SetElement] = []
    public var rejects: [SetElement] = []
    public var slot: EndpointSlot?
    public var endpointElements: [SetElement] = []
    public var endpointIPs: [IPv4Address] = []

    public init(name: ServicePortName, key: String) {
        self.name = name
        self.key = key
    }

    public static func key(_ sp: ServicePortState) -> String {
        Names.serviceChain(sp.name, port: sp.frontends.first?.port ?? 0)
    }

    public var serviceKey: String { "\(name.namespace)/\(name.name)" }
}

/// What svcnat last wrote, port by port, so a change to a few Services is planned from those
/// Services alone: the transaction touches their chains and elements, and the work does not
/// grow with the number of Services in the table.
public struct IncrementalState: Sendable {
    public let translator: Translator
    private(set) var fragments: [String: PortFragment] = [:]
    private var portsByService: [String: [String]] = [:]
    private var hairpinRefs: [IPv4Address: Int] = [:]
    private var shardSlots: [Int: [String: EndpointSlot]] = [:]

    /// Starts from a full translation (the fragments `Translator.fragments` gave for what is
    /// now in the kernel).
    public init(translator: Translator, fragments: [PortFragment]) {
        self.translator = translator
        for f in fragments { insert(f) }
    }

    public var portCount: Int { fragments.count }
    public var serviceCount: Int { portsByService.count }
    public private(set) var endpointCount = 0

    private mutating func insert(_ f: PortFragment) {
        fragments[f.key] = f
        endpointCount += f.endpointIPs.count
        portsByService[f.serviceKey, default: []].append(f.key)
        for ip in f.endpointIPs { hairpinRefs[ip, default: 0] += 1 }
        if let s = f.slot { shardSlots[s.shard, default: [:]][f.key] = s }
    }

    private mutating func remove(_ key: String) -> PortFragment? {
        guard let f = fragments.removeValue(forKey: key) else { return nil }
        endpointCount -= f.endpointIPs.count
        portsByService[f.serviceKey]?.removeAll { $0 == key }
        if portsByService[f.serviceKey]?.isEmpty == true { portsByService[f.serviceKey] = nil }
        for ip in f.endpointIPs { hairpinRefs[ip]! -= 1; if hairpinRefs[ip] == 0 { hairpinRefs[ip] = nil } }
        if let s = f.slot {
            shardSlots[s.shard]?[key] = nil
            if shardSlots[s.shard]?.isEmpty == true { shardSlots[s.shard] = nil }
        }
        return f
    }

    /// A slot for `key` with room for n endpoints: its old one if it still fits, else the lowest
    /// free aligned range of its shard.
    private func slot(for key: String, endpoints n: Int, old: EndpointSlot?) -> EndpointSlot? {
        guard translator.config.endpointSelection == .map, n > 0 else { return nil }
        if let old, UInt32(n) <= old.capacity { return old }
        let shard = EndpointSlots.shard(key), cap = EndpointSlots.capacity(UInt32(n))
        let ranges = (shardSlots[shard] ?? [:]).values.map { ($0.base, $0.base + $0.capacity) }.sorted { $0.0 < $1.0 }
        var base: UInt32 = 0
        for (start, end) in ranges {
            if base + cap <= start { break }
            if end > base { base = (end + cap - 1) / cap * cap }
        }
        return EndpointSlot(shard: shard, base: base, capacity: cap)
    }

    /// Replaces the ports of the given Services (ns/name -> their ports now; an empty list for
    /// a Service that is gone) and returns the transaction that makes the kernel follow.
    public mutating func update(_ services: [String: [ServicePortState]]) -> Transaction {
        var addSets: [Operation] = [], addChains: [Operation] = [], flushes: [Operation] = []
        var addRules: [Operation] = [], deleteChains: [Operation] = [], deleteSets: [Operation] = []
        var elementDeletes: [String: [SetElement]] = [:], elementAdds: [String: [SetElement]] = [:]
        let shardsBefore = Set(shardSlots.keys)
        // Whether each endpoint address of the touched Services was in use before; only these
        // can enter or leave the hairpin set.
        var hairpinBefore: [IPv4Address: Bool] = [:]
        for service in services.keys {
            for key in portsByService[service] ?? [] {
                for ip in fragments[key]?.endpointIPs ?? [] { hairpinBefore[ip] = true }
            }
            for sp in services[service]! { for ep in sp.endpoints where hairpinBefore[ep.ip] == nil { hairpinBefore[ep.ip] = hairpinRefs[ep.ip] != nil } }
        }

        for (service, ports) in services.sorted(by: { $0.key < $1.key }) {
            var old: [String: PortFragment] = [:]
            for key in portsByService[service] ?? [] { if let f = remove(key) { old[key] = f } }
            var new: [String: PortFragment] = [:]
            for sp in ports {
                let key = PortFragment.key(sp)
                let f = translator.fragment(sp, slot: slot(for: key, endpoints: sp.endpoints.count, old: old[key]?.slot))
                insert(f)
                new[key] = f
            }
            for key in Set(old.keys).union(new.keys).sorted() {
                let o = old[key], n = new[key]
                diff(o?.dispatch ?? [], n?.dispatch ?? [], set: Names.serviceIPs, &elementDeletes, &elementAdds)
                diff(o?.rejects ?? [], n?.rejects ?? [], set: Names.noEndpointServices, &elementDeletes, &elementAdds)
                let oMap = o?.slot.map { Names.endpointMap($0.shard) }, nMap = n?.slot.map { Names.endpointMap($0.shard) }
                if oMap == nMap, let m = nMap {
                    diff(o!.endpointElements, n!.endpointElements, set: m, &elementDeletes, &elementAdds)
                } else {
                    if let m = oMap { diff(o!.endpointElements, [], set: m, &elementDeletes, &elementAdds) }
                    if let m = nMap { diff([], n!.endpointElements, set: m, &elementDeletes, &elementAdds) }
                }
                switch (o?.chain, n?.chain) {
                case (nil, let c?):
                    addChains.append(.addChain(Chain(name: c.name)))
                    addRules += c.rules.map { .addRule(chain: c.name, $0) }
                case (let a?, let b?) where a.rules != b.rules:
                    flushes.append(.flushChain(b.name))
                    addRules += b.rules.map { .addRule(chain: b.name, $0) }
                case (let a?, nil):
                    flushes.append(.flushChain(a.name))
                    deleteChains.append(.deleteChain(a.name))
                default: break
                }
            }
        }
        // Hairpin: only addresses whose use went from none to some, or back.
        for (ip, wasUsed) in hairpinBefore.sorted(by: { $0.key < $1.key }) {
            let e = SetElement(key: [.ipv4(ip), .ipv4(ip)])
            let isUsed = hairpinRefs[ip] != nil
            if !wasUsed && isUsed { elementAdds[Names.hairpin, default: []].append(e) }
            if wasUsed && !isUsed { elementDeletes[Names.hairpin, default: []].append(e) }
        }
        let shardsAfter = Set(shardSlots.keys)
        for s in shardsAfter.subtracting(shardsBefore).sorted() { addSets.append(.addSet(Translator.endpointMap(Names.endpointMap(s)))) }
        for s in shardsBefore.subtracting(shardsAfter).sorted() {
            deleteSets.append(.deleteSet(Names.endpointMap(s)))
            elementDeletes[Names.endpointMap(s)] = nil   // the set goes, and its elements with it
        }
        let deletes = elementDeletes.keys.sorted().compactMap { k in elementDeletes[k]!.isEmpty ? nil : Operation.deleteElements(set: k, elementDeletes[k]!) }
        let adds = elementAdds.keys.sorted().compactMap { k in elementAdds[k]!.isEmpty ? nil : Operation.addElements(set: k, elementAdds[k]!) }
        return Transaction(family: .ip, table: translator.config.table,
                           operations: addSets + addChains + flushes + deletes + adds + addRules + deleteChains + deleteSets)
    }

    private func diff(_ old: [SetElement], _ new: [SetElement], set: String,
                      _ deletes: inout [String: [SetElement]], _ adds: inout [String: [SetElement]]) {
        guard old != new else { return }
        let newByKey = Dictionary(new.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        let oldByKey = Dictionary(old.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        deletes[set, default: []] += old.filter { newByKey[$0.key] != $0 }
        adds[set, default: []] += new.filter { oldByKey[$0.key] != $0 }
    }

    /// The whole table this state describes (for checks: it must equal a full translation).
    public var ruleset: Ruleset { translator.assemble(fragments.values.sorted { $0.key < $1.key }) }
}
