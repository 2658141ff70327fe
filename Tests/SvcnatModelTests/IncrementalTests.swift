import SvcnatCore
import NFTModel
import SvcnatModel
import SvcnatSources
import Testing

/// The daemon's partial syncs plan from the changed Services alone. Whatever the sequence of
/// changes, the table they produce must be one a full sync would leave alone.
@Suite struct Incremental {
    struct Rng {
        var state: UInt64
        mutating func next(_ n: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(n))
        }
    }

    /// Every fourth Service is a LoadBalancer with node ports, a load-balancer IP and source
    /// ranges; every fifth has an external IP.
    /// The test's IPv4 address `v`, or for IPv6 the same 32 bits under 2001:db8::/96.
    func a(_ v: UInt32, _ f: IPFamily) -> IPAddress { f == .v4 ? IPAddress(v) : IPAddress(v6: 0x2001_0db8_0000_0000, UInt64(v)) }

    func service(_ i: Int, ports: Int, family f: IPFamily = .v4) -> Service {
        let lb = i % 4 == 0
        var svc = Service(
            meta: ObjectMeta(namespace: "ns\(i % 3)", name: "s\(i)"), type: lb ? .loadBalancer : .clusterIP,
            clusterIP: a(UInt32(0xC612_6400) + UInt32(i), f),
            ports: (0..<ports).map {
                ServicePort(
                    name: "p\($0)", proto: $0 % 2 == 0 ? .tcp : .udp, port: UInt16(80 + $0),
                    nodePort: lb ? UInt16(30000 + i * 4 + $0) : nil)
            },
            externalIPs: i % 5 == 0 ? [a(UInt32(0xC612_C800) + UInt32(i), f)] : [],
            loadBalancerIPs: lb ? [a(UInt32(0xC612_C900) + UInt32(i), f)] : [],
            loadBalancerSourceRanges: lb && i % 8 == 0 ? [IPPrefix(address: a(0xC612_0000, f), length: f.bits - 8)] : [])
        svc.externalTrafficPolicyLocal = lb && i % 3 == 0
        svc.internalTrafficPolicyLocal = i % 7 == 0
        svc.affinityTimeout = i % 6 == 1 ? 600 : nil
        return svc
    }

    func slice(_ i: Int, _ svc: Service, endpoints: [Int], family f: IPFamily = .v4) -> EndpointSlice {
        EndpointSlice(
            meta: ObjectMeta(namespace: svc.meta.namespace, name: "\(svc.meta.name)-x"), serviceName: svc.meta.name,
            endpoints: endpoints.map {
                SliceEndpoint(
                    address: a(UInt32(0xC613_0000) + UInt32($0), f),
                    nodeName: $0 % 2 == 0 ? "node-a" : "node-b")
            },
            ports: svc.ports.map { EndpointPort(name: $0.name, proto: $0.proto, port: 8000 + $0.port) })
    }

    /// Whether every endpoint-map rule of `before` still finds, once the first batch of `tx`
    /// is committed, an endpoint of its own port (old or new) for each value its `numgen` can
    /// give: a packet that entered the hook before the commit runs the old rules against the
    /// maps' newest contents. Returns what fails.
    func oldRulesStillResolve(_ before: Ruleset, _ tx: Transaction, after: Ruleset) -> [String] {
        guard case .some(let mid?) = Ruleset.applying(tx.batches[0], to: before) else { return ["first batch refused"] }
        func entries(_ r: Ruleset, _ map: String) -> [UInt32: ElementKey] {
            var out: [UInt32: ElementKey] = [:]
            for e in r.set(map)?.elements ?? [] { if case .integer(let k)? = e.key.first { out[k] = e.data } }
            return out
        }
        func endpoints(_ r: Ruleset, _ chain: String) -> Set<ElementKey> {
            var out = Set<ElementKey>()
            for rule in r.chain(chain)?.rules ?? [] {
                for case .dnatFromMap(let n, let base, let map, _) in rule.items {
                    let es = entries(r, map)
                    for k in base..<(base + n) { if let d = es[k] { out.insert(d) } }
                }
            }
            return out
        }
        var problems: [String] = []
        for chain in before.chains {
            for rule in chain.rules {
                for case .dnatFromMap(let n, let base, let map, _) in rule.items {
                    let was = entries(before, map), now = entries(mid, map)
                    // A port's service and external chains share its slot.
                    let port = chain.name.split(separator: "-", maxSplits: 1).last!
                    let own = ["svc-\(port)", "ext-\(port)"].reduce(into: Set<ElementKey>()) {
                        $0.formUnion(endpoints(before, $1)); $0.formUnion(endpoints(after, $1))
                    }
                    for k in base..<(base + n) {
                        guard let d = now[k] else { problems.append("\(chain.name): key \(k) of \(map) gone"); continue }
                        if d != was[k] && !own.contains(d) { problems.append("\(chain.name): key \(k) of \(map) now another port's") }
                    }
                }
            }
        }
        return problems
    }

    /// A Service goes and another, whose port falls in the same endpoint map, comes in the same
    /// change: the newcomer must not take the leaver's keys, which the leaver's old rule may
    /// still read while the commit runs. Both the full and the incremental paths.
    @Test func freedKeysAreNotReusedInTheSameChange() throws {
        let translator = Translator(TranslatorConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!]))
        // Plain ClusterIP Services (index 2 mod 4, not 0 mod 7) with one endpoint on this node.
        func state(_ services: [Int]) -> ClusterState {
            let svcs = services.map { service($0, ports: 1) }
            return ClusterState(services: svcs, endpointSlices: zip(services, svcs).map { slice($0, $1, endpoints: [$0]) })
        }
        func shard(_ i: Int) -> Int { EndpointSlots.shard(PortFragment.key(ProxyState(state([i]), nodeName: "node-a").servicePorts[0])) }
        // Its key sorts after the leaver's, so the incremental path removes the leaver first.
        let other = try #require(stride(from: 6, to: 20000, by: 4).first { $0 % 7 != 0 && $0 % 3 == 2 && shard($0) == shard(2) })
        let before = translator.ruleset(for: ProxyState(state([2]), nodeName: "node-a"))
        let full = Planner.plan(from: before, to: translator.ruleset(for: ProxyState(state([other]), nodeName: "node-a"), previous: before))
        let after = try #require(Ruleset.applying(full, to: before) ?? nil)
        #expect(oldRulesStillResolve(before, full, after: after).isEmpty)
        #expect(full.batches.count == 2, "\(full.nftText)")

        let fragments = translator.fragments(for: ProxyState(state([2]), nodeName: "node-a"))
        var inc = IncrementalState(translator: translator, fragments: fragments)
        let gone = "ns2/s2", comes = "ns\(other % 3)/s\(other)"
        let tx = inc.update([gone: [], comes: ProxyState(state([other]), nodeName: "node-a").servicePorts])
        #expect(oldRulesStillResolve(before, tx, after: inc.ruleset).isEmpty, "\(tx.nftText)")
    }

    @Test(arguments: [(EndpointSelection.map, IPFamily.v4), (.cascade, .v4), (.map, .v6), (.cascade, .v6)])
    func randomChangesMatchAFullSync(selection: EndpointSelection, family: IPFamily) throws {
        var rng = Rng(state: 42)
        let translator = Translator(
            TranslatorConfig(
                clusterCIDRs: [IPPrefix(address: a(0xC613_0000, family), length: family.bits - 16)],
                endpointSelection: selection, family: family))
        var services: [Int: (Service, [Int])] = [:]
        for i in 0..<40 { services[i] = (service(i, ports: 1 + i % 3, family: family), (0..<(i % 6)).map { i * 10 + $0 }) }
        func cluster() -> ClusterState {
            ClusterState(
                services: services.values.map(\.0),
                endpointSlices: services.map { slice($0.key, $0.value.0, endpoints: $0.value.1, family: family) })
        }
        func proxy() -> ProxyState { ProxyState(cluster(), nodeName: "node-a", family: family) }
        func ports(_ key: String) -> [ServicePortState] {
            proxy().servicePorts.filter { "\($0.name.namespace)/\($0.name.name)" == key }
        }

        let kernel = FakeKernel()
        let first = translator.fragments(for: proxy())
        try kernel.apply(Planner.plan(from: nil, to: translator.assemble(first)))
        func table() -> Ruleset? { kernel.rulesets[family.tableFamily] }
        var state = IncrementalState(translator: translator, fragments: first)

        for step in 0..<300 {
            var touched = Set<String>()
            for _ in 0..<(1 + rng.next(3)) {
                let i = rng.next(50)
                switch rng.next(6) {
                case 0: services[i] = nil  // Service deleted
                case 1: services[i] = (service(i, ports: 1 + rng.next(3), family: family), [i * 10])  // added or reshaped
                default:
                    guard var s = services[i] else { continue }
                    switch rng.next(3) {
                    case 0 where !s.1.isEmpty: s.1.removeLast()  // endpoint gone
                    case 1: s.1.append(i * 10 + 5 + rng.next(20))  // endpoint added
                    default: if !s.1.isEmpty { s.1[rng.next(s.1.count)] = i * 10 + 30 + rng.next(50) }  // swapped
                    }
                    services[i] = s
                }
                touched.insert("ns\(i % 3)/s\(i)")
            }
            let before = table()!
            let tx = state.update(Dictionary(uniqueKeysWithValues: touched.map { ($0, ports($0)) }))
            let fullPlan = Planner.plan(from: before, to: translator.ruleset(for: proxy(), previous: before))
            try kernel.apply(tx)
            let full = translator.ruleset(for: proxy(), previous: table())
            for (path, plan) in [("incremental", tx), ("full", fullPlan)] {
                let problems = oldRulesStillResolve(before, plan, after: full)
                #expect(problems.isEmpty, "step \(step), \(path): \(problems)")
                if !problems.isEmpty { return }
            }
            let remaining = Planner.plan(from: table(), to: full)
            #expect(remaining.isEmpty, "step \(step): a full sync would still change:\n\(remaining.nftText)")
            #expect(state.ruleset == full || selection == .map)
            if !remaining.isEmpty { return }
        }
    }
}

