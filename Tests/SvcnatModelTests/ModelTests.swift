import Foundation
import SvcnatCore
import NFTModel
import SvcnatModel
import SvcnatExplain
import SvcnatSources
import Testing

let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.path
let examplesDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("examples").path

func decode(_ yaml: String, file: String = "test.yaml") -> ManifestDecoder {
    var d = ManifestDecoder()
    d.decode(yaml, file: file)
    return d
}

func ip(_ s: String) -> IPAddress { IPAddress(s)! }

@Suite struct KubeProxyCompatibility {
    @Test func chainNamesUseKubeProxysHash() {
        let spn = ServicePortName(namespace: "ns1", name: "svc1", port: "p80", proto: .tcp)
        #expect(KubeProxyNames.serviceChain(spn) == "KUBE-SVC-XPGD46QRK7WJZT7O")
        let ep = EndpointAddress(ip: ip("10.180.0.1"), port: 80)
        #expect(KubeProxyNames.endpointChain(spn, ep) == "KUBE-SEP-SXIVWICOYRO3J4NJ")
    }

    @Test func probabilitiesPrintAsIptablesSaveStoresThem() {
        #expect(IptablesRenderer.storedProbability(2) == "0.50000000000")
        #expect(IptablesRenderer.storedProbability(3) == "0.33333333349")
        #expect(IptablesRenderer.storedProbability(4) == "0.25000000000")
        #expect(IptablesRenderer.storedProbability(10) == "0.10000000009")
    }
}

@Suite struct Decoding {
    @Test func exampleGivesOneServiceWithThreePodEndpoints() throws {
        let r = try ManifestSource.load([examplesDir])
        #expect(r.state.services.count == 1)
        #expect(r.state.pods.count == 3)
        #expect(r.state.ingresses.count == 1)
        let proxy = ProxyState(r.state)
        #expect(proxy.servicePorts.count == 1)
        let sp = proxy.servicePorts[0]
        #expect(sp.name.description == "codereview/codereviewapi:codereviewapip")
        #expect(sp.frontends == [Frontend(kind: .clusterIP, ip: ip("198.18.100.10"), port: 80)])
        #expect(sp.endpoints.map(\.description) == ["198.19.1.2:8888", "198.19.2.2:8888", "198.19.3.2:8888"])
    }

    @Test func multiDocumentListsAndJSON() {
        let d = decode("""
        {"apiVersion": "v1", "kind": "List", "items": [
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "x"},
           "spec": {"clusterIP": "198.18.100.1", "ports": [{"port": 53, "protocol": "UDP"}]}}]}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: ignored}
        """)
        #expect(d.errors.isEmpty)
        #expect(d.state.services.map(\.meta.key) == ["x/a"])
        #expect(d.state.services[0].ports[0].proto == .udp)
        #expect(d.warnings.count == 1 && d.warnings[0].text.contains("ConfigMap"))
    }

    @Test(arguments: [
        ("clusterIP: 198.18.100.300", "Service default/web: spec.clusterIP: \"198.18.100.300\" is not a valid IP address"),
        ("clusterIPs: [\"2001:db8:100::1\", \"2001:db8:100::2\"]", "Service default/web: spec.clusterIPs[1]: two IPv6 addresses; a Service has at most one per family"),
        ("clusterIPs: [\"ff02::1\"]", "Service default/web: spec.clusterIPs[0]: ff02::1 cannot be a Service address"),
        ("loadBalancerSourceRanges: [\"2001:db8::/129\"]", "Service default/web: spec.loadBalancerSourceRanges[0]: \"2001:db8::/129\" is not a CIDR"),
        ("ports: [{port: 70000}]", "Service default/web: spec.ports[0].port: 70000 is not a port (1-65535)"),
        ("ports: [{port: 80, protocol: XTP}]", "Service default/web: spec.ports[0].protocol: \"XTP\" is not a supported protocol"),
        ("ports: [{port: 80, targetPort: Bad_Name}]", "Service default/web: spec.ports[0].targetPort:"),
        ("ports: [{port: 80}, {port: 81}]", "Service default/web: spec.ports[0].name: required when a Service has more than one port"),
        ("type: Magic", "Service default/web: spec.type: \"Magic\" is not a Service type"),
    ])
    func invalidServicesNameFileObjectAndField(spec: String, message: String) {
        let base = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 198.18.100.1\n  ports: [{port: 80}]\n"
        var lines = base.split(separator: "\n").map(String.init)
        let key = String(spec.split(separator: ":")[0])
        lines.removeAll { $0.hasPrefix("  \(key):") }
        lines.append("  " + spec)
        let d = decode(lines.joined(separator: "\n"), file: "svc.yaml")
        #expect(d.state.services.isEmpty)
        #expect(d.errors.contains { $0.description.hasPrefix("svc.yaml: " + message) }, "\(d.errors)")
    }

