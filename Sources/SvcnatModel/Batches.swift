import NFTModel

/// svcnat's rules draw endpoints from the shared endpoint maps by random key, so removals from
/// those maps wait for the batch after the one that retires the rules (see
/// `Transaction.batches(deferring:)`).
extension Transaction {
    public var batches: [Transaction] { batches(deferring: Names.isEndpointMap) }
    public var phases: (now: Transaction, later: Transaction) { phases(deferring: Names.isEndpointMap) }
    public static func batches(_ txs: [Transaction]) -> [[Transaction]] { batches(txs, deferring: Names.isEndpointMap) }
}

extension Names {
    public static func isEndpointMap(_ set: String) -> Bool { set.hasPrefix(endpointMapPrefix) }
}
