import Foundation
import Glibc
import NFNetlink
import NFTModel
import SvcnatModel

/// What the kernel says about the commits since the last time svcnat asked.
public struct KernelChanges: Equatable, Sendable {
    /// The ruleset generation now.
    public var generation: UInt32
    /// Why svcnat's view of its tables may be out of date: another writer changed one of them
    /// since the last call, or the kernel could not say. Nil when only svcnat did, or nobody.
    public var foreign: String?
    public init(generation: UInt32, foreign: String? = nil) {
        self.generation = generation
        self.foreign = foreign
    }
}

/// Where svcnat's table lives: the real kernel over netlink, or a fake for tests.
public protocol Kernel: AnyObject {
    /// svcnat's table of that family as it is now, or nil when it does not exist. The dumps of
    /// one read may straddle another writer's commit: `consistentRead` is the read to plan from.
    func read(table: String, family: TableFamily) throws -> Ruleset?
    /// Applies the transactions (one per table): all their changes in one atomic batch, then
    /// the removal of what no rule reaches any more (`Transaction.batches`). Returns the
    /// batches committed. With `generation`, a compare-and-swap: if another writer changed
    /// svcnat's tables since that generation the kernel takes nothing more and this throws
    /// `GenerationChanged` (commits to other tables in between do not count).
    @discardableResult func apply(_ txs: [Transaction], generation: UInt32?) throws -> Int
    /// The generation now, and whether anyone else changed `table` (either family) since the
    /// last call.
    func changes(table: String) throws -> KernelChanges
    /// Deletes the UDP conntrack entries the filters match; returns how many.
    func deleteStaleFlows(_ filters: [FlowFilter]) throws -> Int
    /// The netlink messages the last `apply` sent, over all its batches.
    var lastBatchMessages: Int { get }
    /// When set, a refusal names the one element refused (a message per element): what the
    /// retry after a refused batch asks for.
    var preciseErrors: Bool { get set }
    /// A descriptor that turns readable when another writer may have committed (the change
    /// events); nil when only polling `changes` can tell.
    var eventDescriptor: Int32? { get }
    /// Keeps an index of the node's DNATed UDP flows from conntrack events, so removing a UDP
    /// endpoint needs no conntrack dump. Returns why it cannot, or nil. The daemon asks.
    func trackFlows() -> String?
    /// Readable when conntrack events for the index are queued; nil without an index.
    var flowEventDescriptor: Int32? { get }
    /// Takes in the queued conntrack events.
    func takeFlowEvents()
    /// Conntrack dumps made so far (each walks the node's whole conntrack table).
    var conntrackDumps: Int { get }
}

extension Kernel {
    public func trackFlows() -> String? { "no conntrack here" }
    public var flowEventDescriptor: Int32? { nil }
    public func takeFlowEvents() {}
    public var conntrackDumps: Int { 0 }
}

/// Another writer kept changing svcnat's tables while svcnat read them.
public struct KeptChanging: Error, CustomStringConvertible {
    public var table: String
    public var why: String
    public var description: String { "read table \(table): it kept changing while svcnat read it (\(why))" }
}

extension Kernel {
    /// One table's transaction.
    @discardableResult public func apply(_ tx: Transaction) throws -> Int { try apply([tx], generation: nil) }
    @discardableResult public func apply(_ txs: [Transaction]) throws -> Int { try apply(txs, generation: nil) }

    /// svcnat's tables that exist (`ip`, then `ip6`).
    public func readTables(_ table: String) throws -> [Ruleset] { try consistentRead(table).tables }

    /// svcnat's tables (`ip`, then `ip6`) as of one generation, which a compare-and-swap
    /// `apply` can name: the read is done again while another writer changed them meanwhile.
    public func consistentRead(_ table: String, tries: Int = 8) throws -> (tables: [Ruleset], generation: UInt32) {
        var why = ""
        for _ in 0..<tries {
            // What came before is in the read.
            _ = try changes(table: table)
            let tables = try IPFamily.allCases.compactMap { try read(table: table, family: $0.tableFamily) }
            let after = try changes(table: table)
            guard let foreign = after.foreign else { return (tables, after.generation) }
            why = foreign
        }
        throw KeptChanging(table: table, why: why)
    }
}

