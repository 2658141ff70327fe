import NFTModel
import SvcnatCore
import SvcnatExplain
import SvcnatModel
import SvcnatSources
import Testing

/// kube-proxy's `TestTerminatingEndpointsTrafficPolicyLocal` (pkg/proxy/nftables/proxier_test.go),
/// its four cases as data in this project's address plan: a LoadBalancer Service with
/// externalTrafficPolicy Local; this node is node-a (kube-proxy's testNodeName), the other node-b.
/// kube-proxy's addresses map as 172.30.1.1 -> 198.18.100.70, 1.2.3.4 -> 198.18.200.7,
/// 10.0.1.N -> 198.19.0.N, the pod source 10.0.0.2 -> 198.19.9.2, the external client ->
/// 198.18.0.77. Flows are walked through svcnat's real ruleset; the kernel test
/// (LocalPolicyTests) sends real packets for the case svcnat used to get wrong.
@Suite struct ConformanceTerminatingEndpointsTrafficPolicyLocal {
    enum E { case ready, servingTerminating, terminating }

    func state(_ eps: [(Int, E, String)], policy: String = "Local") -> ClusterState {
        let endpoints = eps.map { n, e, node in
            let c =
                switch e {
                case .ready: "{ready: true, serving: true, terminating: false}"
                case .servingTerminating: "{ready: false, serving: true, terminating: true}"
                case .terminating: "{ready: false, serving: false, terminating: true}"
                }
            return "{addresses: [198.19.0.\(n)], conditions: \(c), nodeName: \(node)}"
        }
        let text = """
            apiVersion: v1
            kind: Service
            metadata: {name: svc1, namespace: ns1}
            spec:
              type: LoadBalancer
              clusterIP: 198.18.100.70
              externalTrafficPolicy: \(policy)
            \(policy == "Local" ? "  healthCheckNodePort: 30000" : "")
              ports: [{name: "", protocol: TCP, port: 80, targetPort: 80, nodePort: 30070}]
            status: {loadBalancer: {ingress: [{ip: 198.18.200.7}]}}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: svc1-1, namespace: ns1, labels: {kubernetes.io/service-name: svc1}}
            addressType: IPv4
            ports: [{name: "", protocol: TCP, port: 80}]
            endpoints: [\(endpoints.joined(separator: ", "))]
            """
        var d = ManifestDecoder()
        d.decode(text, file: "svc1.yaml")
        #expect(d.errors.isEmpty, "\(d.errors)")
        return d.state
    }

    func ruleset(_ eps: [(Int, E, String)], policy: String = "Local") throws -> Ruleset {
        try Reconciler.desired(
            state(eps, policy: policy), config: ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!], nodeName: "node-a")
        )
        .1
    }

    /// kube-proxy's flow output: endpoints ("198.19.0.1:80, ...") or DROP/REJECT, and masq.
    func flow(_ r: Ruleset, from: String, to: String) -> (String, Bool) {
        let o = PacketWalk.walk(.init(source: ip(from), destination: ip(to), port: 80, proto: .tcp), in: r, local: [ip("198.18.0.1")])
        var eps: [String] = []
        for x in o {
            switch x.fate {
            case .accepted(let ep?): eps.append(ep.description)
            case .dropped: return ("DROP", false)
            case .rejected: return ("REJECT", false)
            default: return ("\(x.fate)", false)
            }
        }
        return (eps.sorted().joined(separator: ", "), o.contains { $0.masqueraded })
    }

    static let pod = "198.19.9.2", external = "198.18.0.77", clusterIP = "198.18.100.70", lb = "198.18.200.7"

    @Test func readyEndpointsExist() throws {
        let r = try ruleset([
            (1, .ready, "node-a"), (2, .ready, "node-a"), (3, .servingTerminating, "node-a"), (4, .terminating, "node-a"),
            (5, .ready, "node-b")
        ])
        #expect(flow(r, from: Self.pod, to: Self.clusterIP) == ("198.19.0.1:80, 198.19.0.2:80, 198.19.0.5:80", false))
        #expect(flow(r, from: Self.external, to: Self.lb) == ("198.19.0.1:80, 198.19.0.2:80", false))
    }

    /// The case svcnat got wrong: this node has only serving-terminating endpoints while
    /// another node has a ready one. Local traffic goes to this node's terminating endpoints;
    /// Cluster traffic only to the ready one.
    @Test func onlyTerminatingEndpointsExistHere() throws {
        let r = try ruleset([
            (2, .servingTerminating, "node-a"), (3, .servingTerminating, "node-a"), (4, .terminating, "node-a"), (5, .ready, "node-b")
        ])
        #expect(flow(r, from: Self.pod, to: Self.clusterIP) == ("198.19.0.5:80", false))
        #expect(flow(r, from: Self.external, to: Self.lb) == ("198.19.0.2:80, 198.19.0.3:80", false))
        // The health check node port counts ready local endpoints only: none, so load balancers
        // drain this node while its terminating endpoints still serve what reaches it.
        let s = state([(2, .servingTerminating, "node-a"), (3, .servingTerminating, "node-a"), (5, .ready, "node-b")])
        let port = try #require(
            ProxyState.ports(of: s.services[0], slices: s.endpointSlices, endpoints: nil, pods: [], nodeName: "node-a").first)
        #expect(port.localEndpointCount == 2 && port.localReadyCount == 0 && port.clusterStart == 2)
    }

    @Test func terminatingEndpointsOnARemoteNode() throws {
        let r = try ruleset([(5, .servingTerminating, "node-b")])
        #expect(flow(r, from: Self.pod, to: Self.clusterIP) == ("198.19.0.5:80", false))
        #expect(flow(r, from: Self.external, to: Self.lb) == ("DROP", false))
    }

    @Test func noUsableEndpointsOnAnyNode() throws {
        let r = try ruleset([(5, .terminating, "node-a"), (5, .terminating, "node-b")])
        #expect(flow(r, from: Self.pod, to: Self.clusterIP) == ("REJECT", false))
        #expect(flow(r, from: Self.external, to: Self.lb) == ("REJECT", false))
    }
}

