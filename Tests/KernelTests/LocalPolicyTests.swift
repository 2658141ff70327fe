import Foundation
import Testing

extension RootTests {
    /// externalTrafficPolicy and internalTrafficPolicy Local, with endpoints on this node (pod1,
    /// node-a) and on another node (pod2, node-b, still reachable over the pod network).
    @Suite(.serialized)
    struct LocalPolicyTests {
        let args = ["--cluster-cidr", "198.19.0.0/16", "--node-name", "node-a"]

        func manifest(pods: [(Int, String)], etp: String = "Local", itp: String = "Cluster") -> String {
            var s = """
                apiVersion: v1
                kind: Service
                metadata: {name: edge, namespace: demo}
                spec:
                  type: LoadBalancer
                  clusterIP: 198.18.100.60
                  externalTrafficPolicy: \(etp)
                  internalTrafficPolicy: \(itp)
                  healthCheckNodePort: 32000
                  selector: {app: edge}
                  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30090}]
                status: {loadBalancer: {ingress: [{ip: 198.18.200.9}]}}

                """
            if etp != "Local" { s = s.replacingOccurrences(of: "  healthCheckNodePort: 32000\n", with: "") }
            for (i, node) in pods {
                s += """
                    ---
                    apiVersion: v1
                    kind: Pod
                    metadata: {name: edge-\(i), namespace: demo, labels: {app: edge}}
                    spec: {nodeName: \(node)}
                    status: {podIP: 198.19.\(i).2}

                    """
            }
            return s
        }

        @Test func externalLocalKeepsTheClientSourceAndUsesOnlyThisNode() throws {
            let bed = Testbed("etp")
            defer { bed.close() }
            try bed.servedTopology(pods: 2)
            let node = bed.ns("node"), client = bed.ns("client"), pod2 = bed.ns("pod2")
            let both = try bed.writeManifest(manifest(pods: [(1, "node-a"), (2, "node-b")]))
            let r = try bed.svcnat(node, ["apply", "-f", both] + args)
            #expect(r.code == 0, "\(r.err)")

            // From outside: only this node's endpoint, and it sees the client's own address.
            for (ip, port) in [("198.18.0.1", 30090), ("198.18.200.9", 80)] {
                let got = try bed.client(in: client, "tcp", ip, port, count: 20)
                #expect(got.answers == ["pod1": 20], "\(ip):\(port): \(got)")
                #expect(got.sources == ["198.18.0.2": 20], "\(ip):\(port) must keep the client's source: \(got.sources)")
            }
            // From a pod: every endpoint (pods get cluster-wide semantics).
            let fromPod = try bed.client(in: pod2, "tcp", "198.18.200.9", 80, count: 40)
            #expect(Set(fromPod.answers.keys) == ["pod1", "pod2"], "\(fromPod)")
            // From the node itself: works, to every endpoint.
            let fromNode = try bed.client(in: node, "tcp", "198.18.0.1", 30090, count: 40)
            #expect(fromNode.timeouts == 0 && Set(fromNode.answers.keys) == ["pod1", "pod2"], "\(fromNode)")
            // ClusterIP traffic is not affected by the external policy.
            #expect(Set(try bed.client(in: node, "tcp", "198.18.100.60", 80, count: 40).answers.keys) == ["pod1", "pod2"])

            // `explain --source`, walking the kernel's rules, says what the packets did.
            #expect(
                try bed.explain(node, ["198.18.200.9:80", "--source", "198.18.0.2"])
                    == [ExplainedOutcome(fate: "dnat", pod: "pod1", masqueraded: false, probability: "1")])
            let podWalk = try bed.explain(node, ["198.18.200.9:80", "--source", "198.19.2.2"])
            #expect(
                Set(podWalk.compactMap(\.pod)) == Set(fromPod.answers.keys) && podWalk.allSatisfy { $0.probability == "1/2" }, "\(podWalk)")
            let nodeWalk = try bed.explain(node, [":30090", "--source", "198.18.0.1"])
            #expect(Set(nodeWalk.compactMap(\.pod)) == Set(fromNode.answers.keys) && nodeWalk.allSatisfy { $0.masqueraded }, "\(nodeWalk)")