/// The kernel of the current network namespace, over netlink.
///
/// It listens to the kernel's nftables change events (`ChangeEvents`), so it can tell a commit
/// that touched svcnat's tables from the many that did not. Where the events cannot be had,
/// any commit but svcnat's own counts as a change.
public final class NetlinkKernel: Kernel {
    public let nft: NFTables
    private let events: ChangeEvents?
    private var ledger: ChangeLedger?
    /// How long `changes` waits for the events of a generation the kernel already reports.
    static let eventWait = 500

    public convenience init() throws { try self.init(NFTables()) }
    /// Shares an open netlink socket (the daemon's).
    public init(_ nft: NFTables, events: Bool = true) {
        self.nft = nft
        self.events = events ? try? ChangeEvents() : nil
    }

    /// Readable when change events are queued: the daemon wakes on it.
    public var eventDescriptor: Int32? { events?.fileDescriptor }

    public func read(table: String, family: TableFamily) throws -> Ruleset? { try nft.read(table: table, family: family) }

    public func changes(table: String) throws -> KernelChanges {
        if ledger?.table != table { ledger = ChangeLedger(table: table, ownPort: nft.portID) }
        let gen = try nft.generation()
        guard let events else {
            // No events: every commit that is not svcnat's own counts.
            let before = ledger!.accounted
            let lost = ledger!.report(at: gen)
            guard let before, before != gen || lost != nil else { return KernelChanges(generation: gen) }
            return KernelChanges(generation: gen, foreign: lost ?? "ruleset generation changed (\(before) -> \(gen))")
        }
        guard ledger!.accounted != nil else {
            // The first call: what is queued came before it.
            _ = try events.read(timeout: 0)
            return KernelChanges(generation: gen, foreign: ledger!.report(at: gen))
        }
        let clock = ContinuousClock()
        let deadline = clock.now + .milliseconds(Self.eventWait)
        var first = true
        while first || !ledger!.hasSeen(gen) {
            let left = deadline - clock.now
            if !first, left <= .zero {
                ledger!.lose("the change events of generation \(gen) did not come")
                break
            }
            let (got, dropped) = try events.read(timeout: first ? 0 : Int32((left / .milliseconds(1)).rounded(.up)))
            ledger!.take(got, lost: dropped)
            first = false
        }
        return KernelChanges(generation: gen, foreign: ledger!.report(at: gen))
    }

    public var preciseErrors = false

    @discardableResult public func apply(_ txs: [Transaction], generation: UInt32?) throws -> Int {
        nft.elementsPerMessage = preciseErrors ? 1 : 128
        let txs = txs.filter { !$0.isEmpty }
        var messages = 0, commits = 0
        defer { lastBatchMessages = messages }
        let batches = Transaction.batches(txs)
        guard let table = txs.first?.table else { return 0 }
        var expected = generation
        for batch in batches {
            var tries = 0
            while true {
                do {
                    try commit(batch, generation: expected, table: table)
                    break
                } catch var e as BatchError {
                    e.batch = commits + 1
                    e.batches = batches.count
                    throw e
                } catch let e as GenerationChanged {
                    // Someone committed since `expected`. Unless it touched svcnat's tables,
                    // the plan still holds: the same batch again, at the new generation.
                    tries += 1
                    let now = try changes(table: table)
                    guard now.foreign == nil, tries < Self.casTries else {
                        if let why = now.foreign { ledger?.lose(why) }
                        throw GenerationChanged(expected: e.expected, committed: commits)
                    }
                    expected = now.generation
                }
            }
            messages += nft.lastBatchMessages
            commits += 1
            if let g = expected { expected = ChangeLedger.next(g) }
        }
        return commits
    }

    /// How many times one batch is sent again after commits elsewhere moved the generation.
    static let casTries = 8

    /// One batch, with svcnat out of the event group while it commits (its own changes are
    /// not news, and at 100,000 elements the notifications would cost the commit).
    private func commit(_ batch: [Transaction], generation: UInt32?, table: String) throws {
        try? events?.listen(false)
        defer { try? events?.listen(true) }
        try nft.apply(batch, generation: generation)
        if ledger?.table != table { ledger = ChangeLedger(table: table, ownPort: nft.portID) }
        if let generation {
            ledger!.own(commits: 1, from: generation)
        } else {
            ledger!.lose("svcnat committed without a generation check")
        }
    }

