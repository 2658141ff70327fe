import Foundation
import Testing

extension RootTests {
    /// Real TCP and UDP through svcnat's rules: a node namespace, pod namespaces running servers
    /// that answer with their name and the source address they saw, and an external client.
    @Suite(.serialized)
    struct TrafficTests {
        let cidr = ["--cluster-cidr", "198.19.0.0/16"]
        /// chi-square critical value for 2 degrees of freedom at p = 0.001.
        let chi2Critical2 = 13.82

        @Test(arguments: ["map", "cascade"])
        func clusterIPSpreadsOverEveryPodFromNodeClientAndPods(selection: String) throws {
            let bed = Testbed("spread")
            defer { bed.close() }
            try bed.servedTopology(pods: 3)
            let node = bed.ns("node")
            let input = try bed.writeManifest(serviceManifest(pods: [1, 2, 3]))
            let applied = try bed.svcnat(node, ["apply", "-f", input, "--endpoint-selection", selection] + cidr)
            #expect(applied.code == 0, "\(applied.err)")

            // From the node: every pod answers, evenly.
            let tcp = try bed.client(in: node, "tcp", "198.18.100.20", 80, count: 300)
            #expect(tcp.refused == 0 && tcp.timeouts == 0)
            #expect(Set(tcp.answers.keys) == ["pod1", "pod2", "pod3"])
            let chi = chiSquare(["pod1", "pod2", "pod3"].map { tcp.answers[$0] ?? 0 })
            #expect(chi < chi2Critical2, "TCP spread \(tcp.answers) has chi-square \(chi)")

            // `svcnat explain` names exactly the endpoints that answered, each at 1/3.
            let explained = try bed.svcnat(node, ["explain", "198.18.100.20:80"])
            #expect(explained.code == 0, "\(explained.err)")
            let listed = Set(
                explained.out.split(separator: "\n").compactMap { line -> String? in
                    guard let r = line.range(of: "198.19."), line.contains("probability 1/3") else { return nil }
                    return "pod" + String(line[r.upperBound...].prefix { $0 != "." })
                })
            #expect(listed == Set(tcp.answers.keys), "\(explained.out)")
            #expect(try bed.svcnat(node, ["explain", "web.demo.svc.cluster.local:http"]).out.contains("demo/web:http (tcp)"))
            // An Ingress rule leads to the same Service; a walk from the node reaches the same pods.
            let ingress = try bed.writeManifest(
                """
                apiVersion: networking.k8s.io/v1
                kind: Ingress
                metadata: {name: web, namespace: demo}
                spec:
                  rules:
                    - host: web.example.test
                      http:
                        paths:
                          - {path: /shop, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}
                """)
            let viaIngress = try bed.svcnat(node, ["explain", "--ingress", "web.example.test/shop/cart", "-f", ingress])
            #expect(
                viaIngress.code == 0 && viaIngress.out.contains("-> Service demo/web port http")
                    && viaIngress.out.contains("demo/web:http (tcp)"),
                "\(viaIngress.out)\(viaIngress.err)")
            let walked = try bed.explain(node, ["--ingress", "web.example.test/shop", "-f", ingress, "--source", "198.18.0.1"])
            #expect(Set(walked.compactMap(\.pod)) == Set(tcp.answers.keys) && walked.allSatisfy { $0.probability == "1/3" }, "\(walked)")

            let udp = try bed.client(in: node, "udp", "198.18.100.20", 53, count: 150)
            #expect(udp.timeouts == 0 && udp.refused == 0)
            #expect(Set(udp.answers.keys) == ["pod1", "pod2", "pod3"])
            #expect(chiSquare(["pod1", "pod2", "pod3"].map { udp.answers[$0] ?? 0 }) < chi2Critical2)

            // From the external client (outside the cluster CIDR): masqueraded, so the pods see
            // the node's address on their link, never the client's.
            let ext = try bed.client(in: bed.ns("client"), "tcp", "198.18.100.20", 80, count: 60)
            #expect(ext.refused == 0 && ext.timeouts == 0)
            #expect(Set(ext.answers.keys) == ["pod1", "pod2", "pod3"])
            #expect(ext.sources["198.18.0.2"] == nil)
            #expect(Set(ext.sources.keys).isSubset(of: ["198.19.1.1", "198.19.2.1", "198.19.3.1"]))

            // From pod1: other pods see pod1's own address (inside the cluster CIDR: no
            // masquerade); pod1 reaching itself (hairpin) works and sees the node's address.
            let fromPod = try bed.client(in: bed.ns("pod1"), "tcp", "198.18.100.20", 80, count: 120)
            #expect(fromPod.refused == 0 && fromPod.timeouts == 0)
            #expect(Set(fromPod.answers.keys) == ["pod1", "pod2", "pod3"])
            #expect(chiSquare(["pod1", "pod2", "pod3"].map { fromPod.answers[$0] ?? 0 }) < chi2Critical2)
            #expect(fromPod.sources["198.19.1.2"] == (fromPod.answers["pod2"] ?? 0) + (fromPod.answers["pod3"] ?? 0))
            #expect(fromPod.sources["198.19.1.1"] == fromPod.answers["pod1"])
        }

