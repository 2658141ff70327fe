import Foundation
import Testing

extension RootTests.DaemonTests {
    /// NodePort Service demo/web on pods 198.19.<i>.2; `extra` goes into its spec, `node` names
    /// each pod's node.
    func nodePortManifest(pods: [Int], extra: String = "", node: (Int) -> String? = { _ in nil }) -> String {
        var s = """
            apiVersion: v1
            kind: Service
            metadata: {name: web, namespace: demo}
            spec:
              type: NodePort
              clusterIP: 198.18.100.20
              selector: {app: web}
              ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}]
              \(extra)

            """
        for i in pods { s += readyPod("web-\(i)", i, labels: "{app: web}", node: node(i)) }
        return s
    }

    /// 600 TCP connections from the client to each frontend reach exactly pods 2, 3 and 4,
    /// with a chi-square below the p = 0.001 bound for 2 degrees of freedom.
    func expectEvenSpreadOverPods234(_ bed: Testbed, _ frontends: [(String, Int)]) throws {
        for (ip, port) in frontends {
            let r = try bed.client(in: bed.ns("client"), "tcp", ip, port, count: 600)
            #expect(r.refused == 0 && r.timeouts == 0, "\(ip):\(port) \(r)")
            #expect(Set(r.answers.keys) == ["pod2", "pod3", "pod4"], "\(ip):\(port) \(r.answers)")
            let chi = chiSquare(["pod2", "pod3", "pod4"].map { r.answers[$0] ?? 0 })
            #expect(chi < 13.82, "\(ip):\(port) spread \(r.answers) has chi-square \(chi)")
        }
    }

    /// Partial syncs move endpoints between the slots of the endpoint map (a removed endpoint's
    /// slot is reused, the map shrinks and grows). The spread must stay even through every
    /// frontend: 600 connections over 3 endpoints (200 each) by the ClusterIP and the NodePort,
    /// chi-square below the p = 0.001 bound.
    @Test func theSpreadStaysEvenAfterPartialSyncsMoveEndpointSlots() throws {
        let bed = Testbed("slots")
        defer { bed.close() }
        try bed.servedTopology(pods: 4)
        let n = bed.ns("node")
        let dir = try bed.makeDirectory()
        try write(dir + "/web.yaml", nodePortManifest(pods: [1, 2, 3]))
        let daemon = try bed.startDaemon(n, ["--manifests", dir, "--min-sync-period", "0", "--cluster-cidr", "198.19.0.0/16"])
        #expect(within(5) { ruleset(bed, n).contains("198.19.3.2") } != nil, "\(daemon.log())")
        for pods in [[1, 3], [1, 3, 4], [3, 4], [2, 3, 4]] {
            try write(dir + "/web.yaml", nodePortManifest(pods: pods))
            let last = pods.last!
            #expect(
                try within(5) { try bed.svcnat(n, ["diff", "-f", dir + "/web.yaml", "--cluster-cidr", "198.19.0.0/16"]).code == 0 } != nil)
            #expect(ruleset(bed, n).contains("198.19.\(last).2"))
        }
        #expect(daemon.log().components(separatedBy: "sync (partial").count - 1 >= 4, "\(daemon.log())")
        try expectEvenSpreadOverPods234(bed, [("198.18.100.20", 80), ("198.18.0.1", 30080)])
    }
}

extension RootTests.DaemonTests {
    /// The same after partial syncs of the IPv6 slice of a dual-stack Service: its ClusterIP and
    /// its node port on the node's IPv6 address.
    @Test func theIPv6SpreadStaysEvenAfterPartialSyncsMoveEndpointSlots() throws {
        let bed = Testbed("slots6")
        defer { bed.close() }
        try bed.servedTopology(pods: 4, ipv6: true)
        let n = bed.ns("node")
        let dir = try bed.makeDirectory()
        try write(dir + "/ds.yaml", dualStackManifest(v4: [1], v6: [1, 2, 3]))
        let daemon = try bed.startDaemon(n, ["--manifests", dir, "--min-sync-period", "0"])
        #expect(within(5) { ruleset(bed, n).contains("2001:db8:1:3::2") } != nil, "\(daemon.log())")
        for pods in [[1, 3], [1, 3, 4], [3, 4], [2, 3, 4]] {
            try write(dir + "/ds.yaml", dualStackManifest(v4: [1], v6: pods))
            #expect(try within(5) { try bed.svcnat(n, ["diff", "-f", dir + "/ds.yaml"]).code == 0 } != nil)
        }
        #expect(daemon.log().components(separatedBy: "sync (partial").count - 1 >= 4, "\(daemon.log())")
        try expectEvenSpreadOverPods234(bed, [("2001:db8:100::30", 80), ("2001:db8::1", 30080)])
    }
}

