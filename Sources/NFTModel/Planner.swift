/// One change to svcnat's table. A `Transaction` is an ordered list of them, sent to the kernel
/// as one batch (all or nothing).
public enum Operation: Hashable, Sendable {
    /// Creates the table, or on an existing one clears its flags (wakes a dormant table).
    case addTable(comment: String?)
    case deleteTable
    case addSet(NamedSet)  // definition only; elements follow as addElements
    case deleteSet(String)
    case addChain(Chain)  // name and hook only; rules follow as addRule
    case flushChain(String)
    case deleteChain(String)
    case addRule(chain: String, Rule)
    case deleteRule(chain: String, handle: UInt64)
    case addElements(set: String, [SetElement])
    case deleteElements(set: String, [SetElement])
    /// Removes an object svcnat never makes (after the rules that use it).
    case deleteForeign(ForeignObject)
}

public struct Transaction: Hashable, Sendable {
    public var family: TableFamily
    public var table: String
    public var operations: [Operation]

    public init(family: TableFamily, table: String, operations: [Operation] = []) {
        self.family = family
        self.table = table
        self.operations = operations
    }

    public var isEmpty: Bool { operations.isEmpty }

    /// Messages the batch carries: one per object, one per element.
    public var messageCount: Int {
        operations.reduce(0) {
            switch $1 {
            case .addElements(_, let e), .deleteElements(_, let e): $0 + e.count
            default: $0 + 1
            }
        }
    }

    /// The batches that carry this transaction, in order: every change in the first, as one
    /// atomic commit; then, if any, the removal of the elements (and sets) of `deferred` sets
    /// that no rule reaches any more.
    ///
    /// Why two: a packet takes its chain's rules from the generation current when it entered
    /// the hook, but its map lookups see the newest generation, and a commit removes deleted
    /// elements right after switching generations. A packet still running an old rule
    /// (`numgen random mod 3 ... map @m`) while the commit drops key 2 of `m` would find no
    /// entry. So the keys that only old rules draw stay until the commit that retired those rules
    /// is done. Which sets are drawn from that way is the caller's knowledge, given as `deferred`.
    public func batches(deferring deferred: (String) -> Bool) -> [Transaction] {
        let (now, later) = phases(deferring: deferred)
        return later.isEmpty ? [now] : [now, later].filter { !$0.isEmpty }
    }

    /// This transaction split into what goes in the first batch and what must wait.
    public func phases(deferring deferred: (String) -> Bool) -> (now: Transaction, later: Transaction) {
        if operations.contains(where: { if case .deleteTable = $0 { true } else { false } }) {
            return (self, Transaction(family: family, table: table))
        }
        var readded: [String: Set<ElementKey>] = [:]
        for case .addElements(let set, let es) in operations where deferred(set) {
            readded[set, default: []].formUnion(es.map(\.key))
        }
        var now: [Operation] = [], later: [Operation] = []
        for op in operations {
            switch op {
            case .deleteElements(let set, let es) where deferred(set):
                let keep = readded[set] ?? []
                let changed = es.filter { keep.contains($0.key) }, gone = es.filter { !keep.contains($0.key) }
                if !changed.isEmpty { now.append(.deleteElements(set: set, changed)) }
                if !gone.isEmpty { later.append(.deleteElements(set: set, gone)) }
            case .deleteSet(let set) where deferred(set):
                later.append(op)
            default:
                now.append(op)
            }
        }
        return (Transaction(family: family, table: table, operations: now), Transaction(family: family, table: table, operations: later))
    }

    /// The batches for several tables' transactions: the first batches of all in one, then
    /// the removals that had to wait in another.
    public static func batches(_ txs: [Transaction], deferring deferred: (String) -> Bool) -> [[Transaction]] {
        let split = txs.map { $0.phases(deferring: deferred) }
        return [split.map(\.now), split.map(\.later)].map { $0.filter { !$0.isEmpty } }.filter { !$0.isEmpty }
    }