            // No endpoint on this node: outside traffic is dropped, pods still get through.
            let remote = try bed.writeManifest(manifest(pods: [(2, "node-b")]))
            #expect(try bed.svcnat(node, ["apply", "-f", remote] + args).code == 0)
            let dropped = try bed.client(in: client, "tcp", "198.18.0.1", 30090, count: 2)
            #expect(dropped.answers.isEmpty && dropped.timeouts == 2, "\(dropped)")
            #expect(
                try bed.explain(node, ["198.18.0.1:30090", "--source", "198.18.0.2"])
                    == [ExplainedOutcome(fate: "dropped", pod: nil, masqueraded: false, probability: "1")])
            #expect(try bed.client(in: pod2, "tcp", "198.18.200.9", 80, count: 5).answers == ["pod2": 5])
        }

        /// kube-proxy's TestTerminatingEndpointsTrafficPolicyLocal, "only terminating endpoints
        /// exist" on this node: pod1 (node-a, this node) is serving and terminating, pod2
        /// (node-b) is ready. Outside clients, through the node port and the load-balancer IP,
        /// reach pod1, this node's terminating endpoint, with their own source; a pod through the
        /// ClusterIP (Cluster policy) reaches pod2, the ready one, only.
        @Test func localTrafficFallsBackToThisNodesTerminatingEndpoints() throws {
            let bed = Testbed("etpterm")
            defer { bed.close() }
            try bed.servedTopology(pods: 2)
            let node = bed.ns("node"), client = bed.ns("client"), pod2 = bed.ns("pod2")
            let text =
                manifest(pods: []).replacingOccurrences(of: "  selector: {app: edge}\n", with: "") + """
                    ---
                    apiVersion: discovery.k8s.io/v1
                    kind: EndpointSlice
                    metadata: {name: edge-1, namespace: demo, labels: {kubernetes.io/service-name: edge}}
                    addressType: IPv4
                    ports: [{name: http, protocol: TCP, port: 8080}]
                    endpoints:
                      - {addresses: [198.19.1.2], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
                      - {addresses: [198.19.2.2], nodeName: node-b, conditions: {ready: true, serving: true, terminating: false}}

                    """
            let r = try bed.svcnat(node, ["apply", "-f", try bed.writeManifest(text)] + args)
            #expect(r.code == 0, "\(r.err)")
            for (ip, port) in [("198.18.0.1", 30090), ("198.18.200.9", 80)] {
                let got = try bed.client(in: client, "tcp", ip, port, count: 20)
                #expect(got.answers == ["pod1": 20] && got.sources == ["198.18.0.2": 20], "\(ip):\(port): \(got)")
            }
            let fromPod = try bed.client(in: pod2, "tcp", "198.18.100.60", 80, count: 20)
            #expect(fromPod.answers == ["pod2": 20], "\(fromPod)")
        }

        @Test func internalLocalUsesOnlyThisNodesEndpoints() throws {
            let bed = Testbed("itp")
            defer { bed.close() }
            try bed.servedTopology(pods: 2)
            let node = bed.ns("node")
            let both = try bed.writeManifest(manifest(pods: [(1, "node-a"), (2, "node-b")], etp: "Cluster", itp: "Local"))
            #expect(try bed.svcnat(node, ["apply", "-f", both] + args).code == 0)
            #expect(try bed.client(in: node, "tcp", "198.18.100.60", 80, count: 20).answers == ["pod1": 20])
            // External traffic (Cluster policy) still reaches every endpoint.
            #expect(Set(try bed.client(in: bed.ns("client"), "tcp", "198.18.0.1", 30090, count: 40).answers.keys) == ["pod1", "pod2"])
            let remote = try bed.writeManifest(manifest(pods: [(2, "node-b")], etp: "Cluster", itp: "Local"))
            #expect(try bed.svcnat(node, ["apply", "-f", remote] + args).code == 0)
            let none = try bed.client(in: node, "tcp", "198.18.100.60", 80, count: 1)
            #expect(none.answers.isEmpty && none.timeouts == 1, "\(none)")
        }

        @Test func topologyHintsKeepTrafficInTheZone() throws {
            let bed = Testbed("zone")
            defer { bed.close() }
            try bed.servedTopology(pods: 3)
            let node = bed.ns("node")
            let input = try bed.writeManifest(
                """
                apiVersion: v1
                kind: Service
                metadata: {name: zoned, namespace: demo}
                spec: {clusterIP: 198.18.100.70, ports: [{name: http, port: 80}]}
                ---
                apiVersion: discovery.k8s.io/v1
                kind: EndpointSlice
                metadata: {name: zoned-x, namespace: demo, labels: {kubernetes.io/service-name: zoned}}
                addressType: IPv4
                ports: [{name: http, port: 8080}]
                endpoints:
                  - {addresses: [198.19.1.2], zone: zone-a, hints: {forZones: [{name: zone-a}]}}
                  - {addresses: [198.19.2.2], zone: zone-b, hints: {forZones: [{name: zone-b}]}}
                  - {addresses: [198.19.3.2], zone: zone-a, hints: {forZones: [{name: zone-a}]}}
                """)
            #expect(try bed.svcnat(node, ["apply", "-f", input, "--node-zone", "zone-a"] + args).code == 0)
            let inZone = try bed.client(in: node, "tcp", "198.18.100.70", 80, count: 40)
            #expect(Set(inZone.answers.keys) == ["pod1", "pod3"], "\(inZone)")
            #expect(try bed.svcnat(node, ["apply", "-f", input, "--node-zone", "zone-b"] + args).code == 0)
            #expect(try bed.client(in: node, "tcp", "198.18.100.70", 80, count: 10).answers == ["pod2": 10])
        }

        @Test(arguments: ["map", "cascade"])
        func clientIPAffinityKeepsEachClientOnItsEndpoint(selection: String) throws {
            let bed = Testbed("aff")
            defer { bed.close() }
            try bed.servedTopology(pods: 3)
            let node = bed.ns("node"), client = bed.ns("client")
            let sources = (10..<30).map { "198.18.0.\($0)" }
            for a in sources { try bed.sh(client, ["ip", "addr", "add", "\(a)/24", "dev", "eth0"]) }
            let input = try bed.writeManifest(
                serviceManifest(pods: [1, 2, 3]).replacingOccurrences(
                    of: "  selector: {app: web}\n",
                    with: "  selector: {app: web}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n"
                ))
            #expect(try bed.svcnat(node, ["apply", "-f", input, "--endpoint-selection", selection] + args).code == 0)
            // Each client keeps its endpoint for all its connections ...
            let chosen = try bed.affinityChoices(in: client, "198.18.100.20", 80, sources: sources, count: 8)
            // ... and the clients spread over the endpoints (20 clients all on one pod: p < 1e-9).
            #expect(Set(chosen.values).count >= 2, "\(chosen)")
            #expect(try bed.svcnat(node, ["show"]).out.contains("probability 1/3"))
            // A second apply changes nothing and keeps the memories (dynamic sets are traffic's).
            #expect(try bed.svcnat(node, ["apply", "-f", input, "--endpoint-selection", selection] + args).out.contains("no changes"))
            let again = try bed.client(in: client, "tcp", "198.18.100.20", 80, count: 4, from: sources[0])
            #expect(again.answers == [chosen[sources[0]]!: 4])
        }
    }
}
