import Foundation
import SvcnatCore
import NFTModel
import SvcnatModel
import SvcnatExplain
import SvcnatSources
import Testing

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
        let d = decode(
            """
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
        #expect(d.warnings.isEmpty)
        #expect(d.skipped.map(\.description) == ["test.yaml: ConfigMap default/ignored: kind ConfigMap is not used by svcnat; skipped"])
    }

    @Test(arguments: [
        ("clusterIP: 198.18.100.300", "Service default/web: spec.clusterIP: \"198.18.100.300\" is not a valid IP address"),
        (
            "clusterIPs: [\"2001:db8:100::1\", \"2001:db8:100::2\"]",
            "Service default/web: spec.clusterIPs[1]: two IPv6 addresses; a Service has at most one per family"
        ),
        (
            "clusterIPs: [\"ff02::1\"]",
            "Service default/web: spec.clusterIPs[0]: ff02::1 is a multicast address, which cannot be a Service address"
        ),
        // Special addresses, refused as the API server's ValidateNonSpecialIP refuses them.
        (
            "externalIPs: [127.0.0.1]",
            "Service default/web: spec.externalIPs[0]: 127.0.0.1 is a loopback address, which cannot be an external IP"
        ),
        ("externalIPs: [0.0.0.0]", "Service default/web: spec.externalIPs[0]: 0.0.0.0 is the unspecified address"),
        ("externalIPs: [255.255.255.255]", "Service default/web: spec.externalIPs[0]: 255.255.255.255 is the broadcast address"),
        ("externalIPs: [224.0.0.5]", "Service default/web: spec.externalIPs[0]: 224.0.0.5 is a multicast address"),
        ("externalIPs: [169.254.169.254]", "Service default/web: spec.externalIPs[0]: 169.254.169.254 is a link-local address"),
        (
            "externalIPs: [\"::ffff:127.0.0.1\"]",
            "Service default/web: spec.externalIPs[0]: ::ffff:127.0.0.1 is an IPv4-mapped IPv6 address"
        ),
        ("externalIPs: [\"fe80::1\"]", "Service default/web: spec.externalIPs[0]: fe80::1 is a link-local address"),
        ("ports: [{port: 0100}]", "Service default/web: spec.ports[0].port: 0100 has a leading zero"),
        (
            "loadBalancerSourceRanges: [\"2001:db8::/129\"]",
            "Service default/web: spec.loadBalancerSourceRanges[0]: \"2001:db8::/129\" is not a CIDR"
        ),
        ("ports: [{port: 70000}]", "Service default/web: spec.ports[0].port: 70000 is not a port (1-65535)"),
        ("ports: [{port: 80, protocol: XTP}]", "Service default/web: spec.ports[0].protocol: \"XTP\" is not a supported protocol"),
        ("ports: [{port: 80, targetPort: Bad_Name}]", "Service default/web: spec.ports[0].targetPort:"),
        ("ports: [{port: 80}, {port: 81}]", "Service default/web: spec.ports[0].name: required when a Service has more than one port"),
        ("type: Magic", "Service default/web: spec.type: \"Magic\" is not a Service type")
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

    /// A `kind: List` (what `kubectl get -o yaml` writes) names a bad item's field under the
    /// list, and the other items are taken.
    @Test func aListItemsFieldIsNamedUnderTheList() {
        let d = decode(
            """
            apiVersion: v1
            kind: List
            items:
            - {apiVersion: v1, kind: Service, metadata: {name: a}, spec: {clusterIP: 198.18.100.1, ports: [{port: 80}]}}
            - {apiVersion: v1, kind: Service, metadata: {name: b}, spec: {clusterIP: 198.18.100.2, ports: [{port: 70000}]}}
            """, file: "list.yaml")
        #expect(d.state.services.map(\.meta.key) == ["default/a"])
        #expect(d.errors.map(\.description) == ["list.yaml: Service default/b: items[1].spec.ports[0].port: 70000 is not a port (1-65535)"])
    }

    @Test func specialLoadBalancerAndEndpointAddressesAreRefused() {
        let d = decode(
            """
            apiVersion: v1
            kind: Service
            metadata: {name: lb}
            spec: {type: LoadBalancer, clusterIP: 198.18.100.1, ports: [{port: 80, nodePort: 30080}]}
            status: {loadBalancer: {ingress: [{ip: 127.0.0.2}]}}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: lb-1, labels: {kubernetes.io/service-name: lb}}
            addressType: IPv4
            endpoints: [{addresses: [127.0.0.1]}]
            ports: [{port: 80}]
            """, file: "lb.yaml")
        let text = d.errors.map(\.description).joined(separator: "\n")
        #expect(
            text.contains("status.loadBalancer.ingress[0].ip: 127.0.0.2 is a loopback address, which cannot be a load-balancer IP"),
            "\(text)")
        #expect(text.contains("endpoints[0].addresses[0]: 127.0.0.1 is a loopback address, which cannot be an endpoint"), "\(text)")
    }

    /// An endpoint is its first address, as kube-proxy reads it; the others are still checked.
    @Test func anEndpointIsItsFirstAddressAndTheOthersAreChecked() {
        func slice(_ addresses: String) -> ManifestDecoder {
            decode(
                """
                apiVersion: discovery.k8s.io/v1
                kind: EndpointSlice
                metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
                addressType: IPv4
                endpoints: [{addresses: [198.19.1.2]}, {addresses: [\(addresses)]}]
                ports: [{port: 80}]
                """, file: "web.yaml")
        }
        let two = slice("198.19.1.3, 198.19.1.4")
        #expect(two.errors.isEmpty, "\(two.errors)")
        #expect(two.state.endpointSlices.first?.endpoints.map(\.address.description) == ["198.19.1.2", "198.19.1.3"])
        let bad = slice("198.19.1.3, 127.0.0.1").errors.map(\.description).joined(separator: "\n")
        #expect(bad.contains("endpoints[1].addresses[1]: 127.0.0.1 is a loopback address, which cannot be an endpoint"), "\(bad)")
    }

    /// One read's whole input is capped beside each file's: a folder of many files stops there.
    @Test func aFolderPastTheTotalInputCapIsRefused() throws {
        let dir = NSTemporaryDirectory() + "svcnat-test-cap-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for i in 0..<10 {
            let svc =
                "apiVersion: v1\nkind: Service\nmetadata: {name: s\(i)}\nspec: {clusterIP: 198.18.100.\(i + 1), ports: [{port: 80}]}\n"
            try svc.write(toFile: dir + "/s\(i).yaml", atomically: true, encoding: .utf8)
        }
        #expect(try ManifestSource.load([dir]).state.services.count == 10)
        do {
            _ = try ManifestSource.load([dir], maxInput: 500)
            Issue.record("the cap did not hold")
        } catch let e as InputErrors {
            #expect(e.description.contains("the input passes 500 bytes in all"), "\(e)")
        }
    }

    @Test func malformedYAMLAndBadNames() {
        let d = decode("apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n", file: "broken.yaml")
        #expect(d.errors.first?.description.hasPrefix("broken.yaml: not valid YAML or JSON") == true)
        let n = decode("apiVersion: v1\nkind: Service\nmetadata: {name: Web_1}\nspec: {clusterIP: 198.18.100.1, ports: [{port: 80}]}\n")
        #expect(n.errors.first?.description.contains("Service default/Web_1: metadata.name") == true)
        let dup = decode(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 198.18.100.1, ports: [{port: "
                + "80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 198.18.100.2, ports: [{port: 80}]}\n"
        )
        #expect(dup.errors.first?.description.contains("defined twice") == true)
    }

    @Test func headlessAndExternalNameGetNoRules() {
        let d = decode(
            """
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
        #expect(
            d.state.services.map { $0.clusterIPs.map(\.description) }
                == [["198.18.100.130", "2001:db8:100::30"], ["2001:db8:100::31"], ["2001:db8:100::40", "198.18.100.140"]])
        let v4 = ProxyState(d.state, nodeName: "node-a", family: .v4).servicePorts
        #expect(v4.map(\.name.name) == ["ds", "ds6first"])
        #expect(v4.map { $0.endpoints.map(\.description) } == [["198.19.1.2:8080", "198.19.2.2:8080"], ["198.19.1.2:5353"]])
        let v6 = ProxyState(d.state, nodeName: "node-a", family: .v6).servicePorts
        #expect(v6.map(\.name.name) == ["ds", "ds6first", "v6only"])
        #expect(
            v6.map { $0.frontends.map { $0.ip.withPort($0.port) } }
                == [
                    ["[2001:db8:100::30]:80"], ["[2001:db8:100::40]:53"],
                    ["[2001:db8:100::31]:80", "[2001:db8:200::131]:80", "[2001:db8:200::31]:80"]
                ])
        #expect(
            v6.map { $0.endpoints.map(\.description) }
                == [
                    ["[2001:db8:1:1::2]:8080", "[2001:db8:1:2::2]:8080"], ["[2001:db8:1:1::2]:5353", "[2001:db8:1:2::2]:5353"],
                    ["[2001:db8:1:1::2]:8080", "[2001:db8:1:3::2]:8080"]
                ])
        #expect(v6[2].localEndpointCount == 1 && v6[2].externalLocal && v6[2].sourceRanges == [IPPrefix("2001:db8::/64")!])
        #expect(v6[2].nodePort == 30181 && v4.allSatisfy { $0.name.name != "v6only" })
    }

    @Test(arguments: [
        ("2001:db8::1", "2001:db8::1"), ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"), ("::", "::"), ("::1", "::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"), ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"), ("1:0:2:0:3:0:4:0", "1:0:2:0:3:0:4:0"),
        ("fe80::", "fe80::"), ("::ffff:198.18.0.1", "::ffff:c612:1"), ("2001:db8::0:1", "2001:db8::1")
    ])
    func ipv6AddressesParseAndPrintCanonically(text: String, canonical: String) throws {
        let a = try #require(IPAddress(text))
        #expect(a.family == .v6 && a.description == canonical)
        #expect(IPAddress(bytes: a.bytes) == a && a.bytes.count == 16)
    }

    @Test func badAddressesAndPrefixes() {
        for bad in [
            "2001:db8::1::2", ":1", "1:", "1:2:3:4:5:6:7:8:9", "12345::", "2001:db8::g", "::1%eth0", "1:2:3:4:5:6:7::8:9", "1.2.3",
            "01.2.3.4", ""
        ] {
            #expect(IPAddress(bad) == nil, "\(bad)")
        }
        #expect(IPPrefix("2001:db8:1::/129") == nil && IPPrefix("198.18.0.0/33") == nil && IPPrefix("2001:db8::/0x") == nil)
        let p = IPPrefix("2001:db8:1:ff::7/56")!
        #expect(p.description == "2001:db8:1::/56")
        #expect(
            p.contains(IPAddress("2001:db8:1:ab::1")!) && !p.contains(IPAddress("2001:db8:1:100::1")!)
                && !p.contains(IPAddress("198.18.0.1")!))
        #expect(IPPrefix("2001:db8::/64")!.mask.description == "ffff:ffff:ffff:ffff::")
    }
}

