import Foundation
import Testing

extension RootTests {
    /// Stale UDP conntrack entries: a client that keeps its socket keeps its flow's NAT decision,
    /// so svcnat deletes the flows a change made wrong (kube-proxy issue 139628 shows the harm).
    @Suite(.serialized)
    struct ConntrackTests {
        func udp(_ bed: Testbed, _ ns: String, sport: Int, ip: String = "198.18.100.20") throws -> String {
            try bed.sh(ns, ["python3", helper("udp_once.py"), ip, "53", String(sport)]).trimmingCharacters(in: .whitespacesAndNewlines)
        }

        @Test(arguments: [false, true])
        func udpClientOfARemovedEndpointMovesAtOnce(daemon: Bool) throws {
            let bed = Testbed("ct")
            defer { bed.close() }
            try bed.servedTopology(pods: 2)
            let node = bed.ns("node"), client = bed.ns("client")
            let dir = try bed.makeDirectory()
            let path = dir + "/svc.yaml"
            func set(_ pods: [Int]) throws {
                try write(serviceManifest(pods: pods))
            }
            /// Puts the manifest in place and waits until the kernel holds it (the daemon applies it;
            /// otherwise `apply` does).
            func write(_ text: String) throws {
                try text.write(toFile: path, atomically: true, encoding: .utf8)
                if !daemon { #expect(try bed.svcnat(node, ["apply", "-f", path]).code == 0); return }
                let deadline = Date().addingTimeInterval(10)
                while Date() < deadline, try bed.svcnat(node, ["diff", "-f", path]).code != 0 { usleep(50_000) }
                usleep(100_000)  // the flow cleanup follows the commit
            }
            var d: Testbed.Background?
            try set([1, 2])
            if daemon {
                d = try bed.startDaemon(node, ["--manifests", dir, "--min-sync-period", "0"])
                try set([1, 2])
            }
            // One client, one source port: its flow is DNATed to one pod and stays there.
            let first = try udp(bed, client, sport: 40000)
            #expect(first.hasPrefix("pod"), "\(first)")
            let chosen = String(first.prefix(4)), other = chosen == "pod1" ? "pod2" : "pod1"
            for _ in 0..<3 { #expect(try udp(bed, client, sport: 40000).hasPrefix(chosen)) }
            // Its pod leaves the endpoints (it still runs, so a stale flow would still answer).
            try set([chosen == "pod1" ? 2 : 1])
            let after = try udp(bed, client, sport: 40000)
            #expect(after.hasPrefix(other), "the same client socket must move to \(other) at once, got \(after)")

            // A frontend that had no endpoints (here: no Service yet) leaves the client's flow
            // un-NATed (the node just routes it on). When endpoints come, that flow is deleted and
            // the client's next datagram reaches a pod.
            try write("")
            #expect(try udp(bed, client, sport: 40002) == "timeout")
            try set([1])
            #expect(try udp(bed, client, sport: 40002).hasPrefix("pod1"))
            if let d { #expect(d.log().contains("stale UDP flows deleted"), "\(d.log())") }
        }
    }
}