    @Test func malformedYAMLAndBadNames() {
        let d = decode("apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n", file: "broken.yaml")
        #expect(d.errors.first?.description.hasPrefix("broken.yaml: not valid YAML or JSON") == true)
        let n = decode("apiVersion: v1\nkind: Service\nmetadata: {name: Web_1}\nspec: {clusterIP: 198.18.100.1, ports: [{port: 80}]}\n")
        #expect(n.errors.first?.description.contains("Service default/Web_1: metadata.name") == true)
        let dup = decode("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 198.18.100.1, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 198.18.100.2, ports: [{port: 80}]}\n")
        #expect(dup.errors.first?.description.contains("defined twice") == true)
    }

    @Test func headlessAndExternalNameGetNoRules() {
        let d = decode("""
        apiVersion: v1
        kind: Service
        metadata: {name: headless}
        spec: {clusterIP: None, selector: {app: a}, ports: [{port: 80}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: ext}
        spec: {type: ExternalName, externalName: example.test}
        """)
        #expect(d.errors.isEmpty)
        #expect(ProxyState(d.state).servicePorts.isEmpty)
    }

    /// Dual-stack: each family's table gets the Service's cluster IP, frontends and endpoints of
    /// that family, whichever family is primary.
    @Test func dualStackServices() throws {
        let d = decode(try String(contentsOfFile: fixtures + "/dualstack.yaml", encoding: .utf8))
        #expect(d.errors.isEmpty, "\(d.errors)")
        #expect(d.warnings.isEmpty, "\(d.warnings)")
        #expect(d.state.services.map { $0.clusterIPs.map(\.description) }
                == [["198.18.100.130", "2001:db8:100::30"], ["2001:db8:100::31"], ["2001:db8:100::40", "198.18.100.140"]])
        let v4 = ProxyState(d.state, nodeName: "node-a", family: .v4).servicePorts
        #expect(v4.map(\.name.name) == ["ds", "ds6first"])
        #expect(v4.map { $0.endpoints.map(\.description) } == [["198.19.1.2:8080", "198.19.2.2:8080"], ["198.19.1.2:5353"]])
        let v6 = ProxyState(d.state, nodeName: "node-a", family: .v6).servicePorts
        #expect(v6.map(\.name.name) == ["ds", "ds6first", "v6only"])
        #expect(v6.map { $0.frontends.map { $0.ip.withPort($0.port) } }
                == [["[2001:db8:100::30]:80"], ["[2001:db8:100::40]:53"],
                    ["[2001:db8:100::31]:80", "[2001:db8:200::131]:80", "[2001:db8:200::31]:80"]])
        #expect(v6.map { $0.endpoints.map(\.description) }
                == [["[2001:db8:1:1::2]:8080", "[2001:db8:1:2::2]:8080"], ["[2001:db8:1:1::2]:5353", "[2001:db8:1:2::2]:5353"],
                    ["[2001:db8:1:1::2]:8080", "[2001:db8:1:3::2]:8080"]])
        #expect(v6[2].localEndpointCount == 1 && v6[2].externalLocal && v6[2].sourceRanges == [IPPrefix("2001:db8::/64")!])
        #expect(v6[2].nodePort == 30181 && v4.allSatisfy { $0.name.name != "v6only" })
    }

    @Test(arguments: [
        ("2001:db8::1", "2001:db8::1"), ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"), ("::", "::"), ("::1", "::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"), ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"), ("1:0:2:0:3:0:4:0", "1:0:2:0:3:0:4:0"),
        ("fe80::", "fe80::"), ("::ffff:198.18.0.1", "::ffff:c612:1"), ("2001:db8::0:1", "2001:db8::1"),
    ])
    func ipv6AddressesParseAndPrintCanonically(text: String, canonical: String) throws {
        let a = try #require(IPAddress(text))
        #expect(a.family == .v6 && a.description == canonical)
        #expect(IPAddress(bytes: a.bytes) == a && a.bytes.count == 16)
    }

    @Test func badAddressesAndPrefixes() {
        for bad in ["2001:db8::1::2", ":1", "1:", "1:2:3:4:5:6:7:8:9", "12345::", "2001:db8::g", "::1%eth0", "1:2:3:4:5:6:7::8:9", "1.2.3", "01.2.3.4", ""] {
            #expect(IPAddress(bad) == nil, "\(bad)")
        }
        #expect(IPPrefix("2001:db8:1::/129") == nil && IPPrefix("198.18.0.0/33") == nil && IPPrefix("2001:db8::/0x") == nil)
        let p = IPPrefix("2001:db8:1:ff::7/56")!
        #expect(p.description == "2001:db8:1::/56")
        #expect(p.contains(IPAddress("2001:db8:1:ab::1")!) && !p.contains(IPAddress("2001:db8:1:100::1")!) && !p.contains(IPAddress("198.18.0.1")!))
        #expect(IPPrefix("2001:db8::/64")!.mask.description == "ffff:ffff:ffff:ffff::")
    }
}

