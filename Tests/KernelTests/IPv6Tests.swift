import Foundation
import Testing

/// A dual-stack Service (ClusterIPs 198.18.100.30 and 2001:db8:100::30, node port 30080,
/// TCP 80 and UDP 53 -> 8080), with an EndpointSlice per family: pods `v4` and `v6` by number.
/// With `v6` nil the Service is IPv4 only.
func dualStackManifest(v4: [Int], v6: [Int]?) -> String {
    let ips = v6 == nil ? "[198.18.100.30]" : "[198.18.100.30, \"2001:db8:100::30\"]"
    var s = """
        apiVersion: v1
        kind: Service
        metadata: {name: ds, namespace: demo}
        spec:
          type: NodePort
          clusterIP: 198.18.100.30
          clusterIPs: \(ips)
          ports:
            - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
            - {name: dns, protocol: UDP, port: 53, targetPort: 8080, nodePort: 30053}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: ds-v4, namespace: demo, labels: {kubernetes.io/service-name: ds}}
        addressType: IPv4
        endpoints: [\(v4.map { "{addresses: [198.19.\($0).2]}" }.joined(separator: ", "))]
        ports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 8080}]

        """
    if let v6 {
        s += """
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: ds-v6, namespace: demo, labels: {kubernetes.io/service-name: ds}}
            addressType: IPv6
            endpoints: [\(v6.map { "{addresses: [\"2001:db8:1:\($0)::2\"]}" }.joined(separator: ", "))]
            ports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 8080}]

            """
    }
    return s
}

extension RootTests {
    /// IPv6 and dual-stack, end to end: packets over IPv6 between namespaces, through the ip6 table.
    @Suite(.serialized)
    struct IPv6Tests {
        let cidrs = ["--cluster-cidr", "198.19.0.0/16", "--cluster-cidr", "2001:db8:1::/48"]