    /// The transaction as an nft script (`nft -f` accepts it): what `diff` prints.
    public var nftText: String {
        let t = "\(family.rawValue) \(table)"
        var lines: [String] = []
        for op in operations {
            switch op {
            case .addTable(let comment): lines.append("add table \(t)" + (comment.map { " { comment \(quoted($0)); }" } ?? ""))
            case .deleteTable: lines.append("delete table \(t)")
            case .addSet(let s):
                lines.append(
                    "add \(s.kindWord) \(t) \(s.name) { \(s.typeText); "
                        + (s.timeout.map { "flags dynamic,timeout; timeout \($0)s; " } ?? "") + "}")
            case .deleteSet(let n): lines.append("delete set \(t) \(n)")
            case .deleteForeign(let o): lines.append("delete \(o.nftKeyword) \(t) \(o.name)")
            case .addChain(let c):
                lines.append("add chain \(t) \(c.name)" + (c.base.map { " { \($0.nftText) }" } ?? ""))
            case .flushChain(let c): lines.append("flush chain \(t) \(c)")
            case .deleteChain(let c): lines.append("delete chain \(t) \(c)")
            case .addRule(let c, let r): lines.append("add rule \(t) \(c) \(r.nftText)")
            case .deleteRule(let c, let h): lines.append("delete rule \(t) \(c) handle \(h)")
            case .addElements(let s, let e):
                lines += e.map { "add element \(t) \(s) { \($0.nftText) }" }
            case .deleteElements(let s, let e):
                lines += e.map { "delete element \(t) \(s) { \($0.keyText) }" }
            }
        }
        return lines.map { $0 + "\n" }.joined()
    }
}

