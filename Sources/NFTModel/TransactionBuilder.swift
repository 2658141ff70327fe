/// Collects the operations of one change in any order and gives them back in the one order
/// the kernel accepts within a batch. Every planner (a full plan, the creation of a table, an
/// incremental update) builds through it, so the ordering rules live here alone:
///
/// 1. the table itself (delete, then add, when it is rebuilt);
/// 2. new sets and chains, so that rules and elements can refer to them;
/// 3. rules removed (flush or delete by handle), so that nothing refers any more to what goes;
/// 4. elements removed, then chains, sets and foreign objects deleted (a set deleted and added
///    again is being redefined: it is deleted here and added back after);
/// 5. rules added, then elements added: a rule that binds a map walks the elements the map
///    already holds, so elements after rules costs the kernel less.
public struct TransactionBuilder: Sendable {
    public let family: TableFamily
    public let table: String
    private var tableOps: [Operation] = []
    private var addSets: [Operation] = []
    private var addChains: [Operation] = []
    private var ruleRemovals: [Operation] = []
    private var elementDeletes = ElementLists()
    private var deleteChains: [Operation] = []
    private var deleteSets: [String] = []
    private var deleteForeign: [Operation] = []
    private var redefinedSets: [Operation] = []
    private var addRules: [Operation] = []
    private var elementAdds = ElementLists()

    public init(family: TableFamily, table: String) {
        self.family = family
        self.table = table
    }

    /// Adds one operation. Element lists for the same set are merged.
    public mutating func add(_ op: Operation) {
        switch op {
        case .addTable, .deleteTable: tableOps.append(op)
        case .addSet(let s):
            if deleteSets.contains(s.name) { redefinedSets.append(op) } else { addSets.append(op) }
        case .deleteSet(let name): deleteSets.append(name)
        case .addChain: addChains.append(op)
        case .flushChain, .deleteRule: ruleRemovals.append(op)
        case .deleteChain: deleteChains.append(op)
        case .deleteForeign: deleteForeign.append(op)
        case .addRule: addRules.append(op)
        case .addElements(let set, let es): elementAdds.append(es, to: set)
        case .deleteElements(let set, let es): elementDeletes.append(es, to: set)
        }
    }

    public mutating func add(_ ops: some Sequence<Operation>) { for op in ops { add(op) } }

    /// Replaces a set's definition: its rules must be removed before and added after.
    public mutating func redefine(_ set: NamedSet) {
        add(.deleteSet(set.name))
        add(.addSet(set))
    }

    /// The element changes that turn `old` into `new` in `set`: entries whose key is gone or
    /// whose value changed are deleted, the missing and changed ones added.
    public mutating func diffElements(_ old: [SetElement], _ new: [SetElement], set: String) {
        guard old != new else { return }
        let newByKey = Dictionary(new.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        let oldByKey = Dictionary(old.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        add(.deleteElements(set: set, old.filter { newByKey[$0.key] != $0 }))
        add(.addElements(set: set, new.filter { oldByKey[$0.key] != $0 }))
    }

    public var transaction: Transaction {
        // A set that goes takes its elements with it; one redefined keeps none to delete.
        let gone = Set(deleteSets)
        var ops = tableOps + addSets + addChains + ruleRemovals
        ops += elementDeletes.lists.compactMap { gone.contains($0.set) ? nil : Operation.deleteElements(set: $0.set, $0.elements) }
        ops += deleteChains
        ops += deleteSets.map { .deleteSet($0) }
        ops += deleteForeign
        ops += redefinedSets + addRules
        ops += elementAdds.lists.map { .addElements(set: $0.set, $0.elements) }
        return Transaction(family: family, table: table, operations: ops)
    }
}

/// Element lists per set, in the order the sets first appeared.
private struct ElementLists: Sendable {
    private(set) var lists: [(set: String, elements: [SetElement])] = []
    private var index: [String: Int] = [:]

    mutating func append(_ es: [SetElement], to set: String) {
        guard !es.isEmpty else { return }
        if let i = index[set] {
            lists[i].elements += es
        } else {
            index[set] = lists.count
            lists.append((set, es))
        }
    }
}