@Suite struct EndpointsFromObjects {
    let svc = Service(
        meta: ObjectMeta(namespace: "ns", name: "web"), clusterIP: IPAddress("198.18.100.5"),
        selector: ["app": "web"], ports: [ServicePort(name: "http", port: 80, targetPort: .string("web"))])

    @Test func podsResolveNamedPortsAndSkipUnready() {
        let pods = [
            Pod(
                meta: ObjectMeta(namespace: "ns", name: "a", labels: ["app": "web"]), podIP: ip("198.19.1.2"),
                containerPorts: [ContainerPort(name: "web", containerPort: 9000)]),
            Pod(
                meta: ObjectMeta(namespace: "ns", name: "b", labels: ["app": "web"]), podIP: ip("198.19.2.2"), ready: false,
                containerPorts: [ContainerPort(name: "web", containerPort: 9000)]),
            Pod(
                meta: ObjectMeta(namespace: "other", name: "c", labels: ["app": "web"]), podIP: ip("198.19.3.2"),
                containerPorts: [ContainerPort(name: "web", containerPort: 9000)]),
            Pod(
                meta: ObjectMeta(namespace: "ns", name: "d", labels: ["app": "web"]), podIP: ip("198.19.4.2"),
                containerPorts: [ContainerPort(name: "other", containerPort: 9000)]),
            Pod(
                meta: ObjectMeta(namespace: "ns", name: "e", labels: ["app": "web"]), podIP: ip("198.19.5.2"), terminating: true,
                containerPorts: [ContainerPort(name: "web", containerPort: 9000)])
        ]
        let p = ProxyState(ClusterState(services: [svc], pods: pods))
        #expect(p.servicePorts[0].endpoints.map(\.description) == ["198.19.1.2:9000"])
    }