/// kube-proxy's `TestTerminatingEndpointsTrafficPolicyCluster`, its four cases, with the same
/// Service under externalTrafficPolicy Cluster and the same address mapping.
@Suite struct ConformanceTerminatingEndpointsTrafficPolicyCluster {
    typealias L = ConformanceTerminatingEndpointsTrafficPolicyLocal
    let l = L()

    @Test func readyEndpointsExist() throws {
        let r = try l.ruleset(
            [
                (1, .ready, "node-a"), (2, .ready, "node-a"), (3, .servingTerminating, "node-b"), (4, .terminating, "node-b"),
                (5, .ready, "node-b")
            ],
            policy: "Cluster")
        #expect(l.flow(r, from: L.pod, to: L.clusterIP) == ("198.19.0.1:80, 198.19.0.2:80, 198.19.0.5:80", false))
        #expect(l.flow(r, from: L.external, to: L.lb) == ("198.19.0.1:80, 198.19.0.2:80, 198.19.0.5:80", true))
    }

    @Test func onlyTerminatingEndpointsExist() throws {
        let r = try l.ruleset(
            [
                (2, .servingTerminating, "node-a"), (3, .servingTerminating, "node-a"), (4, .terminating, "node-b"),
                (5, .servingTerminating, "node-b")
            ],
            policy: "Cluster")
        #expect(l.flow(r, from: L.pod, to: L.clusterIP) == ("198.19.0.2:80, 198.19.0.3:80, 198.19.0.5:80", false))
        #expect(l.flow(r, from: L.external, to: L.lb) == ("198.19.0.2:80, 198.19.0.3:80, 198.19.0.5:80", true))
    }

    @Test func terminatingEndpointsOnARemoteNode() throws {
        let r = try l.ruleset([(5, .servingTerminating, "node-b")], policy: "Cluster")
        #expect(l.flow(r, from: L.pod, to: L.clusterIP) == ("198.19.0.5:80", false))
        #expect(l.flow(r, from: L.external, to: L.lb) == ("198.19.0.5:80", true))
    }

    @Test func noUsableEndpointsOnAnyNode() throws {
        let r = try l.ruleset([(5, .terminating, "node-a"), (5, .terminating, "node-b")], policy: "Cluster")
        #expect(l.flow(r, from: L.pod, to: L.clusterIP) == ("REJECT", false))
        #expect(l.flow(r, from: L.external, to: L.lb) == ("REJECT", false))
    }
}

/// From kube-proxy's TestNoEndpointsReject's intent, for an external IP that is one of the
/// node's own addresses (issue 11's second disagreement): a Service without endpoints refuses
/// connections to it, where the packet would otherwise be delivered to whatever listens on the
/// host. The kernel test (TrafficTests) runs a listener on the node to make the difference seen.
@Suite struct ConformanceExternalIPOnTheNodeWithoutEndpoints {
    @Test func isRefusedNotDeliveredToTheHost() throws {
        var d = ManifestDecoder()
        d.decode(
            """
            apiVersion: v1
            kind: Service
            metadata: {name: empty, namespace: demo}
            spec:
              clusterIP: 198.18.100.71
              externalIPs: [198.18.0.1]
              ports: [{name: http, protocol: TCP, port: 8081, targetPort: 8080}]
            """, file: "empty.yaml")
        #expect(d.errors.isEmpty)
        let r = try Reconciler.desired(d.state, config: ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!])).1
        let o = PacketWalk.walk(
            .init(source: ip("198.18.0.2"), destination: ip("198.18.0.1"), port: 8081, proto: .tcp), in: r, local: [ip("198.18.0.1")])
        #expect(o.map(\.fate) == [.rejected(.tcpReset)], "\(o)")
        // Another port of the node is not the Service's: delivered as it is.
        let other = PacketWalk.walk(
            .init(source: ip("198.18.0.2"), destination: ip("198.18.0.1"), port: 22, proto: .tcp), in: r, local: [ip("198.18.0.1")])
        #expect(other.map(\.fate) == [.accepted(nil)], "\(other)")
    }
}
