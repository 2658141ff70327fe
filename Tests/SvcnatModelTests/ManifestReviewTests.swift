import Foundation
import NFTModel
import SvcnatExplain
import SvcnatModel
import SvcnatSources
import Testing

/// What a set of manifests leaves a Service without, and what is not read at all: each
/// warning as the user sees it, with the file and the object it names.
@Suite struct ManifestWarnings {
    func review(_ yaml: String, allocating: Bool = false) throws -> (input: ManifestSource.Result, warnings: [String]) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svcnat-review-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("in.yaml").path
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        let r = try ManifestSource.load([file])
        let settings = allocating ? Allocation.Settings(serviceCIDRs: [IPPrefix("198.18.100.0/24")!]) : nil
        let w = (r.warnings + r.prepared(allocation: settings).warnings).map { $0.text.replacingOccurrences(of: file, with: "in.yaml") }
        return (r, w)
    }

    @Test func misspeltFieldsAreNamedAsKubectlNamesThem() throws {
        let (r, w) = try review(
            """
            apiVersion: v1
            kind: Service
            metadata: {name: web, namespace: shop, lables: {a: b}}
            spec:
              clusterIP: 198.18.100.7
              selectr: {app: web}
              ports: [{port: 80, targetport: 8080}]
            """)
        #expect(r.state.services.count == 1)
        #expect(
            w == [
                "in.yaml: Service shop/web: unknown field \"metadata.lables\"",
                "in.yaml: Service shop/web: unknown field \"spec.selectr\"",
                "in.yaml: Service shop/web: unknown field \"spec.ports[0].targetport\""
            ])
    }

    @Test func anExportOfRealObjectsHasNoUnknownField() throws {
        let (_, w) = try review(
            """
            apiVersion: v1
            kind: Service
            metadata:
              name: web
              namespace: shop
              uid: 0d7a3c6e-1b1e-4a8e-9a51-3d1f0d1c2b3a
              resourceVersion: "4711"
              creationTimestamp: "2026-11-27T09:00:00Z"
              annotations: {meta.helm.sh/release-name: web}
              managedFields: [{manager: kubectl, operation: Apply}]
            spec:
              clusterIP: 198.18.100.7
              clusterIPs: [198.18.100.7]
              ipFamilies: [IPv4]
              ipFamilyPolicy: SingleStack
              internalTrafficPolicy: Cluster
              sessionAffinity: None
              type: ClusterIP
              selector: {app: web}
              ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, appProtocol: http}]
            status: {loadBalancer: {}}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: web-1, namespace: shop, labels: {app: web}, ownerReferences: [{kind: ReplicaSet, name: web-7d}]}
            spec:
              nodeName: node-a
              restartPolicy: Always
              volumes: [{name: data, emptyDir: {}}]
              containers:
                - name: web
                  image: registry.example/web:1
                  resources: {limits: {cpu: 100m}}
                  volumeMounts: [{name: data, mountPath: /data}]
                  readinessProbe: {httpGet: {path: /, port: 8080}}
                  ports: [{name: http, containerPort: 8080, protocol: TCP}]
            status: {phase: Running, podIP: 198.19.1.2, hostIP: 198.18.0.1, conditions: [{type: Ready, status: "True"}]}
            """)
        #expect(w == [])
    }

    @Test func aNamedTargetPortThatNoSelectedPodHasIsSaid() throws {
        let (_, w) = try review(
            """
            apiVersion: v1
            kind: Service
            metadata: {name: web, namespace: shop}
            spec:
              clusterIP: 198.18.100.7
              selector: {app: web}
              ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 81, targetPort: admin}]
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: web-1, namespace: shop, labels: {app: web}}
            spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
            status: {podIP: 198.19.1.2}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: web-2, namespace: shop, labels: {app: web}}
            spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
            status: {podIP: 198.19.2.2}
            """)
        #expect(
            w == [
                "in.yaml: Service shop/web: spec.ports[1].targetPort \"admin\" matches no TCP container port of the 2 selected Pods; "
                    + "port 81/TCP has no endpoints"
            ])
    }

    @Test func aSelectorThatMatchesNoPodIsSaidUnlessSlicesAreGiven() throws {
        let service = """
            apiVersion: v1
            kind: Service
            metadata: {name: web, namespace: shop}
            spec: {clusterIP: 198.18.100.7, selector: {app: web, tier: front}, ports: [{port: 80}]}
            ---
            apiVersion: apps/v1
            kind: Deployment
            metadata: {name: web, namespace: shop}
            spec: {template: {metadata: {labels: {app: web, tier: front}}}}

            """
        let (_, w) = try review(service)
        #expect(
            w == [
                "in.yaml: Service shop/web: spec.selector app=web,tier=front matches no Pod in namespace shop; Deployments and other "
                    + "workloads are not expanded: give Pods or EndpointSlices; the Service has no endpoints"
            ])
        let (_, withSlice) = try review(
            service + """
                ---
                apiVersion: discovery.k8s.io/v1
                kind: EndpointSlice
                metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
                addressType: IPv4
                endpoints: [{addresses: [198.19.1.2]}]
                ports: [{port: 80}]
                """)
        #expect(withSlice == [])
    }

    @Test func missingAddressesAndNodePortsAreSaidWithTheWayOut() throws {
        let yaml = """
            apiVersion: v1
            kind: Service
            metadata: {name: web, namespace: shop}
            spec: {ports: [{port: 80}]}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: edge, namespace: shop}
            spec: {type: NodePort, clusterIP: 198.18.100.8, ports: [{name: a, port: 80}, {name: b, port: 81, nodePort: 30081}]}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: lb, namespace: shop}
            spec: {type: LoadBalancer, clusterIP: 198.18.100.9, allocateLoadBalancerNodePorts: false, ports: [{port: 80}]}
            """
        let (_, w) = try review(yaml)
        #expect(
            w == [
                "in.yaml: Service shop/web: spec.clusterIP is not set (the API server allocates it; give it, or --allocate with "
                    + "--service-cidr); the Service gets no rules",
                "in.yaml: Service shop/edge: spec.ports[0].nodePort is not set (the API server allocates it; give it, or --allocate); "
                    + "port 80/TCP gets no node port"
            ])
        #expect(try review(yaml, allocating: true).warnings == [])
    }

    @Test func misspeltKindsAreSuggestedAndOtherKindsSummed() throws {
        var yaml = """
            apiVersion: v1
            kind: Servcie
            metadata: {name: web, namespace: shop}
            ---
            apiVersion: v1
            kind: Namespace
            metadata: {name: shop}
            ---
            apiVersion: v1
            kind: Node
            metadata: {name: node-a}

            """
        for i in 1...3 { yaml += "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c\(i), namespace: shop}\n" }
        let (r, w) = try review(yaml)
        #expect(w == ["in.yaml: Servcie shop/web: kind Servcie is not one svcnat reads; did you mean Service? skipped"])
        #expect(SkippedObject.summary(r.skipped, verbose: false) == ["skipped 5 objects of 3 kinds not used by svcnat; -v lists them"])
        // Cluster-scoped kinds have no namespace.
        #expect(
            SkippedObject.summary(r.skipped, verbose: true).map { $0.replacingOccurrences(of: r.files[0], with: "in.yaml") } == [
                "in.yaml: Namespace shop: kind Namespace is not used by svcnat; skipped",
                "in.yaml: Node node-a: kind Node is not used by svcnat; skipped",
                "in.yaml: ConfigMap shop/c1: kind ConfigMap is not used by svcnat; skipped",
                "in.yaml: ConfigMap shop/c2: kind ConfigMap is not used by svcnat; skipped",
                "in.yaml: ConfigMap shop/c3: kind ConfigMap is not used by svcnat; skipped"
            ])
        #expect(Kinds.suggestion(for: "Endpoint", among: ["Endpoints", "EndpointSlice"]) == "Endpoints")
        #expect(Kinds.suggestion(for: "Job", among: ["Pod"]) == nil)
        #expect(Kinds.suggestion(for: "ServiceAccount", among: ["Service"]) == nil)
    }

    @Test func servicesOfAnotherProxyAndHeadlessSlicesAreLeftOutAsTheAPIModeDoes() throws {
        let (r, w) = try review(
            """
            apiVersion: v1
            kind: Service
            metadata: {name: mesh, namespace: shop, labels: {service.kubernetes.io/service-proxy-name: other-proxy}}
            spec: {clusterIP: 198.18.100.7, ports: [{port: 80}]}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: db-x, namespace: shop, labels: {kubernetes.io/service-name: db, service.kubernetes.io/headless: ""}}
            addressType: IPv4
            endpoints: [{addresses: [198.19.1.2]}]
            """)
        #expect(w == [])
        #expect(r.state.services.isEmpty && r.state.endpointSlices.isEmpty)
        #expect(
            SkippedObject.summary(r.skipped, verbose: false) == [
                "skipped 1 object labelled service.kubernetes.io/headless: headless, which no proxy programs; -v lists them",
                "skipped 1 object labelled service.kubernetes.io/service-proxy-name: another proxy serves it; -v lists them"
            ])
    }

    @Test func anIngressWithAResourceBackendIsTakenWithoutThatPath() throws {
        let (r, w) = try review(
            """
            apiVersion: networking.k8s.io/v1
            kind: Ingress
            metadata: {name: ingress-resource-backend}
            spec:
              defaultBackend:
                resource: {apiGroup: k8s.example.com, kind: StorageBucket, name: static-assets}
              rules:
                - http:
                    paths:
                      - path: /icons
                        pathType: ImplementationSpecific
                        backend:
                          resource: {apiGroup: k8s.example.com, kind: StorageBucket, name: icon-assets}
                      - {path: /shop, pathType: Prefix, backend: {service: {name: shop, port: {number: 80}}}}
            """)
        #expect(r.state.ingresses.count == 1 && r.state.ingresses[0].paths.map(\.path) == ["/shop"])
        #expect(r.state.ingresses[0].defaultBackend == nil)
        #expect(
            w == [
                "in.yaml: Ingress default/ingress-resource-backend: spec.rules[0].http.paths[0].backend: a resource backend "
                    + "(StorageBucket icon-assets) is not a Service, and svcnat routes only to Services; skipped",
                "in.yaml: Ingress default/ingress-resource-backend: spec.defaultBackend: a resource backend (StorageBucket "
                    + "static-assets) is not a Service, and svcnat routes only to Services; skipped"
            ])
    }
}