/// The minimal ordered transaction from what the kernel holds to what is wanted. Pure; the
/// order of the operations is `TransactionBuilder`'s.
public enum Planner {
    /// `current` is nil when the table does not exist.
    public static func plan(from current: Ruleset?, to desired: Ruleset) -> Transaction {
        var b = TransactionBuilder(family: desired.family, table: desired.table)
        guard let current else {
            b.add(.addTable(comment: desired.comment))
            create(desired, &b)
            return b.transaction
        }
        let currentChains = Dictionary(current.chains.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let currentSets = Dictionary(current.sets.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        // A set whose definition changed, a chain whose type, hook or priority changed, or a
        // table comment (the kernel keeps a table's first) cannot be altered in place; rebuild
        // the whole table in the same batch.
        let setChanged = desired.sets.contains { d in currentSets[d.name].map { !$0.sameDefinition(as: d) } ?? false }
        func rebuilt(_ c: Chain, _ d: Chain) -> Bool {
            guard let a = c.base, let b = d.base else { return c.base != d.base }
            return a != b && !a.differsOnlyInPolicy(from: b)
        }
        let hookChanged = desired.chains.contains { d in currentChains[d.name].map { rebuilt($0, d) } ?? false }
        if setChanged || hookChanged || current.comment != desired.comment {
            b.add([.deleteTable, .addTable(comment: desired.comment)])
            create(desired, &b)
            return b.transaction
        }
        // A dormant table is woken, a base chain's policy put back.
        if current.flags != desired.flags { b.add(.addTable(comment: desired.comment)) }
        for d in desired.chains where currentChains[d.name].map({ $0.base != d.base }) ?? false { b.add(.addChain(d.header)) }

        let wantedSets = Set(desired.sets.map(\.name)), wantedChains = Set(desired.chains.map(\.name))
        for s in desired.sets where currentSets[s.name] == nil { b.add(.addSet(s.definition)) }
        for c in desired.chains where currentChains[c.name] == nil { b.add(.addChain(c.header)) }

        // Rules: keep the common prefix, drop the rest, append what is missing.
        for d in desired.chains {
            let have = currentChains[d.name]?.rules ?? []
            var p = 0
            while p < have.count, p < d.rules.count, have[p] == d.rules[p] { p += 1 }
            if p < have.count {
                // Without handles (a cached view of what svcnat wrote) rules can only go by flushing.
                if p == 0 || have[p...].contains(where: { $0.handle == nil }) {
                    b.add(.flushChain(d.name))
                    p = 0
                } else {
                    b.add(have[p...].map { .deleteRule(chain: d.name, handle: $0.handle!) })
                }
            }
            b.add(d.rules[p...].map { .addRule(chain: d.name, $0) })
        }
        for c in current.chains where !wantedChains.contains(c.name) {
            if !c.rules.isEmpty { b.add(.flushChain(c.name)) }
            b.add(.deleteChain(c.name))
        }
        // Elements: delete the stale and changed, add the missing and changed.
        for d in desired.sets where !d.isDynamic {
            b.diffElements(currentSets[d.name]?.elements ?? [], d.elements, set: d.name)
        }
        for s in current.sets where !wantedSets.contains(s.name) { b.add(.deleteSet(s.name)) }
        for o in current.foreign { b.add(.deleteForeign(o)) }
        return b.transaction
    }

    /// Everything needed to create `r` in an empty table.
    static func create(_ r: Ruleset, _ b: inout TransactionBuilder) {
        b.add(r.sets.map { .addSet($0.definition) })
        b.add(r.chains.map { .addChain($0.header) })
        b.add(r.chains.flatMap { c in c.rules.map { .addRule(chain: c.name, $0) } })
        b.add(r.sets.map { .addElements(set: $0.name, $0.elements) })
    }

    /// Removes svcnat's table, if it exists.
    public static func cleanup(_ current: Ruleset?) -> Transaction? {
        guard let current else { return nil }
        return Transaction(family: current.family, table: current.table, operations: [.deleteTable])
    }
}

extension NamedSet {
    var definition: NamedSet { NamedSet(name: name, key: key, data: data, typeof: typeof, timeout: timeout) }
}

extension Chain {
    var header: Chain { Chain(name: name, base: base) }
}

extension Ruleset {
    /// Applies a transaction to this value as the kernel would apply it; the fake kernel and
    /// tests use it. Returns nil for an operation the kernel would refuse.
    public static func applying(_ tx: Transaction, to start: Ruleset?) -> Ruleset?? {
        var r: Ruleset? = start
        for op in tx.operations {
            guard let next = Self.apply(op, to: r, family: tx.family, table: tx.table) else { return nil }
            r = next
        }
        return .some(r)
    }

    /// nil means refused; .some(nil) means "no table".
    static func apply(_ op: Operation, to r: Ruleset?, family: TableFamily, table: String) -> Ruleset?? {
        if case .addTable(let comment) = op {
            guard var r else { return .some(Ruleset(family: family, table: table, comment: comment)) }
            r.flags = 0
            return .some(r)
        }
        guard var r else { return nil }
        switch op {
        case .addTable: break
        case .deleteTable: return .some(nil)
        case .addSet(let s):
            guard r.set(s.name) == nil else { return nil }
            r.sets.append(s.definition)
        case .deleteForeign(let o):
            guard r.foreign.contains(o) else { return nil }
            r.foreign.removeAll { $0 == o }
        case .deleteSet(let n):
            guard r.set(n) != nil, !r.chains.contains(where: { $0.rules.contains { $0.setReferences.contains(n) } }) else { return nil }
            r.sets.removeAll { $0.name == n }
        case .addChain(let c):
            if let i = r.chains.firstIndex(where: { $0.name == c.name }) {
                // The kernel updates a base chain's policy in place, and nothing else.
                guard let a = r.chains[i].base, let b = c.base, a == b || a.differsOnlyInPolicy(from: b) else { return nil }
                r.chains[i].base = b
            } else {
                r.chains.append(c.header)
            }
        case .flushChain(let n):
            guard let i = r.chains.firstIndex(where: { $0.name == n }) else { return nil }
            r.chains[i].rules = []
        case .deleteChain(let n):
            guard let c = r.chain(n), c.rules.isEmpty,
                !r.chains.contains(where: { $0.rules.contains { $0.chainTargets.contains(n) } }),
                !r.sets.contains(where: { $0.elements.contains { $0.verdict?.target == n } })
            else { return nil }
            r.chains.removeAll { $0.name == n }
        case .addRule(let n, var rule):
            guard let i = r.chains.firstIndex(where: { $0.name == n }),
                rule.chainTargets.allSatisfy({ r.chain($0) != nil }),
                rule.setReferences.allSatisfy({ r.set($0) != nil })
            else { return nil }
            rule.handle = (r.chains.flatMap(\.rules).compactMap(\.handle).max() ?? 0) + 1
            r.chains[i].rules.append(rule)
        case .deleteRule(let n, let h):
            guard let i = r.chains.firstIndex(where: { $0.name == n }),
                let j = r.chains[i].rules.firstIndex(where: { $0.handle == h })
            else { return nil }
            r.chains[i].rules.remove(at: j)
        case .addElements(let n, let es):
            guard let i = r.sets.firstIndex(where: { $0.name == n }) else { return nil }
            for e in es {
                guard !r.sets[i].elements.contains(where: { $0.key == e.key }),
                    e.verdict?.target.map({ r.chain($0) != nil }) ?? true
                else { return nil }
                r.sets[i].elements.append(e)
            }
        case .deleteElements(let n, let es):
            guard let i = r.sets.firstIndex(where: { $0.name == n }) else { return nil }
            for e in es {
                guard let j = r.sets[i].elements.firstIndex(where: { $0.key == e.key }) else { return nil }
                r.sets[i].elements.remove(at: j)
            }
        }
        return .some(r)
    }
}