/// The object store's label indexes: a Pod change marks the selector Services it can back and
/// no others, and each Service's ports computed from the store alone equal a full translation of
/// everything the store holds.
@Suite struct PodIndex {
    @Test func podChangesMarkTheirServicesAndEveryServiceMatchesAFullTranslation() {
        var rng = Incremental.Rng(state: 99)
        let store = ObjectStore(root: "")
        let apps = ["a", "b", "c"], tiers = ["x", "y"]
        func selector(_ i: Int) -> [String: String]? {
            switch i % 5 {
            case 0: nil  // no selector: no Pods
            case 1: [:]  // an empty selector selects nothing
            case 2: ["app": apps[rng.next(3)], "tier": tiers[rng.next(2)]]
            default: ["app": apps[rng.next(3)]]
            }
        }
        var services: [Int: Service] = [:]
        func put(service i: Int) {
            let s = Service(
                meta: ObjectMeta(namespace: "ns\(i % 2)", name: "s\(i)"), clusterIP: IPAddress("198.18.100.\(i + 1)")!,
                selector: selector(i + rng.next(2) * 5), ports: [ServicePort(name: "http", proto: .tcp, port: 80, targetPort: .int(8080))])
            services[i] = s
            _ = store.put("svc\(i)", ClusterState(services: [s]))
        }
        func put(pod i: Int) {
            var labels = ["app": apps[rng.next(3)]]
            if rng.next(2) == 0 { labels["tier"] = tiers[rng.next(2)] }
            if rng.next(3) == 0 { labels["other"] = "z" }
            let p = Pod(
                meta: ObjectMeta(namespace: "ns\(rng.next(2))", name: "p\(i)", labels: labels),
                podIP: IPAddress("198.19.0.\(1 + rng.next(200))")!, ready: rng.next(4) != 0, nodeName: "node-a")
            _ = store.put("pod\(i)", ClusterState(pods: [p]))
        }
        for i in 0..<16 { put(service: i) }
        for i in 0..<40 { put(pod: i) }
        func full() -> [String: [ServicePortState]] {
            Dictionary(grouping: ProxyState(store.state, nodeName: "node-a").servicePorts) { "\($0.name.namespace)/\($0.name.name)" }
        }
        func fromStore(_ key: String) -> [ServicePortState] { store.ports(ofService: key, nodeName: "node-a") }
        var last = full()
        _ = store.takeDirty()
        var marked = 0
        for _ in 0..<400 {
            switch rng.next(10) {
            case 0: _ = store.put("pod\(rng.next(40))", nil)  // Pod deleted
            case 1: put(service: rng.next(16))  // selector changed
            default: put(pod: rng.next(40))  // Pod relabelled, moved, readied or new
            }
            let dirty = store.takeDirty()
            marked += dirty.count
            let now = full()
            for svc in services.values {
                let key = svc.meta.key
                #expect(fromStore(key) == now[key] ?? [], "\(key)")
                if (now[key] ?? []) != (last[key] ?? []) { #expect(dirty.contains(key), "\(key) changed unmarked") }
            }
            last = now
        }
        // Marking by labels, not by namespace: fewer than half of the 8 Services of a namespace
        // are marked per change on average.
        #expect(marked < 400 * 4, "\(marked)")
    }
}