@Suite struct Allocating {
    func service(
        _ ns: String, _ name: String, type: ServiceType = .clusterIP, ip: String? = nil, ports: [ServicePort] = [ServicePort(port: 80)]
    )
        -> Service
    {
        Service(meta: ObjectMeta(namespace: ns, name: name), type: type, clusterIP: ip.flatMap(IPAddress.init), ports: ports)
    }
    let settings = Allocation.Settings(serviceCIDRs: [IPPrefix("198.18.100.0/24")!, IPPrefix("2001:db8:100::/112")!])

    @Test func theSameInputGetsTheSameAddressesInAnyOrder() {
        var services = (0..<200).map { service("ns\($0 % 7)", "svc-\($0)") }
        services.append(service("default", "kubernetes"))
        services.append(service("fixed", "one", ip: "198.18.100.77"))
        let a = Allocation.assign(services, settings)
        let b = Allocation.assign(services.reversed(), settings)
        #expect(a.given == b.given)
        let ips = a.given.values.flatMap(\.clusterIPs)
        #expect(ips.count == 201 && Set(ips).count == 201)
        // The given address stays its Service's; the first goes to default/kubernetes only;
        // neither the network nor the broadcast address is given.
        #expect(!ips.contains(ip("198.18.100.77")))
        #expect(a.given["default/kubernetes"]?.clusterIPs == [ip("198.18.100.1")])
        #expect(!ips.contains(ip("198.18.100.0")) && !ips.contains(ip("198.18.100.255")))
        // The place tried first is FNV-1a of namespace/name: a Service alone gets exactly it.
        let alone = Allocation.assign([service("shop", "web")], settings).given["shop/web"]!.clusterIPs[0]
        #expect(alone == ip("198.18.100.\(2 + Allocation.hash("shop/web") % 253)"))
        #expect(Allocation.hash("") == 0xcbf2_9ce4_8422_2325 && Allocation.hash("a") == 0xaf63_dc4c_8601_ec8c)
    }