    /// The netlink messages the last `apply` sent, over all its batches.
    public private(set) var lastBatchMessages = 0
    private lazy var conntrack: Conntrack? = try? Conntrack()
    private var flowIndex: FlowIndex?
    public func deleteStaleFlows(_ filters: [FlowFilter]) throws -> Int {
        guard !filters.isEmpty else { return 0 }
        guard let ct = conntrack else { throw NetlinkError("open ctnetlink socket", errno: EPROTONOSUPPORT) }
        return try ct.deleteUDPFlows(matching: filters, index: flowIndex)
    }

    public func trackFlows() -> String? {
        guard flowIndex == nil else { return nil }
        guard let ct = conntrack else { return "no ctnetlink socket" }
        do {
            let index = try FlowIndex()
            try ct.seed(index)
            flowIndex = index
            return nil
        } catch {
            return "\(error)"
        }
    }

    public var flowEventDescriptor: Int32? { flowIndex?.fileDescriptor }

    private var lastSeed = ContinuousClock.now
    /// After lost events the index is read again here, off the sync path, at most every 10 s
    /// (a storm of events must not become a storm of dumps); a sync that finds it stale before
    /// then reads it itself.
    public func takeFlowEvents() {
        guard let index = flowIndex, let ct = conntrack else { return }
        index.drain()
        if index.stale != nil, index.givenUp == nil, ContinuousClock.now - lastSeed > .seconds(10) {
            lastSeed = .now
            try? ct.seed(index)
        }
    }

    public var conntrackDumps: Int { conntrack?.dumps ?? 0 }

    /// The flow index, for metrics and logs; nil without one.
    public var udpFlowIndex: FlowIndex? { flowIndex }
}

/// A kernel made of values: applies transactions with the same refusals the kernel makes for
/// dangling references, and can be told to refuse the next batch. A test plays another writer
/// with `commitAsAnotherWriter` (svcnat's table) or `commitElsewhere` (any other table).
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
    /// Bumped on every committed batch, by anyone, as the kernel's.
    public private(set) var generationID: UInt32 = 1
    public private(set) var lastBatchMessages = 0
    /// Other writers' changes to svcnat's table since the last `changes`.
    private var foreignSinceReport: [String] = []
    /// Runs once, in the middle of the next read (between the two families): another writer.
    public var duringNextRead: (() throws -> Void)?
    /// Runs once, at the start of the next apply (after svcnat read and planned): another writer.
    public var beforeNextApply: (() throws -> Void)?
    /// How many batches were refused for a stale generation.
    public private(set) var staleRefusals = 0

    public func changes(table: String) throws -> KernelChanges {
        defer { foreignSinceReport = [] }
        return KernelChanges(
            generation: generationID, foreign: foreignSinceReport.isEmpty ? nil : foreignSinceReport.joined(separator: ", "))
    }

    /// Another writer's commit to svcnat's table.
    public func commitAsAnotherWriter(_ tx: Transaction, name: String = "another writer") throws {
        guard case .some(let r) = Ruleset.applying(tx, to: rulesets[tx.family]) else { throw FakeKernelRefusal(operation: tx.nftText) }
        rulesets[tx.family] = r
        generationID &+= 1
        foreignSinceReport.append(name)
    }

    public var eventDescriptor: Int32? { nil }

    /// Another writer's commit to a table that is not svcnat's.
    public func commitElsewhere() { generationID &+= 1 }

    public init(_ ruleset: Ruleset? = nil) { self.ruleset = ruleset }
    /// The filters each sync asked for, in order.
    public private(set) var flowCleanups: [[FlowFilter]] = []
    public func deleteStaleFlows(_ filters: [FlowFilter]) throws -> Int {
        if !filters.isEmpty { flowCleanups.append(filters) }
        return 0
    }

    public func read(table: String, family: TableFamily) throws -> Ruleset? {
        let r = rulesets[family]?.table == table ? rulesets[family] : nil
        if family == .ip, let writer = duringNextRead {
            duringNextRead = nil
            try writer()
        }
        return r
    }

    @discardableResult public func apply(_ txs: [Transaction], generation: UInt32?) throws -> Int {
        if let writer = beforeNextApply {
            beforeNextApply = nil
            try writer()
        }
        // As NetlinkKernel: a stale generation fails only when another writer changed svcnat's table.
        if let g = generation, g != generationID, !foreignSinceReport.isEmpty {
            staleRefusals += 1
            throw GenerationChanged(expected: g)
        }
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
