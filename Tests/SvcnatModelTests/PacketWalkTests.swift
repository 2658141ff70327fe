import SvcnatCore
import NFTModel
import SvcnatModel
import SvcnatExplain
import SvcnatSources
import Testing

/// `svcnat explain --source` walks a packet through the rules as the kernel would. These check
/// the walk against what the rules were built to do, without a kernel; the kernel tests check
/// it against real packets.
@Suite struct PacketWalkTests {
    let node = ip("198.18.0.1")

    func fixture(_ selection: EndpointSelection) throws -> Ruleset {
        let r = try ManifestSource.load([examplesDir, fixtures + "/services.yaml"])
        return try Reconciler.desired(
            r.state, config: ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!], endpointSelection: selection)
        ).1
    }

    func walk(_ r: Ruleset, from: String, to: String, _ port: UInt16, _ proto: TransportProtocol = .tcp) -> [PacketWalk.Outcome] {
        PacketWalk.walk(.init(source: ip(from), destination: ip(to), port: port, proto: proto), in: r, local: [node])
    }

    func endpoints(_ o: [PacketWalk.Outcome]) -> [String: String] {
        var out: [String: String] = [:]
        for x in o { if case .accepted(let ep?) = x.fate { out[ep.description] = x.probabilityText } }
        return out
    }

    /// Every frontend of every Service, from outside, from a pod, from the node: the fates add
    /// up to 1, and the endpoints reached are the ones `show` lists, with its probabilities.
    @Test(arguments: [EndpointSelection.map, .cascade])
    func everyFrontendAgreesWithTheServiceView(selection: EndpointSelection) throws {
        let r = try fixture(selection)
        var walked = 0
        for v in r.serviceViews {
            for f in v.frontendKeys {
                for source in ["198.18.0.77", "198.19.99.9", "198.18.0.1"] {
                    let o = walk(r, from: source, to: (f.ip ?? node).description, f.port, v.proto)
                    walked += 1
                    let total = o.map(\.probability).reduce(0, +)
                    #expect(abs(total - 1) < 1e-9, "\(v.name) \(f) from \(source): \(o)")
                    if v.chain == nil {
                        #expect(
                            o.count == 1 && o[0].fate == .rejected(v.proto == .tcp ? .tcpReset : .icmpPortUnreachable), "\(v.name): \(o)")
                        continue
                    }
                    let reached = endpoints(o)
                    if reached.isEmpty { continue }  // dropped by a source range
                    #expect(
                        reached == Dictionary(uniqueKeysWithValues: v.endpoints.map { ($0.0.description, $0.1 == "1/1" ? "1" : $0.1) }),
                        "\(v.name) \(f) from \(source)")
                }
            }
        }
        #expect(walked > 30)
    }

    /// The map shape's shares are read off the map, not assumed to be 1/n: with one endpoint's
    /// element overwritten by another's and one removed, `show` says 2/3 and nothing for the
    /// missing one, as the walk (and the kernel) would draw them.
    @Test func mapSharesAreReadOffTheMapNotAssumed() throws {
        var r = try fixture(.map)
        let view = try #require(r.serviceViews.first { $0.name == "codereview/codereviewapi:codereviewapip" })
        #expect(view.endpoints.map(\.1) == ["1/3", "1/3", "1/3"])
        let chain = try #require(r.chain(view.chain!))
        guard
            case .dnatFromMap(_, let base, let map, _)? = chain.rules.flatMap(\.items).first(where: {
                if case .dnatFromMap = $0 { true } else { false }
            })
        else { Issue.record("no map rule in \(chain)"); return }
        let i = try #require(r.sets.firstIndex { $0.name == map })
        let firstData = try #require(r.sets[i].elements.first { $0.key == [.integer(base)] }?.data)
        for j in r.sets[i].elements.indices where r.sets[i].elements[j].key == [.integer(base + 1)] {
            r.sets[i].elements[j].data = firstData
        }
        let damaged = try #require(r.serviceViews.first { $0.name == view.name })
        #expect(damaged.endpoints.map(\.1) == ["2/3", "1/3"], "\(damaged.endpoints)")
        r.sets[i].elements.removeAll { $0.key == [.integer(base + 2)] }
        #expect(try #require(r.serviceViews.first { $0.name == view.name }).endpoints.map(\.1) == ["2/3"])
        let walked = endpoints(walk(r, from: "198.18.0.77", to: "198.18.100.10", 80))
        #expect(Array(walked.values) == ["2/3"], "\(walked)")
    }

    @Test func sourceRangesMasqueradeAndHairpin() throws {
        let r = try fixture(.map)
        // default/shop: load balancer 198.18.200.6 open to 198.18.0.0/24 only; always masqueraded.
        let allowed = walk(r, from: "198.18.0.77", to: "198.18.200.6", 80)
        #expect(endpoints(allowed) == ["198.19.30.2:8080": "1/2", "198.19.31.2:8080": "1/2"])
        #expect(allowed.allSatisfy { $0.masqueraded })
        #expect(allowed[0].trace.contains { $0.hasPrefix("fw-default/shop/tcp/http: ip saddr 198.18.0.0/24 return") })
        let denied = walk(r, from: "198.18.5.77", to: "198.18.200.6", 80)
        #expect(denied.count == 1 && denied[0].fate == .dropped && denied[0].trace.last == "fw-default/shop/tcp/http: drop")
        // The ClusterIP from a pod keeps the pod's address, except when the pod reaches itself.
        let fromPod = walk(r, from: "198.19.30.2", to: "198.18.100.80", 80)
        #expect(fromPod.first { $0.fate == .accepted(EndpointAddress(ip: ip("198.19.30.2"), port: 8080)) }?.masqueraded == true)
        #expect(fromPod.first { $0.fate == .accepted(EndpointAddress(ip: ip("198.19.31.2"), port: 8080)) }?.masqueraded == false)
        // An unknown port of a ClusterIP is refused.
        #expect(walk(r, from: "198.19.30.2", to: "198.18.100.80", 81).map(\.fate) == [.rejected(.tcpReset)])
        // Session affinity: a new client is spread; the walk says what it cannot know (who is
        // remembered: the kernel's own set members are not read).
        let sticky = try #require(r.serviceViews.first { $0.name.hasPrefix("default/sticky") }?.frontendKeys.first)
        let affinity = walk(r, from: "198.19.1.1", to: sticky.ip!.description, sticky.port)
        #expect(endpoints(affinity) == ["198.19.40.2:8080": "1/2", "198.19.41.2:8080": "1/2"])
        #expect(affinity.allSatisfy { $0.notes.count == 2 && $0.notes[0].contains("remembered") })
    }

    @Test func externalLocalPolicy() throws {
        let inc = Incremental()
        let svc = inc.service(12, ports: 1)  // a LoadBalancer with externalTrafficPolicy Local
        #expect(svc.externalTrafficPolicyLocal && !svc.internalTrafficPolicyLocal)
        let state = ClusterState(services: [svc], endpointSlices: [inc.slice(12, svc, endpoints: [120, 121])])
        let (local, remote) = ("198.19.0.120:8080", "198.19.0.121:8080")
        let r = try Reconciler.desired(state, config: ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!], nodeName: "node-a")).1
        let lb = svc.loadBalancerIPs[0].description
        let outside = walk(r, from: "198.18.0.77", to: lb, 80)
        #expect(endpoints(outside) == [local: "1"] && outside.allSatisfy { !$0.masqueraded })
        let pod = walk(r, from: "198.19.5.5", to: lb, 80)
        #expect(endpoints(pod) == [local: "1/2", remote: "1/2"])
        let fromNode = walk(r, from: "198.18.0.1", to: "198.18.0.1", svc.ports[0].nodePort!)
        #expect(endpoints(fromNode) == [local: "1/2", remote: "1/2"] && fromNode.allSatisfy { $0.masqueraded })
    }
}

