import Foundation
import SvcnatCore
import NFTModel
import SvcnatModel
import SvcnatExplain
import SvcnatSources
import Testing

@Suite struct Planning {
    let config = ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!])

    /// A dual-stack UDP node port is one frontend in each table, with each family's endpoints:
    /// an IPv6 endpoint that goes must have its flows deleted even though IPv4 is unchanged.
    @Test func dualStackFlowsAreCleanedPerFamily() throws {
        func state(_ v6: [Int]) -> ClusterState {
            let svc = Service(
                meta: ObjectMeta(namespace: "demo", name: "dns"), type: .nodePort,
                clusterIPs: [ip("198.18.100.53"), ip("2001:db8:100::53")],
                ports: [ServicePort(name: "dns", proto: .udp, port: 53, targetPort: .int(5353), nodePort: 30053)])
            let port = [EndpointPort(name: "dns", proto: .udp, port: 5353)]
            return ClusterState(
                services: [svc],
                endpointSlices: [
                    EndpointSlice(
                        meta: ObjectMeta(namespace: "demo", name: "dns-4"), serviceName: "dns",
                        endpoints: [SliceEndpoint(address: ip("198.19.1.2"))], ports: port),
                    EndpointSlice(
                        meta: ObjectMeta(namespace: "demo", name: "dns-6"), serviceName: "dns",
                        endpoints: v6.map { SliceEndpoint(address: ip("2001:db8:1:\($0)::2")) }, ports: port)
                ])
        }
        let kernel = FakeKernel()
        let rec = Reconciler(config: config, kernel: kernel)
        try rec.reconcile(state([1, 2]))
        #expect(kernel.rulesets.keys.sorted { $0.rawValue < $1.rawValue } == [.ip, .ip6])
        try rec.reconcile(state([1]))
        let gone = EndpointAddress(ip: ip("2001:db8:1:2::2"), port: 5353)
        #expect(
            Set(kernel.flowCleanups.last ?? []) == [
                FlowFilter(destination: ip("2001:db8:100::53"), port: 53, endpoint: gone),
                FlowFilter(destination: nil, port: 30053, endpoint: gone)
            ])
    }

    func state(_ pods: [Int]) -> ClusterState {
        let svc = Service(
            meta: ObjectMeta(namespace: "demo", name: "web"), clusterIP: IPAddress("198.18.100.20"),
            selector: ["app": "web"], ports: [ServicePort(name: "http", port: 80, targetPort: .int(8080))])
        return ClusterState(
            services: [svc],
            pods: pods.map {
                Pod(meta: ObjectMeta(namespace: "demo", name: "p\($0)", labels: ["app": "web"]), podIP: IPAddress("198.19.\($0).2"))
            })
    }

    @Test func firstSyncCreatesAndSecondIsEmpty() throws {
        let kernel = FakeKernel()
        let rec = Reconciler(config: config, kernel: kernel)
        let first = try rec.reconcile(state([1, 2]))
        #expect(first.transaction.operations.first == .addTable(comment: Names.tableComment))
        let second = try rec.reconcile(state([1, 2]))
        #expect(second.transaction.isEmpty)
        #expect(Planner.plan(from: kernel.ruleset, to: try Reconciler.desired(state([1, 2]), config: config).1).isEmpty)
    }

    @Test func endpointSwapIsOnlyElementUpdates() throws {
        let kernel = FakeKernel()
        let rec = Reconciler(config: config, kernel: kernel)
        try rec.reconcile(state([1, 2, 3]))
        let swap = try rec.reconcile(state([1, 2, 4])).transaction
        // Pod 3 replaced by pod 4: its map element and its hairpin element change; no rule moves.
        #expect(!swap.operations.contains { if case .addRule = $0 { true } else if case .deleteRule = $0 { true } else { false } })
        #expect(swap.messageCount == 4, "\(swap.nftText)")
        #expect(swap.nftText.contains("add element ip svcnat endpoints-"))
        #expect(swap.nftText.contains(": 198.19.4.2 . 8080 }"))
        // One more endpoint: the one rule is replaced (new modulus), one element added.
        let grow = try rec.reconcile(state([1, 2, 4, 5])).transaction
        #expect(grow.operations.filter { if case .addRule = $0 { true } else { false } }.count == 1)
        #expect(grow.operations.filter { if case .deleteRule = $0 { true } else { false } }.count == 1)
        #expect(grow.messageCount == 4, "\(grow.nftText)")
    }

    @Test func slotsStayPutAndDoNotOverlap() {
        let ports = (0..<2000).map { ("svc-ns/s\($0)/tcp/http", UInt32($0 % 13 + 1)) }
        let first = EndpointSlots.allocate(ports, previous: [:])
        var byShard: [Int: [(UInt32, UInt32)]] = [:]
        for (c, n) in ports {
            let s = first[c]!
            #expect(s.shard == EndpointSlots.shard(c) && s.capacity >= n && s.base % s.capacity == 0)
            byShard[s.shard, default: []].append((s.base, s.base + s.capacity))
        }
        for ranges in byShard.values {
            let sorted = ranges.sorted { $0.0 < $1.0 }
            for i in sorted.indices.dropFirst() { #expect(sorted[i - 1].1 <= sorted[i].0) }
        }
        // Growing one port past its capacity moves only that port.
        var changed = ports
        changed[7].1 = 40
        let second = EndpointSlots.allocate(changed, previous: first)
        let moved = ports.map(\.0).filter { first[$0] != second[$0] }
        #expect(moved == [ports[7].0])
    }

    @Test func endpointChangeTouchesOnlyItsChainAndElements() throws {
        let kernel = FakeKernel()
        let rec = Reconciler(config: ProxyConfig(clusterCIDRs: config.clusterCIDRs, endpointSelection: .cascade), kernel: kernel)
        try rec.reconcile(state([1, 2]))
        let change = try rec.reconcile(state([1, 2, 3])).transaction
        let chain = "svc-demo/web/tcp/http"
        // The mark rule stays; the two cascade rules go; three come; one hairpin element.
        #expect(change.operations.filter { if case .deleteRule(chain, _) = $0 { true } else { false } }.count == 2)
        #expect(change.operations.filter { if case .addRule(chain, _) = $0 { true } else { false } }.count == 3)
        #expect(change.operations.contains(.addElements(set: "hairpin", [SetElement(key: [.ip(ip("198.19.3.2")), .ip(ip("198.19.3.2"))])])))
        #expect(change.operations.count == 6)
        #expect(try rec.reconcile(state([1, 2, 3])).transaction.isEmpty)
    }

    @Test func removingTheLastEndpointMovesTheServiceToReject() throws {
        let kernel = FakeKernel()
        let rec = Reconciler(config: config, kernel: kernel)
        try rec.reconcile(state([1]))
        let tx = try rec.reconcile(state([])).transaction
        let text = tx.nftText
        #expect(text.contains("delete element ip svcnat service-ips { 198.18.100.20 . tcp . 80 }"))
        #expect(
            text.contains(
                "add element ip svcnat no-endpoint-services { 198.18.100.20 . tcp . 80 comment \"demo/web:http\" : goto reject-chain }"))
        #expect(text.contains("delete chain ip svcnat svc-demo/web/tcp/http"))
        #expect(kernel.ruleset?.chain("svc-demo/web/tcp/http") == nil)
    }

    /// Clashing claims are decided by the stated rule and never refuse the input: the
    /// allocated ClusterIP beats a user's external IP whatever their ages; between claims of one
    /// kind the older Service wins, then the lower namespace/name; the loser keeps the rest.
    @Test func clashingClaimsAreDecidedByTheRuleAndNeverRefuseTheInput() throws {
        func svc(_ name: String, _ ip: String, external: [String] = [], nodePort: UInt16? = nil, created: String? = nil) -> Service {
            var s = Service(
                meta: ObjectMeta(namespace: "x", name: name, creationTimestamp: created), type: nodePort == nil ? .clusterIP : .nodePort,
                clusterIP: IPAddress(ip), ports: [ServicePort(name: "p", port: 80, nodePort: nodePort)],
                externalIPs: external.compactMap(IPAddress.init))
            s.selector = nil
            return s
        }
        // The squatter is older and sorts first by name, and still loses to the ClusterIP.
        let victim = svc("victim", "198.18.100.1", created: "2026-12-01T00:00:00Z")
        let squat = svc("a-squat", "198.18.100.2", external: ["198.18.100.1", "198.18.200.9"], created: "2020-01-01T00:00:00Z")
        let state = ClusterState(services: [victim, squat])
        let (proxy, ruleset) = try Reconciler.desired(state, config: config)
        let squatPort = try #require(proxy.servicePorts.first { $0.name.name == "a-squat" })
        #expect(squatPort.frontends.map(\.ip.description) == ["198.18.100.2", "198.18.200.9"], "keeps its ClusterIP and other external IP")
        #expect(ruleset.nftText.contains("198.18.100.1 . tcp . 80 comment \"x/victim:p\""), "\(ruleset.nftText)")
        let conflicts = Reconciler.conflicts(state, config: config)
        #expect(
            conflicts.map(\.description) == [
                "Service x/a-squat port p: its ExternalIP 198.18.100.1:80/TCP is skipped, Service x/victim holds it"
            ])

        // Two external IPs: the older Service wins; without ages, the lower namespace/name.
        let older = svc("zz", "198.18.100.3", external: ["198.18.200.1"], created: "2025-01-01T00:00:00Z")
        let newer = svc("aa", "198.18.100.4", external: ["198.18.200.1"], created: "2026-01-01T00:00:00Z")
        #expect(Reconciler.conflicts(ClusterState(services: [newer, older]), config: config).map(\.loser.name) == ["aa"])
        let noAge = [svc("zz", "198.18.100.3", external: ["198.18.200.1"]), svc("aa", "198.18.100.4", external: ["198.18.200.1"])]
        #expect(Reconciler.conflicts(ClusterState(services: noAge), config: config).map(\.loser.name) == ["zz"])
        // A node port: the older keeps it, the other keeps its ClusterIP.
        let np = ClusterState(services: [
            svc("first", "198.18.100.5", nodePort: 30080, created: "2025-01-01T00:00:00Z"),
            svc("second", "198.18.100.6", nodePort: 30080, created: "2026-01-01T00:00:00Z")
        ])
        let (npProxy, _) = try Reconciler.desired(np, config: config)
        #expect(npProxy.servicePorts.map { "\($0.name.name) \($0.nodePort.map(String.init) ?? "-")" } == ["first 30080", "second -"])
        #expect(Reconciler.conflicts(np, config: config).map(\.frontend) == ["node port 30080/TCP"])
    }

    @Test func refusedTransactionLeavesFakeKernelAsItWas() throws {
        let kernel = FakeKernel()
        let rec = Reconciler(config: config, kernel: kernel)
        try rec.reconcile(state([1]))
        let before = kernel.ruleset
        kernel.refuseNext = FakeKernelRefusal(operation: "test")
        #expect(throws: FakeKernelRefusal.self) { try rec.reconcile(state([1, 2])) }
        #expect(kernel.ruleset == before)
    }
}