@Suite struct EndpointsFromObjects {
    let svc = Service(meta: ObjectMeta(namespace: "ns", name: "web"), clusterIP: IPAddress("198.18.100.5"),
                      selector: ["app": "web"], ports: [ServicePort(name: "http", port: 80, targetPort: .string("web"))])

    @Test func podsResolveNamedPortsAndSkipUnready() {
        let pods = [
            Pod(meta: ObjectMeta(namespace: "ns", name: "a", labels: ["app": "web"]), podIP: ip("198.19.1.2"),
                containerPorts: [ContainerPort(name: "web", containerPort: 9000)]),
            Pod(meta: ObjectMeta(namespace: "ns", name: "b", labels: ["app": "web"]), podIP: ip("198.19.2.2"), ready: false,
                containerPorts: [ContainerPort(name: "web", containerPort: 9000)]),
            Pod(meta: ObjectMeta(namespace: "other", name: "c", labels: ["app": "web"]), podIP: ip("198.19.3.2"),
                containerPorts: [ContainerPort(name: "web", containerPort: 9000)]),
            Pod(meta: ObjectMeta(namespace: "ns", name: "d", labels: ["app": "web"]), podIP: ip("198.19.4.2"),
                containerPorts: [ContainerPort(name: "other", containerPort: 9000)]),
            Pod(meta: ObjectMeta(namespace: "ns", name: "e", labels: ["app": "web"]), podIP: ip("198.19.5.2"), terminating: true,
                containerPorts: [ContainerPort(name: "web", containerPort: 9000)]),
        ]
        let p = ProxyState(ClusterState(services: [svc], pods: pods))
        #expect(p.servicePorts[0].endpoints.map(\.description) == ["198.19.1.2:9000"])
    }

    @Test func slicesWinAndFallBackToTerminating() {
        let port = [EndpointPort(name: "http", port: 8080)]
        let ready = EndpointSlice(meta: ObjectMeta(namespace: "ns", name: "web-1"), serviceName: "web", endpoints: [
            SliceEndpoint(addresses: [ip("198.19.1.2")]),
            SliceEndpoint(addresses: [ip("198.19.2.2")], conditions: .init(ready: false, serving: true, terminating: true)),
        ], ports: port)
        let more = EndpointSlice(meta: ObjectMeta(namespace: "ns", name: "web-2"), serviceName: "web", endpoints: [
            SliceEndpoint(addresses: [ip("198.19.3.2")]),
        ], ports: port)
        let pod = Pod(meta: ObjectMeta(namespace: "ns", name: "a", labels: ["app": "web"]), podIP: ip("198.19.9.2"))
        var p = ProxyState(ClusterState(services: [svc], endpointSlices: [ready, more], pods: [pod]))
        #expect(p.servicePorts[0].endpoints.map(\.description) == ["198.19.1.2:8080", "198.19.3.2:8080"])
        let draining = EndpointSlice(meta: ready.meta, serviceName: "web", endpoints: [
            SliceEndpoint(addresses: [ip("198.19.2.2")], conditions: .init(ready: false, serving: true, terminating: true)),
            SliceEndpoint(addresses: [ip("198.19.4.2")], conditions: .init(ready: false, serving: false, terminating: true)),
        ], ports: port)
        p = ProxyState(ClusterState(services: [svc], endpointSlices: [draining]))
        #expect(p.servicePorts[0].endpoints.map(\.description) == ["198.19.2.2:8080"])
    }