        @Test func scalingEndpointsMovesTraffic() throws {
            let bed = Testbed("scale")
            defer { bed.close() }
            try bed.servedTopology(pods: 3)
            let node = bed.ns("node")
            for pods in [[1], [1, 2, 3], [2, 3], [3], [1, 2, 3]] {
                let input = try bed.writeManifest(serviceManifest(pods: pods))
                let r = try bed.svcnat(node, ["apply", "-f", input] + cidr)
                #expect(r.code == 0, "\(r.err)")
                let got = try bed.client(in: node, "tcp", "198.18.100.20", 80, count: 30 * pods.count)
                #expect(got.refused == 0 && got.timeouts == 0)
                #expect(Set(got.answers.keys) == Set(pods.map { "pod\($0)" }), "with pods \(pods): \(got.answers)")
                let udp = try bed.client(in: node, "udp", "198.18.100.20", 53, count: 10 * pods.count)
                #expect(Set(udp.answers.keys).isSubset(of: Set(pods.map { "pod\($0)" })))
            }
        }

        /// An external IP that is the node's own address, on a Service without endpoints: the
        /// client is refused (kube-proxy's service-endpoints-check in filter-input), not handed
        /// to the program that listens on that port of the host ("host" here). With an endpoint,
        /// the Service answers there.
        @Test func externalIPOnTheNodeWithoutEndpointsIsRefused() throws {
            let bed = Testbed("extnode")
            defer { bed.close() }
            try bed.servedTopology(pods: 1)
            let node = bed.ns("node"), client = bed.ns("client")
            let host = try bed.startProcess(node, ["python3", helper("server.py"), "host", "8081", "60"])
            #expect(within(5) { host.log().contains("ready") } != nil)
            func manifest(_ pods: [Int]) -> String {
                serviceManifest(pods: pods).replacingOccurrences(
                    of: "  clusterIP: 198.18.100.20\n", with: "  clusterIP: 198.18.100.20\n  externalIPs: [198.18.0.1]\n"
                ).replacingOccurrences(of: "port: 80, targetPort: web", with: "port: 8081, targetPort: web")
            }
            // Before svcnat, the host's program answers there: the check below can tell.
            let before = try bed.client(in: client, "tcp", "198.18.0.1", 8081, count: 3)
            #expect(before.answers == ["host": 3], "\(before)")
            #expect(try bed.svcnat(node, ["apply", "-f", try bed.writeManifest(manifest([]))] + cidr).code == 0)
            let none = try bed.client(in: client, "tcp", "198.18.0.1", 8081, count: 10)
            #expect(none.refused == 10 && none.answers.isEmpty && none.seconds < 2, "\(none)")
            #expect(try bed.svcnat(node, ["apply", "-f", try bed.writeManifest(manifest([1]))] + cidr).code == 0)
            let served = try bed.client(in: client, "tcp", "198.18.0.1", 8081, count: 10)
            #expect(served.answers == ["pod1": 10], "\(served)")
        }

        /// kube-proxy's TestLoadBalancer, "same node to LB, SNATted to LB (implicitly allowed)":
        /// loadBalancerSourceRanges hold the node's address, and a VIP-like load balancer has put
        /// its IP on the node itself; a connection from the node to the LB IP with that IP as
        /// its source is served, as kube-proxy serves it (without the rule it is dropped).
        @Test func lbIPAsSourceIsAdmittedWhenTheRangesHoldTheNode() throws {
            let bed = Testbed("lbself")
            defer { bed.close() }
            try bed.servedTopology(pods: 1)
            let node = bed.ns("node")
            try bed.sh(node, ["ip", "addr", "add", "198.18.200.9/32", "dev", "lo"])
            let text = RootTests.LocalPolicyTests().manifest(pods: [(1, "node-a")], etp: "Cluster").replacingOccurrences(
                of: "  clusterIP: 198.18.100.60\n", with: "  clusterIP: 198.18.100.60\n  loadBalancerSourceRanges: [198.18.0.0/24]\n")
            let r = try bed.svcnat(node, ["apply", "-f", try bed.writeManifest(text), "--node-name", "node-a"] + cidr)
            #expect(r.code == 0, "\(r.err)")
            let fromVIP = try bed.client(in: node, "tcp", "198.18.200.9", 80, count: 5, from: "198.18.200.9")
            #expect(fromVIP.answers == ["pod1": 5], "\(fromVIP)")
            let fromNode = try bed.client(in: node, "tcp", "198.18.200.9", 80, count: 5, from: "198.18.0.1")
            #expect(fromNode.answers == ["pod1": 5], "\(fromNode)")
        }