        @Test(arguments: [false, true])
        func dualStackServiceEndToEnd(daemon: Bool) throws {
            let bed = Testbed("v6")
            defer { bed.close() }
            try bed.servedTopology(pods: 2, ipv6: true)
            let node = bed.ns("node"), client = bed.ns("client"), pod1 = bed.ns("pod1")
            let dir = try bed.makeDirectory()
            let path = dir + "/svc.yaml"
            /// Puts the manifest in place and waits until the kernel holds it.
            func write(_ text: String, wait: Bool = true) throws {
                try text.write(toFile: path, atomically: true, encoding: .utf8)
                guard wait else { return }
                if !daemon {
                    let r = try bed.svcnat(node, ["apply", "-f", path] + cidrs)
                    #expect(r.code == 0, "\(r.err)")
                    return
                }
                let deadline = Date().addingTimeInterval(10)
                while Date() < deadline, try bed.svcnat(node, ["diff", "-f", path] + cidrs).code != 0 { usleep(50_000) }
                usleep(100_000)  // the flow cleanup follows the commit
            }
            try write(dualStackManifest(v4: [1, 2], v6: [1, 2]), wait: !daemon)
            var d: Testbed.Background?
            if daemon {
                d = try bed.startDaemon(node, ["--manifests", dir, "--min-sync-period", "0"] + cidrs)
                try write(dualStackManifest(v4: [1, 2], v6: [1, 2]))
            }
            // Both tables, and what the kernel holds is exactly the plan.
            #expect(try bed.sh(node, ["nft", "list", "tables"]).contains("table ip6 svcnat"))
            #expect(try bed.svcnat(node, ["diff", "-f", path] + cidrs).code == 0)

            // From outside over IPv6: every pod answers, masqueraded to the node's pod-link address.
            let outside = try bed.client(in: client, "tcp", "2001:db8:100::30", 80, count: 60)
            #expect(outside.refused == 0 && outside.timeouts == 0, "\(outside)")
            #expect(Set(outside.answers.keys) == ["pod1", "pod2"], "\(outside)")
            #expect(Set(outside.sources.keys).isSubset(of: ["2001:db8:1:1::1", "2001:db8:1:2::1"]), "\(outside.sources)")
            // The same Service over IPv4 still works.
            let v4 = try bed.client(in: client, "tcp", "198.18.100.30", 80, count: 20)
            #expect(Set(v4.answers.keys) == ["pod1", "pod2"] && Set(v4.sources.keys).isSubset(of: ["198.19.1.1", "198.19.2.1"]), "\(v4)")
            // From a pod (inside the cluster CIDR) the source is kept; reaching itself, it is
            // masqueraded (hairpin).
            let inside = try bed.client(in: pod1, "tcp", "2001:db8:100::30", 80, count: 40)
            #expect(Set(inside.answers.keys) == ["pod1", "pod2"], "\(inside)")
            #expect(
                inside.sources["2001:db8:1:1::2"] == inside.answers["pod2"] && inside.sources["2001:db8:1:1::1"] == inside.answers["pod1"],
                "\(inside)")
            // The node port on the node's IPv6 address, and UDP to the ClusterIP.
            let nodePort = try bed.client(in: client, "tcp", "2001:db8::1", 30080, count: 30)
            #expect(Set(nodePort.answers.keys) == ["pod1", "pod2"], "\(nodePort)")
            let udp = try bed.client(in: client, "udp", "2001:db8:100::30", 53, count: 30)
            #expect(Set(udp.answers.keys) == ["pod1", "pod2"] && udp.timeouts == 0, "\(udp)")
            // A port the Service lacks is refused at once (TCP reset from the ip6 table).
            let wrong = try bed.client(in: client, "tcp", "2001:db8:100::30", 81, count: 3)
            #expect(wrong.refused == 3 && wrong.seconds < 2, "\(wrong)")
            // explain reads the ip6 table and walks the packet.
            let walked = try bed.explain(node, ["[2001:db8:100::30]:80", "--source", "2001:db8::2"])
            #expect(walked.count == 2 && walked.allSatisfy { $0.masqueraded && $0.probability == "1/2" }, "\(walked)")