    @Test func addingAServiceMovesNoAddressAServiceHolds() {
        // shop/api and shop/web hash to the same place in 198.18.100.0/24 (offset 29: .31).
        #expect(Allocation.hash("shop/api") % 253 == Allocation.hash("shop/web") % 253)
        let web = service("shop", "web", type: .nodePort)
        let before = Allocation.assign([web], settings)
        #expect(before.given["shop/web"]?.clusterIPs.first == ip("198.18.100.31"))
        // Alone, the rule gives the place to the one that sorts first...
        let fresh = Allocation.assign([web, service("shop", "api")], settings)
        #expect(fresh.given["shop/api"]?.clusterIPs.first == ip("198.18.100.31"))
        // ...but what shop/web holds (in the kernel, as the tables' comments say) stays its own.
        var ruleset = Ruleset(table: "svcnat")
        let translator = Translator(TranslatorConfig())
        let proxy = ProxyState(ClusterState(services: before.applied(to: [web])))
        ruleset = translator.ruleset(for: proxy)
        let held = Allocation.Held(tables: [ruleset])
        #expect(held.clusterIPs == ["shop/web": [ip("198.18.100.31")]])
        #expect(held.nodePorts == ["shop/web:/TCP": before.given["shop/web"]!.nodePorts[0]!])
        let kept = Allocation.assign([web, service("shop", "api")], settings, keeping: held)
        #expect(kept.given["shop/web"] == before.given["shop/web"])
        #expect(kept.given["shop/api"]?.clusterIPs.first == ip("198.18.100.32"))
    }