        @Test func noEndpointsRefusesAtOnce() throws {
            let bed = Testbed("noeps")
            defer { bed.close() }
            try bed.servedTopology(pods: 1)
            let node = bed.ns("node")
            let none = try bed.writeManifest(serviceManifest(pods: []))
            #expect(try bed.svcnat(node, ["apply", "-f", none] + cidr).code == 0)
            #expect(try bed.svcnat(node, ["show"]).out.contains("endpoints: none"))
            for ns in [node, bed.ns("pod1"), bed.ns("client")] {
                let tcp = try bed.client(in: ns, "tcp", "198.18.100.20", 80, count: 20)
                #expect(tcp.refused == 20, "from \(ns): \(tcp)")
                #expect(tcp.seconds < 2, "refusals must be immediate, took \(tcp.seconds) s from \(ns)")
            }
            let udp = try bed.client(in: node, "udp", "198.18.100.20", 53, count: 5)
            #expect(udp.refused == 5 && udp.seconds < 2, "\(udp)")

            // One pod becomes ready: the same address now answers.
            let one = try bed.writeManifest(serviceManifest(pods: [1]))
            #expect(try bed.svcnat(node, ["apply", "-f", one] + cidr).code == 0)
            let ok = try bed.client(in: node, "tcp", "198.18.100.20", 80, count: 10)
            #expect(ok.answers["pod1"] == 10)
        }
    }
}

extension RootTests {
    /// NodePort, external IPs, load-balancer IPs with source ranges, and what happens to traffic
    /// that matches no Service port.
    @Suite(.serialized)
    struct ExternalTrafficTests {
        let cidr = ["--cluster-cidr", "198.19.0.0/16"]

        func lbManifest(pods: [Int], nodePort: Int = 30080) -> String {
            var s = """
                apiVersion: v1
                kind: Service
                metadata: {name: shop, namespace: demo}
                spec:
                  type: LoadBalancer
                  clusterIP: 198.18.100.50
                  externalIPs: [198.18.200.5]
                  loadBalancerSourceRanges: [198.18.0.0/24]
                  selector: {app: shop}
                  ports:
                    - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: \(nodePort)}
                    - {name: dns, protocol: UDP, port: 53, targetPort: 8080, nodePort: \(nodePort)}
                status:
                  loadBalancer:
                    ingress: [{ip: 198.18.200.6}]

                """
            for i in pods {
                s += """
                    ---
                    apiVersion: v1
                    kind: Pod
                    metadata: {name: shop-\(i), namespace: demo, labels: {app: shop}}
                    status: {podIP: 198.19.\(i).2}

                    """
            }
            return s
        }

        @Test func nodePortExternalAndLoadBalancerIPs() throws {
            let bed = Testbed("ext")
            defer { bed.close() }
            try bed.servedTopology(pods: 2)
            let node = bed.ns("node"), client = bed.ns("client"), pod1 = bed.ns("pod1")
            let input = try bed.writeManifest(lbManifest(pods: [1, 2]))
            let r = try bed.svcnat(node, ["apply", "-f", input] + cidr)
            #expect(r.code == 0, "\(r.err)")

            // From the external client: node port on the node's address, the external IP, the LB IP.
            // External traffic is masqueraded (Cluster policy): pods see the node, not the client.
            for (ip, port) in [("198.18.0.1", 30080), ("198.18.200.5", 80), ("198.18.200.6", 80)] {
                let got = try bed.client(in: client, "tcp", ip, port, count: 40)
                #expect(got.refused == 0 && got.timeouts == 0, "\(ip):\(port): \(got)")
                #expect(Set(got.answers.keys) == ["pod1", "pod2"], "\(ip):\(port): \(got.answers)")
                #expect(got.sources["198.18.0.2"] == nil, "\(ip):\(port) was not masqueraded: \(got.sources)")
            }
            let udp = try bed.client(in: client, "udp", "198.18.0.1", 30080, count: 20)
            #expect(udp.timeouts == 0 && Set(udp.answers.keys) == ["pod1", "pod2"], "\(udp)")

            // The node port from a pod, on the node's address on that pod's link.
            let fromPod = try bed.client(in: pod1, "tcp", "198.19.1.1", 30080, count: 20)
            #expect(fromPod.refused == 0 && fromPod.timeouts == 0 && !fromPod.answers.isEmpty, "\(fromPod)")

            // loadBalancerSourceRanges: pod1 (198.19.1.2) is outside 198.18.0.0/24, so the LB IP
            // drops it; the external IP (no source ranges) still answers it.
            let denied = try bed.client(in: pod1, "tcp", "198.18.200.6", 80, count: 2)
            #expect(denied.answers.isEmpty && denied.timeouts == 2, "\(denied)")
            let allowedExt = try bed.client(in: pod1, "tcp", "198.18.200.5", 80, count: 10)
            #expect(allowedExt.answers.values.reduce(0, +) == 10, "\(allowedExt)")
            #expect(try bed.explain(node, ["198.18.200.6:80", "--source", "198.19.1.2"]).map(\.fate) == ["dropped"])
            #expect(
                Set(try bed.explain(node, ["198.18.200.5:80", "--source", "198.19.1.2"]).compactMap(\.pod)) == Set(allowedExt.answers.keys))