    @Test func topologyHintsWhenEveryEndpointHasThem() {
        let port = [EndpointPort(name: "http", port: 8080)]
        func slice(_ hints: [[String]?]) -> EndpointSlice {
            EndpointSlice(meta: ObjectMeta(namespace: "ns", name: "web-1"), serviceName: "web",
                          endpoints: hints.enumerated().map { SliceEndpoint(addresses: [IPAddress(UInt32(0xC613_0102) + UInt32($0 << 8))], zoneHints: $1) },
                          ports: port)
        }
        func eps(_ s: EndpointSlice, zone: String?) -> [String] {
            ProxyState(ClusterState(services: [svc], endpointSlices: [s]), zone: zone).servicePorts[0].endpoints.map(\.description)
        }
        let hinted = slice([["a"], ["b"], ["a", "b"]])
        #expect(eps(hinted, zone: "a") == ["198.19.1.2:8080", "198.19.3.2:8080"])
        #expect(eps(hinted, zone: "b") == ["198.19.2.2:8080", "198.19.3.2:8080"])
        #expect(eps(hinted, zone: nil).count == 3)
        #expect(eps(hinted, zone: "c").count == 3)                  // no endpoint for this zone: all
        #expect(eps(slice([["a"], nil, ["b"]]), zone: "a").count == 3)  // one without hints: all
    }

    @Test func endpointsV1() {
        let e = Endpoints(meta: ObjectMeta(namespace: "ns", name: "web"), subsets: [
            .init(addresses: [ip("198.19.1.2")], notReadyAddresses: [ip("198.19.2.2")], ports: [EndpointPort(name: "http", port: 7000)]),
        ])
        #expect(ProxyState(ClusterState(services: [svc], endpoints: [e])).servicePorts[0].endpoints.map(\.description) == ["198.19.1.2:7000"])
    }
}

@Suite struct Rules {
    @Test func everyItemReadsBackFromItsExpressions() {
        let items: [RuleItem] = [
            .ctStateNew, .ctStatusDNAT, .l4proto(.sctp), .saddrNotIn(IPPrefix("198.19.0.0/16")!),
            .saddrNotIn(IPPrefix("198.19.128.0/17")!), .saddrNotIn(IPPrefix("198.19.1.2/32")!),
            .markIsClear(0x4000), .markSetOr(0x4000), .markSetXor(0x4000), .numgenIsZero(modulus: 7),
            .dnat(ip("198.19.1.2"), port: 8888), .masquerade(fullyRandom: true), .masquerade(fullyRandom: false),
            .reject(.tcpReset), .reject(.icmpPortUnreachable), .dispatch(map: "m", family: .v4), .saddrDaddrIn(set: "s", family: .v4),
            .daddrInSet("s", .v4), .saddrInSet("s", .v4), .rememberSaddr("s", .v4), .dnatFromMap(modulus: 3, offset: 8, map: "m", family: .v4),
            .verdict(.goto("c")), .verdict(.jump("c")), .verdict(.return), .verdict(.accept),
        ]
        for item in items { #expect(RuleItem.parse(item.exprs, family: .v4) == [item], "\(item)") }
        #expect(RuleItem.parse(items.flatMap(\.exprs), family: .v4) == items)
        #expect(RuleItem.parse([.unknown("counter")], family: .v4) == [.raw(.unknown("counter"))])
        // IPv6: 16-byte addresses at offsets 8 and 24, and concatenations whose next field
        // starts in register 2.
        let v6: [RuleItem] = [
            .ctStateNew, .l4proto(.udp), .saddrNotIn(IPPrefix("2001:db8:1::/48")!), .saddrNotIn(IPPrefix("2001:db8:1::/61")!),
            .ipMatch(.daddr, .neq, IPPrefix("::1/128")!), .ipMatch(.daddr, .eq, IPPrefix("2001:db8::1/128")!),
            .dnat(ip("2001:db8:1:2::2"), port: 8080), .reject(.icmpv6PortUnreachable),
            .dispatch(map: "m", family: .v6), .saddrDaddrIn(set: "s", family: .v6), .daddrInSet("s", .v6), .saddrInSet("s", .v6),
            .rememberSaddr("s", .v6), .dnatFromMap(modulus: 2, offset: 0, map: "m", family: .v6), .fibDaddrLocal, .masquerade(fullyRandom: true),
        ]
        for item in v6 { #expect(RuleItem.parse(item.exprs, family: .v6) == [item], "\(item)") }
        #expect(RuleItem.parse(v6.flatMap(\.exprs), family: .v6) == v6)
        #expect(RuleItem.dispatch(map: "m", family: .v6).exprs[1] == .meta(key: .l4proto, dreg: .reg(2)))
        #expect(RuleItem.dispatch(map: "m", family: .v6).exprs[2] == .payload(base: .transport, offset: 2, length: 2, dreg: .reg32(5)))
        #expect(RuleItem.dispatch(map: "m", family: .v4).exprs[1] == .meta(key: .l4proto, dreg: .reg32(1)))
    }

    @Test(arguments: EndpointSelection.allCases)
    func bothShapesGiveEqualProbabilities(selection: EndpointSelection) throws {
        let r = try ManifestSource.load([examplesDir])
        let (_, ruleset) = try Reconciler.desired(r.state, config: ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!], endpointSelection: selection))
        let view = try #require(ruleset.serviceViews.first)
        #expect(view.endpoints.map(\.1) == ["1/3", "1/3", "1/3"])
        #expect(view.frontends == ["198.18.100.10:80"])
    }
}