    @Test func slicesWinAndFallBackToTerminating() {
        let port = [EndpointPort(name: "http", port: 8080)]
        let ready = EndpointSlice(
            meta: ObjectMeta(namespace: "ns", name: "web-1"), serviceName: "web",
            endpoints: [
                SliceEndpoint(address: ip("198.19.1.2")),
                SliceEndpoint(address: ip("198.19.2.2"), conditions: .init(ready: false, serving: true, terminating: true))
            ], ports: port)
        let more = EndpointSlice(
            meta: ObjectMeta(namespace: "ns", name: "web-2"), serviceName: "web",
            endpoints: [
                SliceEndpoint(address: ip("198.19.3.2"))
            ], ports: port)
        let pod = Pod(meta: ObjectMeta(namespace: "ns", name: "a", labels: ["app": "web"]), podIP: ip("198.19.9.2"))
        var p = ProxyState(ClusterState(services: [svc], endpointSlices: [ready, more], pods: [pod]))
        #expect(p.servicePorts[0].endpoints.map(\.description) == ["198.19.1.2:8080", "198.19.3.2:8080"])
        let draining = EndpointSlice(
            meta: ready.meta, serviceName: "web",
            endpoints: [
                SliceEndpoint(address: ip("198.19.2.2"), conditions: .init(ready: false, serving: true, terminating: true)),
                SliceEndpoint(address: ip("198.19.4.2"), conditions: .init(ready: false, serving: false, terminating: true))
            ], ports: port)
        p = ProxyState(ClusterState(services: [svc], endpointSlices: [draining]))
        #expect(p.servicePorts[0].endpoints.map(\.description) == ["198.19.2.2:8080"])
    }

