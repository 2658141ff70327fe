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

    @Test func anotherWritersCommitMakesTheNextSyncFullAndRepairs() throws {
        let config = ProxyConfig(nodeName: "node-a")
        let services = (0..<5).map { inc.service($0, ports: 1) }
        let source = store(services, services.enumerated().map { inc.slice($0.offset, $0.element, endpoints: [1, 2]) })
        let kernel = FakeKernel()
        let syncer = Syncer(config: config, kernel: kernel)
        _ = try syncer.sync(source, full: true, reason: "start")

        // Someone deletes a svcnat chain's rules and commits.
        let victim = kernel.ruleset!.chains.first { !$0.rules.isEmpty && $0.base == nil }!.name
        try kernel.apply(Transaction(family: .ip, table: "svcnat", operations: [.flushChain(victim)]))
        let why = try syncer.drift()
        #expect(why?.hasPrefix("ruleset generation changed") == true)

        // Asked for a partial sync, the syncer does a full one: the cache is no longer the kernel's.
        let repair = try syncer.sync(source, full: false, reason: why!)
        #expect(!repair.partial)
        #expect(repair.repairedDrift)
        #expect(!kernel.ruleset!.chain(victim)!.rules.isEmpty)
        #expect(try syncer.drift() == nil)
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
