import Foundation
import NFTModel

/// What a stopped kube-proxy leaves in a node's ruleset, and the removal of it
/// (`svcnat cleanup --kube-proxy`), as kube-proxy's own `--cleanup` removes it:
/// - nftables mode: the tables `ip kube-proxy` and `ip6 kube-proxy`, whole;
/// - iptables mode: in the `nat`, `filter` and `mangle` tables, every chain named `KUBE-*`
///   and every rule of another chain that jumps (or goes) to one. Rules and chains of other
///   agents, in the same tables, stay as they are.
///
/// iptables-nft keeps those tables in nftables (read and changed over netlink here);
/// iptables-legacy keeps them in the kernel's x_tables, changed through `iptables-restore`
/// with the script `legacyRestore` writes.
public enum KubeProxyLeftovers {
    /// kube-proxy's nftables table (in `ip` and `ip6`).
    public static let nftTable = "kube-proxy"
    /// The iptables tables kube-proxy writes to (`KUBE-PROXY-CANARY` lives in all three).
    public static let iptablesTables = ["nat", "filter", "mangle"]

    public static func isKubeChain(_ name: String) -> Bool { name.hasPrefix("KUBE-") }

    /// The chains a rule jumps or goes to.
    static func targets(_ rule: Rule) -> [String] {
        rule.items.compactMap { item in
            switch item {
            case .verdict(.jump(let c)), .verdict(.goto(let c)), .raw(.verdict(.jump(let c))), .raw(.verdict(.goto(let c))): c
            default: nil
            }
        }
    }

    /// The removal from one iptables-nft table (read back from the kernel): the rules of other
    /// chains that lead into `KUBE-*` chains, then those chains, flushed and deleted. nil when
    /// the table holds nothing of kube-proxy's. `removed` says what goes, for the report.
    public static func plan(_ table: Ruleset) -> (transaction: Transaction, removed: [String])? {
        var ops: [NFTModel.Operation] = []
        var removed: [String] = []
        for chain in table.chains where !isKubeChain(chain.name) {
            for rule in chain.rules where targets(rule).contains(where: isKubeChain) {
                guard let handle = rule.handle else { continue }
                ops.append(.deleteRule(chain: chain.name, handle: handle))
                removed.append("rule \(chain.name) -> \(targets(rule).filter(isKubeChain).joined(separator: ","))")
            }
        }
        let kube = table.chains.filter { isKubeChain($0.name) }.map(\.name)
        // Every chain emptied before any is deleted: none is then the target of a jump.
        ops += kube.map { .flushChain($0) } + kube.map { .deleteChain($0) }
        removed += kube.map { "chain \($0)" }
        guard !ops.isEmpty else { return nil }
        return (Transaction(family: table.family, table: table.table, operations: ops), removed)
    }

    /// For iptables-legacy: the `iptables-restore --noflush` script that removes kube-proxy's
    /// chains and the jumps to them, from `iptables-save`'s output; nil when there are none.
    /// Each jump is deleted by its rule's own text (`-D` with the `-A` line's arguments).
    public static func legacyRestore(save: String) -> (script: String, removed: [String])? {
        var script: [String] = []
        var removed: [String] = []
        var table: String?
        var deletes: [String] = []
        var chains: [String] = []
        func finish() {
            guard let t = table, !(deletes.isEmpty && chains.isEmpty) else { return }
            script.append("*\(t)")
            script += deletes
            script += chains.map { "-F \($0)" }
            script += chains.map { "-X \($0)" }
            script.append("COMMIT")
        }
        for raw in save.split(separator: "\n", omittingEmptySubsequences: true) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("*") {
                finish()
                table = String(line.dropFirst())
                deletes = []
                chains = []
            } else if line.hasPrefix(":") {
                let name = String(line.dropFirst().split(separator: " ").first ?? "")
                if isKubeChain(name) {
                    chains.append(name)
                    removed.append("chain \(name) (\(table ?? "?"))")
                }
            } else if line.hasPrefix("-A ") {
                let words = line.split(separator: " ").map(String.init)
                guard words.count > 1, !isKubeChain(words[1]) else { continue }
                if let j = words.firstIndex(where: { $0 == "-j" || $0 == "-g" || $0 == "--jump" || $0 == "--goto" }),
                    j + 1 < words.count, isKubeChain(words[j + 1])
                {
                    deletes.append("-D" + line.dropFirst(2))
                    removed.append("rule \(words[1]) -> \(words[j + 1]) (\(table ?? "?"))")
                }
            } else if line == "COMMIT" {
                finish()
                table = nil
            }
        }
        finish()
        return script.isEmpty ? nil : (script.joined(separator: "\n") + "\n", removed)
    }
}

extension Reconciler {
    /// Removes what kube-proxy left in nftables (`KubeProxyLeftovers`): its own tables and its
    /// iptables-nft chains and jumps, in one batch, planned from one generation of all of them
    /// and sent as a compare-and-swap against it. Returns what went, one line per object.
    @discardableResult
    public func cleanupKubeProxy() throws -> [String] {
        var attempt = 1
        while true {
            var generations: Set<UInt32> = []
            var txs: [Transaction] = []
            var removed: [String] = []
            let (own, g0) = try kernel.consistentRead(KubeProxyLeftovers.nftTable)
            generations.insert(g0)
            for t in own {
                txs.append(Transaction(family: t.family, table: t.table, operations: [.deleteTable]))
                removed.append("table \(t.family.rawValue) \(t.table)")
            }
            for name in KubeProxyLeftovers.iptablesTables {
                let (tables, g) = try kernel.consistentRead(name)
                generations.insert(g)
                for t in tables {
                    guard let (tx, what) = KubeProxyLeftovers.plan(t) else { continue }
                    txs.append(tx)
                    removed += what.map { "\(t.family.rawValue) \(t.table): \($0)" }
                }
            }
            // The reads straddled another writer's commit: read them all again.
            guard generations.count == 1, let generation = generations.first else {
                attempt += 1
                if attempt > Self.staleTries { throw GenerationChanged(expected: generations.min() ?? 0) }
                continue
            }
            guard !txs.isEmpty else { return [] }
            do {
                try kernel.apply(txs, generation: generation)
                return removed
            } catch is GenerationChanged where attempt < Self.staleTries {
                attempt += 1
            }
        }
    }
}
