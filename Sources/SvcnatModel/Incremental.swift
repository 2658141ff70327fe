import NFTModel

/// A Service port's share of svcnat's table: its chains, the elements it owns in the maps, and
/// its contributions to the sets several ports share (the hairpin pairs of its endpoints, its
/// ClusterIP), which are counted rather than owned.
public struct PortFragment: Hashable, Sendable {
    public var name: ServicePortName
    /// The service chain's name, also when the port has no endpoints and so no chain.
    public var key: String
    public var chains: [Chain] = []
    /// Sets of its own (session-affinity memories), created and deleted with the port.
    public var sets: [NamedSet] = []
    public var elements = SetContributions()
    public var shared = SetContributions()
    public var slot: EndpointSlot?
    public var endpointCount = 0
    /// The port's state it was made from.
    public var state: ServicePortState?

    public init(name: ServicePortName, key: String) {
        self.name = name
        self.key = key
    }

    public static func key(_ sp: ServicePortState) -> String {
        Names.serviceChain(sp.name, port: sp.frontends.first?.port ?? 0)
    }

    public var serviceKey: String { name.serviceKey }
}

/// A port's elements per set: a handful of sets at most, so a small array rather than a
/// dictionary (10,000 ports' worth of dictionaries cost megabytes).
public struct SetContributions: Hashable, Sendable, Sequence, ExpressibleByDictionaryLiteral {
    private var entries: [(String, [SetElement])] = []

    public init() {}
    public init(dictionaryLiteral pairs: (String, [SetElement])...) { entries = pairs }

    public subscript(set: String) -> [SetElement]? {
        get { entries.first { $0.0 == set }?.1 }
        set {
            if let i = entries.firstIndex(where: { $0.0 == set }) {
                if let newValue { entries[i].1 = newValue } else { entries.remove(at: i) }
            } else if let newValue {
                entries.append((set, newValue))
            }
        }
    }

    public subscript(set: String, default value: [SetElement]) -> [SetElement] {
        get { self[set] ?? value }
        set { self[set] = newValue }
    }

    public var keys: [String] { entries.map(\.0) }
    public func makeIterator() -> IndexingIterator<[(key: String, value: [SetElement])]> {
        entries.map { (key: $0.0, value: $0.1) }.makeIterator()
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.entries.count == b.entries.count && zip(a.entries, b.entries).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
    }
    public func hash(into h: inout Hasher) { for (k, v) in entries { h.combine(k); h.combine(v) } }
}

/// What svcnat last wrote, port by port, so a change to a few Services is planned from those
/// Services alone: the transaction touches their chains and elements, and the work does not
/// grow with the number of Services in the table.
public struct IncrementalState: Sendable {
    public let translator: Translator
    private(set) var fragments: [String: PortFragment] = [:]
    private var portsByService: [String: [String]] = [:]
    /// set -> element key (packed) -> how many ports use it
    private var sharedRefs: [String: [ElementKey: Int]] = [:]
    private var shardSlots: [Int: [String: EndpointSlot]] = [:]
    public private(set) var endpointCount = 0

    /// Starts from a full translation (the fragments `Translator.fragments` gave for what is
    /// now in the kernel).
    public init(translator: Translator, fragments: [PortFragment]) {
        self.translator = translator
        for f in fragments { insert(f) }
    }

    public var serviceCount: Int { portsByService.count }

    private mutating func insert(_ f: PortFragment) {
        fragments[f.key] = f
        endpointCount += f.endpointCount
        portsByService[f.serviceKey, default: []].append(f.key)
        for (set, es) in f.shared { for e in es { sharedRefs[set, default: [:]][e.key, default: 0] += 1 } }
        if let s = f.slot { shardSlots[s.shard, default: [:]][f.key] = s }
    }

    private mutating func remove(_ key: String) -> PortFragment? {
        guard let f = fragments.removeValue(forKey: key) else { return nil }
        endpointCount -= f.endpointCount
        portsByService[f.serviceKey]?.removeAll { $0 == key }
        if portsByService[f.serviceKey]?.isEmpty == true { portsByService[f.serviceKey] = nil }
        for (set, es) in f.shared {
            for e in es {
                let k = e.key
                sharedRefs[set]![k]! -= 1
                if sharedRefs[set]![k] == 0 { sharedRefs[set]![k] = nil }
            }
        }
        if let s = f.slot {
            shardSlots[s.shard]?[key] = nil
            if shardSlots[s.shard]?.isEmpty == true { shardSlots[s.shard] = nil }
        }
        return f
    }

    /// A slot for `key` with room for n endpoints: its old one if it still fits, else the lowest
    /// free aligned range of its shard. Ranges given up in this update (`released`) are not
    /// reused until the next one: a packet still running the old rules may read them.
    private func slot(for key: String, endpoints n: Int, old: EndpointSlot?, released: [Int: [EndpointSlot]]) -> EndpointSlot? {
        guard translator.config.endpointSelection == .map, n > 0 else { return nil }
        if let old, UInt32(n) <= old.capacity { return old }
        let shard = EndpointSlots.shard(key), cap = EndpointSlots.capacity(UInt32(n))
        let ranges = ((shardSlots[shard] ?? [:]).values + (released[shard] ?? [])).map { ($0.base, $0.base + $0.capacity) }.sorted {
            $0.0 < $1.0
        }
        var base: UInt32 = 0
        for (start, end) in ranges {
            if base + cap <= start { break }
            if end > base { base = (end + cap - 1) / cap * cap }
        }
        return EndpointSlot(shard: shard, base: base, capacity: cap)
    }

