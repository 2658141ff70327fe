import Foundation
import Testing

/// Real TCP and UDP through svcnat's rules: a node namespace, pod namespaces running servers
/// that answer with their name and the source address they saw, and an external client.
@Suite(.serialized, .enabled(if: isRoot, "\(rootOnly)"))
struct TrafficTests {
    let cidr = ["--cluster-cidr", "198.19.0.0/16"]
    /// chi-square critical value for 2 degrees of freedom at p = 0.001.
    let chi2Critical2 = 13.82

    @Test(arguments: ["map", "cascade"])
    func clusterIPSpreadsOverEveryPodFromNodeClientAndPods(selection: String) throws {
        let bed = Testbed("spread")
        defer { bed.close() }
        try bed.topology(pods: 3)
        for i in 1...3 { try bed.startServer(pod: i, port: 8080) }
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
        try bed.topology(pods: 3)
        for i in 1...3 { try bed.startServer(pod: i, port: 8080) }
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

    @Test func noEndpointsRefusesAtOnce() throws {
        let bed = Testbed("noeps")
        defer { bed.close() }
        try bed.topology(pods: 1)
        try bed.startServer(pod: 1, port: 8080)
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