    @Test func topologyHintsWhenEveryEndpointHasThem() {
        let port = [EndpointPort(name: "http", port: 8080)]
        func slice(_ hints: [[String]?]) -> EndpointSlice {
            EndpointSlice(
                meta: ObjectMeta(namespace: "ns", name: "web-1"), serviceName: "web",
                endpoints: hints.enumerated().map {
                    SliceEndpoint(address: IPAddress(UInt32(0xC613_0102) + UInt32($0 << 8)), zoneHints: $1)
                },
                ports: port)
        }
        func eps(_ s: EndpointSlice, zone: String?) -> [String] {
            ProxyState(ClusterState(services: [svc], endpointSlices: [s]), zone: zone).servicePorts[0].endpoints.map(\.description)
        }
        let hinted = slice([["a"], ["b"], ["a", "b"]])
        #expect(eps(hinted, zone: "a") == ["198.19.1.2:8080", "198.19.3.2:8080"])
        #expect(eps(hinted, zone: "b") == ["198.19.2.2:8080", "198.19.3.2:8080"])
        #expect(eps(hinted, zone: nil).count == 3)
        #expect(eps(hinted, zone: "c").count == 3)  // no endpoint for this zone: all
        #expect(eps(slice([["a"], nil, ["b"]]), zone: "a").count == 3)  // one without hints: all
    }

    @Test func endpointsV1() {
        let e = Endpoints(
            meta: ObjectMeta(namespace: "ns", name: "web"),
            subsets: [
                .init(addresses: [ip("198.19.1.2")], notReadyAddresses: [ip("198.19.2.2")], ports: [EndpointPort(name: "http", port: 7000)])
            ])
        #expect(
            ProxyState(ClusterState(services: [svc], endpoints: [e])).servicePorts[0].endpoints.map(\.description) == ["198.19.1.2:7000"])
    }
}