@Suite struct StaleFlowFilters {
    let svc = StaleFlows.Frontend(ip: IPAddress("198.18.100.20"), port: 53)
    let np = StaleFlows.Frontend(ip: nil, port: 30053)
    let a = EndpointAddress(ip: IPAddress("198.19.1.2")!, port: 8080)
    let b = EndpointAddress(ip: IPAddress("198.19.2.2")!, port: 8080)

    @Test func onlyGoneEndpointsAndNewlyServedFrontends() {
        let f = StaleFlows.filters(before: [svc: [a, b], np: []], after: [svc: [b], np: [b]])
        #expect(
            Set(f) == [FlowFilter(destination: svc.ip, port: 53, endpoint: a), FlowFilter(destination: nil, port: 30053, endpoint: nil)])
        #expect(StaleFlows.filters(before: [svc: [a]], after: [svc: [a]]).isEmpty)
        // A Service that goes away: its flows to its endpoints go too.
        #expect(StaleFlows.filters(before: [svc: [a]], after: [:]) == [FlowFilter(destination: svc.ip, port: 53, endpoint: a)])
    }

    @Test func filtersMatchOnlyTheirFlows() {
        let gone = FlowFilter(destination: svc.ip, port: 53, endpoint: a)
        let svcIP = svc.ip!
        #expect(gone.matches(originalDestination: svcIP, originalPort: 53, replySource: a.ip, replyPort: 8080))
        #expect(!gone.matches(originalDestination: svcIP, originalPort: 53, replySource: b.ip, replyPort: 8080))
        #expect(!gone.matches(originalDestination: IPAddress("198.18.100.21")!, originalPort: 53, replySource: a.ip, replyPort: 8080))
        #expect(!gone.matches(originalDestination: svcIP, originalPort: 54, replySource: a.ip, replyPort: 8080))
        let unNATed = FlowFilter(destination: nil, port: 30053, endpoint: nil)
        let node = IPAddress("198.18.0.1")!
        #expect(unNATed.matches(originalDestination: node, originalPort: 30053, replySource: node, replyPort: 30053))
        #expect(!unNATed.matches(originalDestination: node, originalPort: 30053, replySource: a.ip, replyPort: 8080))
    }
}