@Suite struct Golden {
    func render(_ format: String, _ args: ProxyConfig) throws -> String {
        let r = try ManifestSource.load([examplesDir, fixtures + "/services.yaml"])
        let (proxy, ruleset) = try Reconciler.desired(r.state, config: args)
        return format == "nft" ? ruleset.nftText : IptablesRenderer(args.translator).render(proxy)
    }

    /// Both tables for dual-stack and IPv6 Services (`apply --dry-run` prints them one after the other).
    @Test func dualStackDryRunMatchesGolden() throws {
        let r = try ManifestSource.load([fixtures + "/dualstack.yaml"])
        let config = ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!, IPPrefix("2001:db8:1::/48")!], nodeName: "node-a")
        let tables = try Reconciler.desiredTables(r.state, config: config)
        #expect(tables.map(\.family) == [.v4, .v6])
        let want = try String(contentsOfFile: fixtures + "/golden.dualstack.nft", encoding: .utf8)
        #expect(tables.map(\.ruleset.nftText).joined() == want)
        // Without IPv6 Services (nor IPv6 prefixes) there is no ip6 table.
        #expect(try Reconciler.desiredTables(ManifestSource.load([examplesDir]).state, config: config).map(\.family) == [.v4])
    }

    @Test(arguments: [("nft", EndpointSelection.map), ("nft", .cascade), ("iptables", .map)])
    func dryRunMatchesGolden(format: String, selection: EndpointSelection) throws {
        let got = try render(format, ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!], endpointSelection: selection))
        let name = format == "nft" ? "golden.\(selection.rawValue).nft" : "golden.iptables"
        let want = try String(contentsOfFile: fixtures + "/" + name, encoding: .utf8)
        #expect(got == want)
    }
}