extension RootTests.DaemonTests {
    /// Pods 1 to 5 behind one NodePort Service; pods 2, 3 and 4 are on this node (node-a), 1
    /// and 5 elsewhere. `extra` goes into the Service's spec.
    func localManifest(pods: [Int], extra: String) -> String {
        nodePortManifest(pods: pods, extra: extra) { [2, 3, 4].contains($0) ? "node-a" : "node-b" }
    }

    /// Partial syncs that move endpoint slots, then the Service's spread measured.
    func movedSlots(_ bed: Testbed, extra: String, after: [[Int]]) throws -> Testbed.Background {
        try bed.servedTopology(pods: 5)
        let n = bed.ns("node")
        let dir = try bed.makeDirectory()
        try write(dir + "/web.yaml", localManifest(pods: [1, 2, 3, 4, 5], extra: extra))
        let daemon = try bed.startDaemon(
            n, ["--manifests", dir, "--min-sync-period", "0", "--cluster-cidr", "198.19.0.0/16", "--node-name", "node-a"])
        #expect(within(5) { ruleset(bed, n).contains("198.19.5.2") } != nil, "\(daemon.log())")
        for pods in after {
            try write(dir + "/web.yaml", localManifest(pods: pods, extra: extra))
            #expect(try within(5) { try bed.svcnat(n, ["diff", "-f", dir + "/web.yaml", "--node-name", "node-a"]).code == 0 } != nil)
        }
        #expect(daemon.log().components(separatedBy: "sync (partial").count - 1 >= after.count, "\(daemon.log())")
        return daemon
    }

    /// externalTrafficPolicy Local: through the node port, only this node's endpoints, evenly
    /// (600 connections over pods 2, 3 and 4, chi-square below the p = 0.001 bound), after
    /// partial syncs moved them between slots; the ClusterIP still reaches all the others too.
    @Test func theLocalSubsetSpreadsEvenlyAfterPartialSyncs() throws {
        let bed = Testbed("slotslocal")
        defer { bed.close() }
        let daemon = try movedSlots(
            bed, extra: "externalTrafficPolicy: Local", after: [[1, 3, 5], [1, 3, 4, 5], [3, 4, 5], [1, 2, 3, 4, 5]])
        try expectEvenSpreadOverPods234(bed, [("198.18.0.1", 30080)])
        let all = try bed.client(in: bed.ns("node"), "tcp", "198.18.100.20", 80, count: 100)
        #expect(Set(all.answers.keys) == ["pod1", "pod2", "pod3", "pod4", "pod5"], "\(all.answers) \(daemon.log())")
    }

    /// ClientIP session affinity after partial syncs: 600 clients (one source address each)
    /// make two connections each; each client's both reach one pod, and the clients spread
    /// evenly over pods 2, 3 and 4 (200 each expected, chi-square below the p = 0.001 bound).
    @Test func affinityClientsSpreadEvenlyAfterPartialSyncs() throws {
        let bed = Testbed("slotsaff")
        defer { bed.close() }
        _ = try movedSlots(bed, extra: "sessionAffinity: ClientIP", after: [[1, 3], [1, 3, 4], [3, 4], [2, 3, 4]])
        let client = bed.ns("client")
        // 600 source addresses on the client, 198.18.1.1 to 198.18.3.200; replies come back by
        // the node's default route.
        var batch = ""
        for i in 0..<600 { batch += "addr add 198.18.\(1 + i / 200).\(1 + i % 200)/32 dev eth0\n" }
        _ = try run(["ip", "-n", client, "-batch", "-"], stdin: batch)
        let out = try bed.sh(client, ["python3", helper("sources_spread.py"), "198.18.100.20", "80", "2", "1", "600"])
        struct Spread: Decodable {
            var choices: [String: String]
            var refused: Int
            var timeouts: Int
        }
        let r = try JSONDecoder().decode(Spread.self, from: Data(out.utf8))
        #expect(r.refused == 0 && r.timeouts == 0 && r.choices.count == 600, "\(r.refused) refused, \(r.timeouts) timeouts")
        var per: [String: Int] = [:]
        for (_, pod) in r.choices { per[pod, default: 0] += 1 }
        #expect(Set(per.keys) == ["pod2", "pod3", "pod4"], "\(per)")  // no "mixed": every client kept its pod
        let chi = chiSquare(["pod2", "pod3", "pod4"].map { per[$0] ?? 0 })
        #expect(chi < 13.82, "clients per pod \(per) have chi-square \(chi)")
    }
}