    /// The store runs the allocation again only when a change could move something; whatever
    /// it skips must be what running it would have given. Random changes to ten Services, some
    /// defined in two sources, checked after each against the rule run over all winners,
    /// keeping what was held: in ranges with room (most changes skip the allocation), and in
    /// ranges too small (some Services are refused, and a place freed can serve them).
    @Test func skippingTheAllocationGivesWhatRunningItWould() {
        let roomy = Allocation.Settings(serviceCIDRs: [IPPrefix("198.18.100.0/28")!], nodePorts: 30000...30011)
        let small = Allocation.Settings(serviceCIDRs: [IPPrefix("198.18.100.0/29")!], nodePorts: 30000...30003)
        let skipped = randomChanges(roomy)
        #expect(skipped > 100 && skipped < 400, "\(skipped) of 400 changes skipped the allocation")
        _ = randomChanges(small)
    }

    /// 400 random changes; the number that left the allocation as it was, unrun.
    func randomChanges(_ settings: Allocation.Settings) -> Int {
        let store = ObjectStore(root: "")
        store.allocation = settings
        var rng = SplitMix(seed: 7)
        var sources: [String: Service] = [:]
        var reference = Allocation.Result()
        var skipped = 0
        for step in 0..<400 {
            let source = "s\(rng.next() % 14)"
            if rng.next() % 6 == 0 {
                sources[source] = nil
            } else {
                // Sources s0...s13 define Services k0...k9: a few keys are defined twice.
                var svc = service("ns", "k\(Int(source.dropFirst())! % 10)", type: rng.next() % 3 == 0 ? .nodePort : .clusterIP)
                if rng.next() % 3 == 0 { svc.clusterIPs = [IPAddress("198.18.100.\(2 + rng.next() % 13)")!] }
                if svc.type == .nodePort, rng.next() % 3 == 0 { svc.ports[0].nodePort = 30000 + UInt16(rng.next() % 12) }
                // What the allocation does not read: a label, most of the time the only change.
                svc.meta.labels = ["v": String(rng.next() % 3)]
                if let was = sources[source], rng.next() % 2 == 0 { svc = was; svc.meta.labels = ["v": String(step)] }
                sources[source] = svc
            }
            let wasStale = store.stateNeedsAllocation
            _ = store.put(source, sources[source].map { ClusterState(services: [$0]) })
            if !wasStale && !store.stateNeedsAllocation { skipped += 1 }
            var winners: [String: Service] = [:]
            for name in sources.keys.sorted().reversed() { winners[sources[name]!.meta.key] = sources[name]! }
            let ordered = winners.keys.sorted().map { winners[$0]! }
            reference = Allocation.assign(ordered, settings, keeping: Allocation.Held(reference, ordered))
            let same = store.state.services == reference.applied(to: ordered)
            #expect(same, "step \(step): \(source): the store's allocation is not the rule's")
            if !same { break }
        }
        return skipped
    }