@Suite struct Planning {
    let config = ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!])

    /// A dual-stack UDP node port is one frontend in each table, with each family's endpoints:
    /// an IPv6 endpoint that goes must have its flows deleted even though IPv4 is unchanged.
    @Test func dualStackFlowsAreCleanedPerFamily() throws {
        func state(_ v6: [Int]) -> ClusterState {
            let svc = Service(meta: ObjectMeta(namespace: "demo", name: "dns"), type: .nodePort,
                              clusterIPs: [ip("198.18.100.53"), ip("2001:db8:100::53")],
                              ports: [ServicePort(name: "dns", proto: .udp, port: 53, targetPort: .int(5353), nodePort: 30053)])
            let port = [EndpointPort(name: "dns", proto: .udp, port: 5353)]
            return ClusterState(services: [svc], endpointSlices: [
                EndpointSlice(meta: ObjectMeta(namespace: "demo", name: "dns-4"), serviceName: "dns",
                              endpoints: [SliceEndpoint(addresses: [ip("198.19.1.2")])], ports: port),
                EndpointSlice(meta: ObjectMeta(namespace: "demo", name: "dns-6"), serviceName: "dns",
                              endpoints: v6.map { SliceEndpoint(addresses: [ip("2001:db8:1:\($0)::2")]) }, ports: port),
            ])
        }
        let kernel = FakeKernel()
        let rec = Reconciler(config: config, kernel: kernel)
        try rec.reconcile(state([1, 2]))
        #expect(kernel.rulesets.keys.sorted { $0.rawValue < $1.rawValue } == [.ip, .ip6])
        try rec.reconcile(state([1]))
        let gone = EndpointAddress(ip: ip("2001:db8:1:2::2"), port: 5353)
        #expect(Set(kernel.flowCleanups.last ?? []) == [FlowFilter(destination: ip("2001:db8:100::53"), port: 53, endpoint: gone),
                                                        FlowFilter(destination: nil, port: 30053, endpoint: gone)])
    }

    func state(_ pods: [Int]) -> ClusterState {
        let svc = Service(meta: ObjectMeta(namespace: "demo", name: "web"), clusterIP: IPAddress("198.18.100.20"),
                          selector: ["app": "web"], ports: [ServicePort(name: "http", port: 80, targetPort: .int(8080))])
        return ClusterState(services: [svc], pods: pods.map {
            Pod(meta: ObjectMeta(namespace: "demo", name: "p\($0)", labels: ["app": "web"]), podIP: IPAddress("198.19.\($0).2"))
        })
    }

    @Test func firstSyncCreatesAndSecondIsEmpty() throws {
        let kernel = FakeKernel()
        let rec = Reconciler(config: config, kernel: kernel)
        let first = try rec.reconcile(state([1, 2]))
        #expect(first.transaction.operations.first == .addTable)
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
        #expect(text.contains("add element ip svcnat no-endpoint-services { 198.18.100.20 . tcp . 80 comment \"demo/web:http\" : goto reject-chain }"))
        #expect(text.contains("delete chain ip svcnat svc-demo/web/tcp/http"))
        #expect(kernel.ruleset?.chain("svc-demo/web/tcp/http") == nil)
    }

    @Test func conflictingServicesAreInputErrors() {
        let a = Service(meta: ObjectMeta(namespace: "x", name: "a"), clusterIP: IPAddress("198.18.100.1"), ports: [ServicePort(port: 80)])
        var b = a
        b.meta.name = "b"
        #expect(throws: InputErrors.self) { try Reconciler.desired(ClusterState(services: [a, b]), config: config) }
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
        #expect(Set(f) == [FlowFilter(destination: svc.ip, port: 53, endpoint: a), FlowFilter(destination: nil, port: 30053, endpoint: nil)])
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

@Suite struct ExplainQueries {
    @Test func destinationsParse() {
        #expect(Explain.parse("198.18.100.10:80") == .address(IPAddress("198.18.100.10")!, port: 80, proto: .tcp))
        #expect(Explain.parse("198.18.100.10:53/udp") == .address(IPAddress("198.18.100.10")!, port: 53, proto: .udp))
        #expect(Explain.parse(":30080") == .nodePort(30080, proto: .tcp))
        #expect(Explain.parse("codereview/codereviewapi") == .service(namespace: "codereview", name: "codereviewapi", port: nil))
        #expect(Explain.parse("codereviewapi.codereview.svc.cluster.local:80") == .service(namespace: "codereview", name: "codereviewapi", port: "80"))
        #expect(Explain.parse("nonsense") == nil)
        #expect(Explain.parse("198.18.100.10") == nil)
    }
}

@Suite struct ManifestFolder {
    @Test func aSecondDefinitionIsRejectedAndTheFirstStays() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svcnat-store-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let svc = { (ip: String) in "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: \(ip), ports: [{port: 80}]}\n" }
        try svc("198.18.100.1").write(toFile: dir + "/a.yaml", atomically: true, encoding: .utf8)
        try svc("198.18.100.2").write(toFile: dir + "/b.yaml", atomically: true, encoding: .utf8)
        let store = ObjectStore(root: dir)
        store.loadAll()
        #expect(store.state.services.map { $0.clusterIP?.description } == ["198.18.100.1"])
        #expect(store.rejected[dir + "/b.yaml"]?.first?.description.contains("Service default/web: metadata.name: defined twice (also in \(dir)/a.yaml)") == true)
        // The first goes away: the second is read again on its next change and then stands.
        try FileManager.default.removeItem(atPath: dir + "/a.yaml")
        store.reload([dir + "/a.yaml", dir + "/b.yaml"])
        #expect(store.state.services.map { $0.clusterIP?.description } == ["198.18.100.2"])
        #expect(store.rejected.isEmpty)
    }
}
