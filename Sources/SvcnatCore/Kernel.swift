import Foundation
import Glibc
import NFNetlink
import NFTModel
import SvcnatModel

/// Where svcnat's table lives: the real kernel over netlink, or a fake for tests.
public protocol Kernel: AnyObject {
    /// svcnat's table of that family as it is now, or nil when it does not exist.
    func read(table: String, family: TableFamily) throws -> Ruleset?
    /// Applies the transactions (one per table): all their changes in one atomic batch, then
    /// the removal of what no rule reaches any more (`Transaction.batches`). Returns the
    /// batches committed.
    @discardableResult func apply(_ txs: [Transaction]) throws -> Int
    /// Deletes the UDP conntrack entries the filters match; returns how many.
    func deleteStaleFlows(_ filters: [FlowFilter]) throws -> Int
    /// The ruleset generation id: bumped on every committed batch, by anyone.
    func generation() throws -> UInt32
    /// The netlink messages the last `apply` sent, over all its batches.
    var lastBatchMessages: Int { get }
    /// When set, a refusal names the one element refused (a message per element): what the
    /// retry after a refused batch asks for.
    var preciseErrors: Bool { get set }
}

extension Kernel {
    /// One table's transaction.
    @discardableResult public func apply(_ tx: Transaction) throws -> Int { try apply([tx]) }

    /// svcnat's tables that exist (`ip`, then `ip6`).
    public func readTables(_ table: String) throws -> [Ruleset] {
        try IPFamily.allCases.compactMap { try read(table: table, family: $0.tableFamily) }
    }
}

/// The kernel of the current network namespace, over netlink.
public final class NetlinkKernel: Kernel {
    public let nft: NFTables
    public init() throws { nft = try NFTables() }
    /// Shares an open netlink socket (the daemon's).
    public init(_ nft: NFTables) { self.nft = nft }
    public func read(table: String, family: TableFamily) throws -> Ruleset? { try nft.read(table: table, family: family) }
    public func generation() throws -> UInt32 { try nft.generation() }
    public var preciseErrors = false
    @discardableResult public func apply(_ txs: [Transaction]) throws -> Int {
        nft.elementsPerMessage = preciseErrors ? 1 : 128
        let txs = txs.filter { !$0.isEmpty }
        var messages = 0, commits = 0
        defer { lastBatchMessages = messages }
        let batches = Transaction.batches(txs)
        for batch in batches {
            do { try nft.apply(batch) } catch var e as BatchError {
                e.batch = commits + 1
                e.batches = batches.count
                throw e
            }
            messages += nft.lastBatchMessages
            commits += 1
        }
        return commits
    }
    /// The netlink messages the last `apply` sent, over all its batches.
    public private(set) var lastBatchMessages = 0
    private lazy var conntrack: Conntrack? = try? Conntrack()
    public func deleteStaleFlows(_ filters: [FlowFilter]) throws -> Int {
        guard !filters.isEmpty else { return 0 }
        guard let ct = conntrack else { throw NetlinkError("open ctnetlink socket", errno: EPROTONOSUPPORT) }
        return try ct.deleteUDPFlows(matching: filters)
    }
}

/// A kernel made of values: applies transactions with the same refusals the kernel makes for
/// dangling references, and can be told to refuse the next batch.
public final class FakeKernel: Kernel {
    public var rulesets: [TableFamily: Ruleset] = [:]
    /// The IPv4 table.
    public var ruleset: Ruleset? {
        get { rulesets[.ip] }
        set { rulesets[.ip] = newValue }
    }
    public private(set) var applied: [Transaction] = []
    public var refuseNext: Error?
    /// Refuses, as the kernel would, every batch with a change (or an element) this matches,
    /// naming each refused message; without `preciseErrors` an element's whole operation.
    public var refuse: ((NFTModel.Operation) -> Bool)?
    public var preciseErrors = false
    /// Bumped on every committed batch, as the kernel's; a test bumps it to play another writer.
    public var generationID: UInt32 = 1
    public private(set) var lastBatchMessages = 0
    public func generation() throws -> UInt32 { generationID }

    public init(_ ruleset: Ruleset? = nil) { self.ruleset = ruleset }
    /// The filters each sync asked for, in order.
    public private(set) var flowCleanups: [[FlowFilter]] = []
    public func deleteStaleFlows(_ filters: [FlowFilter]) throws -> Int {
        if !filters.isEmpty { flowCleanups.append(filters) }
        return 0
    }

    public func read(table: String, family: TableFamily) throws -> Ruleset? {
        rulesets[family]?.table == table ? rulesets[family] : nil
    }

    @discardableResult public func apply(_ txs: [Transaction]) throws -> Int {
        if let e = refuseNext { refuseNext = nil; throw e }
        let txs = txs.filter { !$0.isEmpty }
        if let refuse {
            var failures: [NetlinkError] = []
            for tx in txs {
                for op in tx.operations {
                    switch op {
                    case .addElements(let set, let es):
                        let bad = es.filter { refuse(.addElements(set: set, [$0])) }
                        if preciseErrors {
                            failures += bad.map { NetlinkError(refused: .addElements(set: set, [$0]), in: tx, errno: EINVAL) }
                        } else if !bad.isEmpty {
                            failures.append(NetlinkError(refused: op, in: tx, errno: EINVAL))
                        }
                    default:
                        if refuse(op) { failures.append(NetlinkError(refused: op, in: tx, errno: EINVAL)) }
                    }
                }
            }
            if !failures.isEmpty { throw BatchError(failures: failures) }
        }
        let batches = Transaction.batches(txs)
        for batch in batches {
            // All or nothing, as the kernel's batch.
            var after = rulesets
            for tx in batch {
                guard case .some(let r) = Ruleset.applying(tx, to: after[tx.family]) else {
                    throw FakeKernelRefusal(operation: tx.nftText)
                }
                after[tx.family] = r
            }
            rulesets = after
            generationID &+= 1
        }
        applied += txs
        lastBatchMessages = txs.isEmpty ? 0 : txs.messageCount + 2 * batches.count
        return batches.count
    }
}

public struct FakeKernelRefusal: Error, CustomStringConvertible {
    public var operation: String
    public init(operation: String) { self.operation = operation }
    public var description: String { "fake kernel refused \(operation)" }
}