    @Test func aFullRangeIsSaidNotGuessed() {
        let small = Allocation.Settings(serviceCIDRs: [IPPrefix("198.18.100.0/29")!])  // 5 places: .2 to .6
        let r = Allocation.assign((0..<7).map { service("ns", "s\($0)") }, small)
        #expect(r.given.values.flatMap(\.clusterIPs).count == 5)
        #expect(
            r.given.values.flatMap(\.problems).sorted() == Array(repeating: "no free address in --service-cidr 198.18.100.0/29", count: 2))
    }

    @Test func nodePortsAndHealthChecksComeFromTheRangeAvoidingThoseGiven() {
        var lb = service("shop", "lb", type: .loadBalancer, ip: "198.18.100.9", ports: [ServicePort(port: 80), ServicePort(port: 443)])
        lb.externalTrafficPolicyLocal = true
        let taken = service("shop", "np", type: .nodePort, ip: "198.18.100.8", ports: [ServicePort(port: 80, nodePort: 30000)])
        let range = Allocation.Settings(serviceCIDRs: [IPPrefix("198.18.100.0/24")!], nodePorts: 30000...30003)
        let g = Allocation.assign([lb, taken], range).given["shop/lb"]!
        #expect(Set(g.nodePorts.values).union([g.healthCheckNodePort!]) == [30001, 30002, 30003])
        let applied = Allocation.apply(g, to: lb)
        #expect(applied.ports.allSatisfy { $0.nodePortAllocated && $0.nodePort != nil } && applied.healthCheckNodePortAllocated)
        #expect(Allocation.assign([taken], range).given.isEmpty)
    }

    @Test func dualStackPoliciesGetBothFamilies() {
        var s = service("shop", "web")
        s.ipFamilyPolicy = "PreferDualStack"
        #expect(Allocation.assign([s], settings).given["shop/web"]?.clusterIPs.map(\.family) == [.v4, .v6])
        s.ipFamilies = [.v6]
        s.ipFamilyPolicy = "SingleStack"
        let v6 = Allocation.assign([s], settings).given["shop/web"]!.clusterIPs
        #expect(v6.count == 1 && IPPrefix("2001:db8:100::/112")!.contains(v6[0]))
    }
}

@Suite struct RememberedFlags {
    @Test func theFlagsRoundTripThroughTheirChain() {
        var f = AppliedFlags()
        f.clusterCIDRs = [IPPrefix("198.19.0.0/16")!, IPPrefix("2001:db8:1::/48")!]
        f.serviceCIDRs = [IPPrefix("198.18.100.0/24")!]
        f.masqueradeAll = true
        f.endpointSelection = .cascade
        #expect(
            f.chain.rules.map(\.nftText) == [
                "return comment \"--cluster-cidr 198.19.0.0/16\"", "return comment \"--cluster-cidr 2001:db8:1::/48\"",
                "return comment \"--service-cidr 198.18.100.0/24\"", "return comment \"--masquerade-all\"",
                "return comment \"--endpoint-selection cascade\""
            ])
        #expect(AppliedFlags(Ruleset(table: "svcnat", chains: [f.chain])) == f)
        #expect(AppliedFlags(Ruleset(table: "svcnat", chains: [])) == nil)
        #expect(AppliedFlags(words: ["--cluster-cidr nonsense"]) == nil)
        #expect(AppliedFlags(words: ["--something-else"]) == nil)
    }
}

/// A seeded generator, so a failure names a step that happens again.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
