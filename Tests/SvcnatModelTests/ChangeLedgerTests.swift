import NFNetlink
import NFTModel
import Testing

@testable import SvcnatCore

/// The rules by which svcnat reads the kernel's change events (no root): which commits touch
/// its tables, and when the events can no longer be trusted.
@Suite struct ChangeLedgerRules {
    func ledger(at g: UInt32 = 10) -> ChangeLedger {
        var l = ChangeLedger(table: "svcnat", ownPort: 77)
        _ = l.report(at: g)
        return l
    }

    @Test func onlyOthersChangesToSvcnatsTablesInEitherFamilyCount() {
        var l = ledger()
        l.take([
            .change(kind: .element, family: .ip, table: "filter", portID: 5), .commit(generation: 11, portID: 5, process: "fw (pid 5)"),
            .change(kind: .rule, family: nil, table: "svcnat", portID: 6), .commit(generation: 12, portID: 6, process: "inet (pid 6)"),
            .change(kind: .rule, family: .ip, table: "svcnat", portID: 77), .commit(generation: 13, portID: 77, process: "svcnat")
        ])
        #expect(l.report(at: 13) == nil)
        l.take([
            .change(kind: .chain, family: .ip6, table: "svcnat", portID: 9), .commit(generation: 14, portID: 9, process: "nft (pid 9)"),
            .change(kind: .element, family: .ip, table: "svcnat", portID: 9), .commit(generation: 15, portID: 9, process: "nft (pid 9)")
        ])
        #expect(l.report(at: 15) == "nft (pid 9) changed table svcnat (2 commits)")
        #expect(l.report(at: 15) == nil, "a report starts the next one afresh")
    }

    @Test func svcnatsOwnCommitsNeedNoEventsButAGapOrADropIsALoss() {
        var l = ledger()
        l.own(commits: 2, from: 10)
        l.take([.commit(generation: 13, portID: 5, process: "fw")])
        #expect(l.hasSeen(13))
        #expect(l.report(at: 13) == nil)

        l.take([.commit(generation: 15, portID: 5, process: "fw")])
        #expect(l.report(at: 15)?.contains("generations 14...14 were missed") == true)

        l.take([], lost: true)
        #expect(l.report(at: 15)?.contains("dropped change events") == true)

        l.own(commits: 1, from: 9)
        #expect(l.report(at: 16) != nil, "svcnat's commit from a generation the events had not reached")
    }

    @Test func generationsWrapPastZero() {
        var l = ledger(at: UInt32.max)
        #expect(ChangeLedger.next(UInt32.max) == 1)
        l.take([.commit(generation: 1, portID: 5, process: "fw")])
        #expect(l.hasSeen(1) && l.hasSeen(UInt32.max))
        #expect(l.report(at: 1) == nil)
    }
}