    /// The current states of the given Services' ports.
    public func states(ofServices keys: some Sequence<String>) -> [ServicePortState] {
        keys.flatMap { (portsByService[$0] ?? []).compactMap { fragments[$0]?.state } }
    }

    /// Replaces the ports of the given Services (ns/name -> their ports now; an empty list for
    /// a Service that is gone) and returns the transaction that makes the kernel follow.
    public mutating func update(_ services: [String: [ServicePortState]]) -> Transaction {
        var b = TransactionBuilder(family: translator.config.family.tableFamily, table: translator.config.table)
        let shardsBefore = Set(shardSlots.keys)
        // Whether each shared element the touched Services use was in use before; only these
        // can enter or leave their sets.
        var sharedBefore: [String: [ElementKey: (wasUsed: Bool, element: SetElement)]] = [:]
        func noteShared(_ f: PortFragment?) {
            for (set, es) in f?.shared ?? [:] {
                for e in es {
                    let k = e.key
                    if sharedBefore[set]?[k] == nil { sharedBefore[set, default: [:]][k] = (sharedRefs[set]?[k] != nil, e) }
                }
            }
        }
        for service in services.keys { for key in portsByService[service] ?? [] { noteShared(fragments[key]) } }

        var released: [Int: [EndpointSlot]] = [:]
        for service in services.keys {
            for key in portsByService[service] ?? [] { if let s = fragments[key]?.slot { released[s.shard, default: []].append(s) } }
        }
        for (service, ports) in services.sorted(by: { $0.key < $1.key }) {
            var old: [String: PortFragment] = [:]
            for key in portsByService[service] ?? [] { if let f = remove(key) { old[key] = f } }
            var new: [String: PortFragment] = [:]
            for sp in ports {
                let key = PortFragment.key(sp)
                let f = translator.fragment(
                    sp, slot: slot(for: key, endpoints: sp.endpoints.count, old: old[key]?.slot, released: released))
                noteShared(f)
                insert(f)
                new[key] = f
            }
            for key in Set(old.keys).union(new.keys).sorted() { Self.plan(from: old[key], to: new[key], &b) }
        }
        for (set, keys) in sharedBefore.sorted(by: { $0.key < $1.key }) {
            for (k, before) in keys.sorted(by: { $0.key.precedes($1.key) }) {
                let isUsed = sharedRefs[set]?[k] != nil
                if !before.wasUsed && isUsed { b.add(.addElements(set: set, [before.element])) }
                if before.wasUsed && !isUsed { b.add(.deleteElements(set: set, [before.element])) }
            }
        }
        let shardsAfter = Set(shardSlots.keys)
        for s in shardsAfter.subtracting(shardsBefore).sorted() {
            b.add(.addSet(Translator.endpointMap(Names.endpointMap(s), family: translator.config.family)))
        }
        // A map that goes takes its elements with it (the builder drops their deletes).
        for s in shardsBefore.subtracting(shardsAfter).sorted() { b.add(.deleteSet(Names.endpointMap(s))) }
        return b.transaction
    }

    /// One port's change: its own elements in the shared maps, its own sets, its chains.
    private static func plan(from o: PortFragment?, to n: PortFragment?, _ b: inout TransactionBuilder) {
        for set in Set((o?.elements ?? [:]).keys).union((n?.elements ?? [:]).keys).sorted() {
            b.diffElements(o?.elements[set] ?? [], n?.elements[set] ?? [], set: set)
        }
        var redefined = false
        let os = Dictionary((o?.sets ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let ns = Dictionary((n?.sets ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for name in Set(os.keys).union(ns.keys).sorted() {
            switch (os[name], ns[name]) {
            case (nil, let s?): b.add(.addSet(s))
            case (let a?, let s?) where !a.sameDefinition(as: s):
                redefined = true  // its rules must go first, so the chains are rewritten
                b.redefine(s)
            case (_?, nil): b.add(.deleteSet(name))
            default: break
            }
        }
        let oc = Dictionary((o?.chains ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let nc = Dictionary((n?.chains ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for name in Set(oc.keys).union(nc.keys).sorted() {
            switch (oc[name], nc[name]) {
            case (nil, let c?):
                b.add(.addChain(Chain(name: c.name)))
                b.add(c.rules.map { .addRule(chain: c.name, $0) })
            case (let a?, let c?) where a.rules != c.rules || redefined:
                b.add(.flushChain(c.name))
                b.add(c.rules.map { .addRule(chain: c.name, $0) })
            case (_?, nil):
                b.add([.flushChain(name), .deleteChain(name)])
            default: break
            }
        }
    }

    /// The whole table this state describes (for checks: it must equal a full translation).
    public var ruleset: Ruleset { translator.assemble(fragments.values.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }) }
}