/// `svcnat explain --ingress HOST/PATH`: the Ingress API's matching rules.
@Suite struct IngressMatching {
    func path(_ host: String?, _ p: String, _ type: String, _ svc: String) -> Ingress.Path {
        Ingress.Path(host: host, path: p, pathType: type, backend: .init(service: svc, port: .int(80)))
    }

    @Test func hostsPathsAndPrecedence() {
        let ingresses = [
            Ingress(
                meta: ObjectMeta(namespace: "shop", name: "main"),
                paths: [
                    path("shop.example.test", "/", "Prefix", "front"),
                    path("shop.example.test", "/api", "Prefix", "api"),
                    path("shop.example.test", "/api/v2", "Prefix", "api2"),
                    path("shop.example.test", "/api/v2", "Exact", "api2-exact"),
                    path("*.example.test", "/", "Prefix", "wild"),
                    path(nil, "/health", "Exact", "health")
                ]),
            Ingress(
                meta: ObjectMeta(namespace: "other", name: "fallback"), paths: [],
                defaultBackend: .init(service: "default", port: .string("http")))
        ]
        func service(_ host: String, _ p: String) -> String? { IngressMatch.find(host: host, path: p, in: ingresses)?.backend.service }
        #expect(service("shop.example.test", "/") == "front")
        #expect(service("shop.example.test", "/api") == "api")
        #expect(service("shop.example.test", "/api/") == "api")
        #expect(service("shop.example.test", "/apix") == "front")  // whole path elements only
        #expect(service("shop.example.test", "/api/v2/items") == "api2")
        #expect(service("shop.example.test", "/api/v2") == "api2-exact")  // Exact first at equal length
        #expect(service("cart.example.test", "/x") == "wild")  // one label for the wildcard
        #expect(service("a.b.example.test", "/x") == "default")  // not two
        #expect(service("anything", "/health") == "health")  // no host: every host
        #expect(IngressMatch.find(host: "x", path: "/", in: ingresses)?.namespace == "other")
        #expect(IngressMatch.find(host: "x", path: "/", in: Array(ingresses.prefix(1))) == nil)
    }
}
