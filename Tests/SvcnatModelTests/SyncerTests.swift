import SvcnatCore
import NFTModel
import SvcnatModel
import SvcnatSources
import Testing

/// The one sync (Core's `Syncer`) on the fake kernel: partial syncs from the cached view while
/// the generation is svcnat's own, a full sync that repairs after another writer, and the
/// retry state after a refusal. No root needed.
@Suite struct SyncerOnFakeKernel {
    let inc = Incremental()

    func store(_ services: [Service], _ slices: [EndpointSlice]) -> ObjectStore {
        let s = ObjectStore(root: "")
        for svc in services { s.put("svc:\(svc.meta.key)", ClusterState(services: [svc])) }
        for sl in slices { s.put("slice:\(sl.meta.key)", ClusterState(endpointSlices: [sl])) }
        return s
    }

    /// What a full sync of the store's state wants in the IPv4 table.
    func fullTable(_ s: ObjectStore, _ config: ProxyConfig) throws -> Ruleset {
        try Reconciler.desiredTables(s.state, config: config).first { $0.family == .v4 }!.ruleset
    }

    @Test func changesArePlannedFromTheCacheAndMatchAFullSync() throws {
        let config = ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!], nodeName: "node-a")
        let services = (0..<20).map { inc.service($0, ports: 2) }
        let slices = services.enumerated().map { inc.slice($0.offset, $0.element, endpoints: [1, 2, 3]) }
        let source = store(services, slices)
        let kernel = FakeKernel()
        let syncer = Syncer(config: config, kernel: kernel)

        let first = try syncer.sync(source, full: false, reason: "start")
        #expect(!first.partial, "nothing is cached before the first sync")
        #expect(try syncer.drift() == nil)

        // One endpoint goes: a partial sync, touching only that Service.
        source.put("slice:\(slices[3].meta.key)", ClusterState(endpointSlices: [inc.slice(3, services[3], endpoints: [1, 2])]))
        let second = try syncer.sync(source, full: false, reason: "manifests changed")
        #expect(second.partial)
        #expect(Set(second.ports.keys) == [services[3].meta.key])
        #expect(second.changeCount > 0 && second.changeCount < first.changeCount / 10)
        #expect(Planner.plan(from: kernel.ruleset, to: try fullTable(source, config)).isEmpty)
        #expect(try syncer.drift() == nil, "svcnat's own commit leaves the cache trusted")

        // The cache survives a partial sync: the next change is partial too.
        source.put("slice:\(slices[5].meta.key)", ClusterState(endpointSlices: [inc.slice(5, services[5], endpoints: [4])]))
        let third = try syncer.sync(source, full: false, reason: "manifests changed")
        #expect(third.partial)
        #expect(Planner.plan(from: kernel.ruleset, to: try fullTable(source, config)).isEmpty)
    }

    /// A squatter that arrives (or goes) between full syncs is decided by a full sync, so the
    /// victim is never left out and the result is what a full sync of the input wants.
    @Test func aClashArrivingInAPartialSyncIsDecidedAsAFullSyncDecidesIt() throws {
        let config = ProxyConfig(nodeName: "node-a")
        let services = (0..<4).map { inc.service($0, ports: 1) }
        let source = store(services, services.enumerated().map { inc.slice($0.offset, $0.element, endpoints: [1, 2]) })
        let kernel = FakeKernel()
        let syncer = Syncer(config: config, kernel: kernel)
        _ = try syncer.sync(source, full: true, reason: "start")

        // Service 2 gains an external IP equal to Service 1's ClusterIP and port.
        var squatter = services[2]
        squatter.externalIPs = [services[1].clusterIP!]
        source.put("svc:\(squatter.meta.key)", ClusterState(services: [squatter]))
        let clash = try syncer.sync(source, full: false, reason: "manifests changed")
        #expect(!clash.partial, "a new clash is decided by a full sync")
        #expect(syncer.conflicts.map(\.loser.name) == [squatter.meta.name])
        #expect(Planner.plan(from: kernel.ruleset, to: try fullTable(source, config)).isEmpty)
        let victimKey = "\(services[1].clusterIP!) . tcp . 80"
        #expect(
            kernel.ruleset!.nftText.contains("\(victimKey) comment \"ns1/s1:p0\" : goto svc-ns1/s1/tcp/p0"), "\(kernel.ruleset!.nftText)")

        // Endpoint changes stay partial, of an uninvolved Service and of both sides of the clash
        // (their claims are what they were), and keep the full sync's decision.
        for i in [3, 2, 1] {
            source.put("slice:\(services[i].meta.key)-x", ClusterState(endpointSlices: [inc.slice(i, services[i], endpoints: [2, 4])]))
            #expect(try syncer.sync(source, full: false, reason: "manifests changed").partial, "service \(i)")
            #expect(Planner.plan(from: kernel.ruleset, to: try fullTable(source, config)).isEmpty, "service \(i)")
        }

        // The victim goes: the squatter's claim is no longer contested, and a full sync gives it.
        source.put("svc:\(services[1].meta.key)", nil)
        let handover = try syncer.sync(source, full: false, reason: "manifests changed")
        #expect(!handover.partial)
        #expect(syncer.conflicts.isEmpty)
        #expect(
            kernel.ruleset!.nftText.contains("\(victimKey) comment \"ns2/s2:p0\" : goto ext-ns2/s2/tcp/p0"), "\(kernel.ruleset!.nftText)")
    }

    /// A Service the kernel refuses is left out and named; every other Service is programmed.
    /// Refused chains name their Service at once; refused elements, sent 128 to a message,
    /// are named on a retry that sends one per message.
    @Test(arguments: ["chain", "element"])
    func aServiceTheKernelRefusesIsLeftOutAndTheRestIsProgrammed(what: String) throws {
        let config = ProxyConfig(nodeName: "node-a")
        let services = (0..<6).map { inc.service($0, ports: 1) }
        let source = store(services, services.enumerated().map { inc.slice($0.offset, $0.element, endpoints: [1, 2]) })
        let kernel = FakeKernel()
        let poison = "/\(services[2].meta.name)/"
        kernel.refuse = { op in
            switch op {
            case .addChain(let c): what == "chain" && c.name.contains(poison)
            case .addElements(_, let es): what == "element" && es.contains { $0.verdict?.target?.contains(poison) == true }
            default: false
            }
        }
        let syncer = Syncer(config: config, kernel: kernel)
        _ = try syncer.sync(source, full: true, reason: "start")
        #expect(Array(syncer.refused.keys) == [services[2].meta.key])
        let text = kernel.ruleset!.nftText
        #expect(!text.contains(poison), "\(text)")
        for (i, s) in services.enumerated() where i != 2 { #expect(text.contains("svc-\(s.meta.key)/"), "\(s.meta.key)") }
        #expect(!kernel.preciseErrors, "the precise mode is for the retry only")

        // A change to the refused Service is tried again by a full sync; once the kernel takes
        // it, it is programmed.
        kernel.refuse = nil
        source.put("slice:\(services[2].meta.key)-x", ClusterState(endpointSlices: [inc.slice(2, services[2], endpoints: [3])]))
        let retry = try syncer.sync(source, full: false, reason: "manifests changed")
        #expect(!retry.partial && syncer.refused.isEmpty)
        #expect(kernel.ruleset!.nftText.contains(poison))
    }

    @Test func anotherWritersCommitMakesTheNextSyncFullAndRepairs() throws {
        let config = ProxyConfig(nodeName: "node-a")
        let services = (0..<5).map { inc.service($0, ports: 1) }
        let source = store(services, services.enumerated().map { inc.slice($0.offset, $0.element, endpoints: [1, 2]) })
        let kernel = FakeKernel()
        let syncer = Syncer(config: config, kernel: kernel)
        _ = try syncer.sync(source, full: true, reason: "start")

        // Someone deletes a svcnat chain's rules and commits.
        let victim = kernel.ruleset!.chains.first { !$0.rules.isEmpty && $0.base == nil }!.name
        try kernel.commitAsAnotherWriter(Transaction(family: .ip, table: "svcnat", operations: [.flushChain(victim)]), name: "nft (pid 7)")
        let why = try syncer.drift()
        #expect(why == "drift: nft (pid 7)")

        // Asked for a partial sync, the syncer does a full one: the cache is no longer the kernel's.
        let repair = try syncer.sync(source, full: false, reason: why!)
        #expect(!repair.partial)
        #expect(repair.repairedDrift == "nft (pid 7)")
        #expect(!kernel.ruleset!.chain(victim)!.rules.isEmpty)
        #expect(try syncer.drift() == nil)
    }

    @Test func commitsToOtherTablesLeaveTheCacheTrustedAndTheSyncPartial() throws {
        let services = (0..<5).map { inc.service($0, ports: 1) }
        let slices = services.enumerated().map { inc.slice($0.offset, $0.element, endpoints: [1, 2]) }
        let source = store(services, slices)
        let kernel = FakeKernel()
        let syncer = Syncer(config: ProxyConfig(nodeName: "node-a"), kernel: kernel)
        _ = try syncer.sync(source, full: true, reason: "start")
        for _ in 0..<10 { kernel.commitElsewhere() }
        #expect(try syncer.drift() == nil)
        source.put("slice:\(slices[1].meta.key)", ClusterState(endpointSlices: [inc.slice(1, services[1], endpoints: [2])]))
        // Another table's commit between the check and the batch moves the generation: the
        // batch still goes, at the new one.
        kernel.beforeNextApply = { kernel.commitElsewhere() }
        let next = try syncer.sync(source, full: false, reason: "manifests changed")
        #expect(next.partial)
        #expect(kernel.staleRefusals == 0)
        #expect(kernel.ruleset == (try fullTable(source, ProxyConfig(nodeName: "node-a"))))
    }

    @Test func aWriterBetweenTheReadAndTheCommitMakesTheSyncReadAndPlanAgain() throws {
        let services = (0..<4).map { inc.service($0, ports: 1) }
        let slices = services.enumerated().map { inc.slice($0.offset, $0.element, endpoints: [1, 2]) }
        let source = store(services, slices)
        let kernel = FakeKernel()
        let config = ProxyConfig(nodeName: "node-a")
        let syncer = Syncer(config: config, kernel: kernel)
        _ = try syncer.sync(source, full: true, reason: "start")
        let victim = kernel.ruleset!.chains.first { !$0.rules.isEmpty && $0.base == nil }!.name

        // During a partial sync's commit: the compare-and-swap fails, and a full sync repairs.
        source.put("slice:\(slices[1].meta.key)", ClusterState(endpointSlices: [inc.slice(1, services[1], endpoints: [2])]))
        kernel.beforeNextApply = {
            try kernel.commitAsAnotherWriter(Transaction(family: .ip, table: "svcnat", operations: [.flushChain(victim)]))
        }
        let repaired = try syncer.sync(source, full: false, reason: "manifests changed")
        #expect(!repaired.partial && kernel.staleRefusals == 1)
        #expect(kernel.ruleset == (try fullTable(source, config)))

        // In the middle of a full sync's read: read again before planning.
        kernel.duringNextRead = {
            try kernel.commitAsAnotherWriter(Transaction(family: .ip, table: "svcnat", operations: [.flushChain(victim)]))
        }
        _ = try syncer.sync(source, full: true, reason: "sync period")
        #expect(kernel.ruleset == (try fullTable(source, config)))

        // Between a full sync's read and its commit: refused, read and planned again.
        kernel.beforeNextApply = {
            try kernel.commitAsAnotherWriter(Transaction(family: .ip, table: "svcnat", operations: [.flushChain(victim)]))
        }
        _ = try syncer.sync(source, full: true, reason: "sync period")
        #expect(kernel.staleRefusals == 2)
        #expect(kernel.ruleset == (try fullTable(source, config)))
    }

    @Test func aRefusedSyncCountsTowardsTheBackoffAndTheNextSyncIsFull() throws {
        let services = (0..<3).map { inc.service($0, ports: 1) }
        let source = store(services, services.enumerated().map { inc.slice($0.offset, $0.element, endpoints: [1]) })
        let kernel = FakeKernel()
        let syncer = Syncer(config: ProxyConfig(nodeName: "node-a"), kernel: kernel)
        _ = try syncer.sync(source, full: true, reason: "start")

        source.put("slice:\(services[1].meta.key)-x", nil)
        kernel.refuseNext = FakeKernelRefusal(operation: "test")
        #expect(throws: FakeKernelRefusal.self) { try syncer.sync(source, full: false, reason: "manifests changed") }
        #expect(syncer.failures == 1 && syncer.retryDelay == 0.5)
        kernel.refuseNext = FakeKernelRefusal(operation: "test")
        #expect(throws: FakeKernelRefusal.self) { try syncer.sync(source, full: true, reason: "retry after failure") }
        #expect(syncer.failures == 2 && syncer.retryDelay == 1)

        // The change marked before the failures is not lost: the retry is a full sync.
        let retry = try syncer.sync(source, full: false, reason: "retry after failure")
        #expect(!retry.partial)
        #expect(syncer.failures == 0 && syncer.retryDelay == 0)
        #expect(Planner.plan(from: kernel.ruleset, to: try fullTable(source, syncer.config)).isEmpty)
    }

    @Test func backoffDoublesFromHalfASecondToThirty() {
        #expect((0...9).map { Syncer.backoff(afterFailures: $0) } == [0, 0.5, 1, 2, 4, 8, 16, 30, 30, 30])
    }
}