            // A UDP client keeps its flow's endpoint; when that pod leaves the IPv6 slice, the
            // flow is deleted and the same socket moves to the other pod at once.
            func udpOnce(_ sport: Int) throws -> String {
                try bed.sh(client, ["python3", helper("udp_once.py"), "2001:db8:100::30", "53", String(sport)])
                    .trimmingCharacters(in: .whitespacesAndNewlines)
            }
            let first = try udpOnce(40000)
            let chosen = String(first.prefix(4)), other = chosen == "pod1" ? "pod2" : "pod1"
            #expect(first.hasPrefix("pod"), "\(first)")
            for _ in 0..<3 { #expect(try udpOnce(40000).hasPrefix(chosen)) }
            try write(dualStackManifest(v4: [1, 2], v6: [chosen == "pod1" ? 2 : 1]))
            #expect(try udpOnce(40000).hasPrefix(other), "the client must move to \(other) at once")
            #expect(Set(try bed.client(in: client, "tcp", "2001:db8:100::30", 80, count: 10).answers.keys) == [other])

            // The Service becomes IPv4 only: the ip6 table goes; IPv4 keeps serving.
            try write(dualStackManifest(v4: [1, 2], v6: nil))
            #expect(!(try bed.sh(node, ["nft", "list", "tables"]).contains("table ip6 svcnat")))
            #expect(try bed.client(in: client, "tcp", "2001:db8:100::30", 80, count: 1).answers.isEmpty)
            #expect(Set(try bed.client(in: client, "tcp", "198.18.100.30", 80, count: 20).answers.keys) == ["pod1", "pod2"])
            if let d { #expect(d.log().contains("sync (partial"), "\(d.log())") }
        }

        /// An IPv6-only LoadBalancer with the Local policy and source ranges, and an IPv6 Service
        /// with ClientIP affinity: the ip6 table's firewall, policy and affinity chains, by packets.
        @Test func ipv6LocalPolicySourceRangesAndAffinity() throws {
            let bed = Testbed("v6pol")
            defer { bed.close() }
            try bed.servedTopology(pods: 3, ipv6: true)
            let node = bed.ns("node"), client = bed.ns("client"), pod2 = bed.ns("pod2")
            let input = try bed.writeManifest(
                """
                apiVersion: v1
                kind: Service
                metadata: {name: edge, namespace: demo}
                spec:
                  type: LoadBalancer
                  clusterIP: "2001:db8:100::60"
                  clusterIPs: ["2001:db8:100::60"]
                  externalTrafficPolicy: Local
                  loadBalancerSourceRanges: ["2001:db8::/64"]
                  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30090}]
                status: {loadBalancer: {ingress: [{ip: "2001:db8:200::9"}]}}
                ---
                apiVersion: discovery.k8s.io/v1
                kind: EndpointSlice
                metadata: {name: edge-1, namespace: demo, labels: {kubernetes.io/service-name: edge}}
                addressType: IPv6
                endpoints:
                  - {addresses: ["2001:db8:1:1::2"], nodeName: node-a}
                  - {addresses: ["2001:db8:1:2::2"], nodeName: node-b}
                ports: [{name: http, protocol: TCP, port: 8080}]
                ---
                apiVersion: v1
                kind: Service
                metadata: {name: sticky, namespace: demo}
                spec:
                  clusterIP: "2001:db8:100::20"
                  clusterIPs: ["2001:db8:100::20"]
                  sessionAffinity: ClientIP
                  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
                  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
                ---
                apiVersion: discovery.k8s.io/v1
                kind: EndpointSlice
                metadata: {name: sticky-1, namespace: demo, labels: {kubernetes.io/service-name: sticky}}
                addressType: IPv6
                endpoints: [{addresses: ["2001:db8:1:1::2"]}, {addresses: ["2001:db8:1:2::2"]}, {addresses: ["2001:db8:1:3::2"]}]
                ports: [{name: http, protocol: TCP, port: 8080}]
                """)
            let r = try bed.svcnat(node, ["apply", "-f", input, "--node-name", "node-a"] + cidrs)
            #expect(r.code == 0, "\(r.err)")

            // Local policy from outside, inside the source ranges: only this node's endpoint, and it
            // sees the client's own address.
            for (ip, port) in [("2001:db8:200::9", 80), ("2001:db8::1", 30090)] {
                let got = try bed.client(in: client, "tcp", ip, port, count: 20)
                #expect(got.answers == ["pod1": 20] && got.sources == ["2001:db8::2": 20], "[\(ip)]:\(port): \(got)")
            }
            // A pod is outside 2001:db8::/64: the load-balancer IP drops it ...
            let denied = try bed.client(in: pod2, "tcp", "2001:db8:200::9", 80, count: 2)
            #expect(denied.answers.isEmpty && denied.timeouts == 2, "\(denied)")
            #expect(try bed.explain(node, ["[2001:db8:200::9]:80", "--source", "2001:db8:1:2::2"]).map(\.fate) == ["dropped"])
            // ... while its ClusterIP reaches every endpoint.
            #expect(Set(try bed.client(in: pod2, "tcp", "2001:db8:100::60", 80, count: 40).answers.keys) == ["pod1", "pod2"])

            // Affinity: each of 12 clients keeps its endpoint; together they spread.
            let sources = (0x10..<0x1c).map { "2001:db8::\(String($0, radix: 16))" }
            for a in sources { try bed.sh(client, ["ip", "-6", "addr", "add", "\(a)/64", "dev", "eth0", "nodad"]) }
            let chosen = try bed.affinityChoices(in: client, "2001:db8:100::20", 80, sources: sources, count: 6)
            #expect(Set(chosen.values).count >= 2, "\(chosen)")
        }
    }
}