            // Without endpoints, every frontend refuses at once.
            let none = try bed.writeManifest(lbManifest(pods: []))
            #expect(try bed.svcnat(node, ["apply", "-f", none] + cidr).code == 0)
            for (ip, port) in [("198.18.0.1", 30080), ("198.18.200.5", 80), ("198.18.100.50", 80)] {
                let got = try bed.client(in: client, "tcp", ip, port, count: 5)
                #expect(got.refused == 5 && got.seconds < 2, "\(ip):\(port): \(got)")
                #expect(try bed.explain(node, ["\(ip):\(port)", "--source", "198.18.0.2"]).map(\.fate) == ["rejected"])
            }
        }

        @Test func nodePortAddressesLimitWhereNodePortsAnswer() throws {
            let bed = Testbed("npaddr")
            defer { bed.close() }
            try bed.servedTopology(pods: 1)
            let node = bed.ns("node"), pod1 = bed.ns("pod1"), client = bed.ns("client")
            let input = try bed.writeManifest(lbManifest(pods: [1]))
            #expect(try bed.svcnat(node, ["apply", "-f", input, "--nodeport-addresses", "198.18.0.0/24"] + cidr).code == 0)
            // Served on 198.18.0.1 ...
            let ok = try bed.client(in: client, "tcp", "198.18.0.1", 30080, count: 5)
            #expect(ok.answers["pod1"] == 5, "\(ok)")
            // ... but not on the node's other address: nothing listens there, the node's own TCP
            // stack refuses.
            let no = try bed.client(in: pod1, "tcp", "198.19.1.1", 30080, count: 3)
            #expect(no.answers.isEmpty && no.refused == 3, "\(no)")
            // And never on loopback, even without --nodeport-addresses.
            #expect(try bed.svcnat(node, ["apply", "-f", input] + cidr).code == 0)
            let lo = try bed.client(in: node, "tcp", "127.0.0.1", 30080, count: 2)
            #expect(lo.answers.isEmpty, "\(lo)")
            // (and not only because loopback traffic cannot be routed to a pod: no rule matches it)
            #expect(
                try bed.sh(node, ["nft", "list", "chain", "ip", "svcnat", "services"]).contains(
                    "fib daddr type local ip daddr != 127.0.0.0/8"))
            let nodeIP = try bed.client(in: node, "tcp", "198.18.0.1", 30080, count: 3)
            #expect(nodeIP.answers["pod1"] == 3, "\(nodeIP)")
        }

        @Test func unknownPortsAndUnusedServiceAddresses() throws {
            let bed = Testbed("unknown")
            defer { bed.close() }
            try bed.servedTopology(pods: 1)
            let node = bed.ns("node"), pod1 = bed.ns("pod1")
            let input = try bed.writeManifest(serviceManifest(pods: [1]))
            #expect(try bed.svcnat(node, ["apply", "-f", input, "--service-cidr", "198.18.100.0/24"] + cidr).code == 0)
            // The Service's own port works; a port it does not have is refused at once.
            #expect(try bed.client(in: node, "tcp", "198.18.100.20", 80, count: 3).answers["pod1"] == 3)
            for ns in [node, pod1] {
                let wrong = try bed.client(in: ns, "tcp", "198.18.100.20", 81, count: 3)
                #expect(wrong.refused == 3 && wrong.seconds < 2, "\(wrong)")
            }
            // An address of the Service CIDR that no Service has: dropped. Without the drop the
            // node routes it on to the client, whose sink answers: a timeout alone proves nothing.
            try bed.startSink(port: 80)
            let escaped = try bed.client(in: pod1, "tcp", "198.18.100.98", 80, count: 1)
            #expect(escaped.timeouts == 1 && escaped.answers.isEmpty, "\(escaped)")
            // The sink does answer what the node routes on: outside the Service CIDR.
            try bed.sh(node, ["ip", "route", "add", "198.18.101.0/24", "via", "198.18.0.2"])
            try bed.sh(bed.ns("client"), ["ip", "route", "add", "local", "198.18.101.0/24", "dev", "lo"])
            #expect(try bed.client(in: pod1, "tcp", "198.18.101.7", 80, count: 1).answers["sink"] == 1)
        }
    }
}
