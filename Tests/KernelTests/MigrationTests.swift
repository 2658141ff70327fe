import Foundation
import Testing

extension RootTests {
    /// Replacing a running kube-proxy without a gap in traffic (README "Replacing kube-proxy"):
    /// kube-proxy's own rules serve (its iptables mode, as iptables-nft or iptables-legacy, or
    /// its nftables table), svcnat starts beside them in its own table and on other ports,
    /// kube-proxy stops, `svcnat cleanup --kube-proxy` removes what it left, and svcnat serves
    /// alone. Held connections and new ones run through every step; none may fail. Another
    /// agent's chain and rules in the same iptables tables stay.
    @Suite(.serialized)
    struct MigrationTests {
        enum Mode: String, CaseIterable, CustomTestStringConvertible {
            case iptablesNft = "iptables-nft", iptablesLegacy = "iptables-legacy", nftables
            var testDescription: String { rawValue }
        }

        let flags = ["--cluster-cidr", "198.19.0.0/16", "--node-name", "node1"]

        /// NodePort Service demo/web on pods 1 and 2.
        static let manifest = RootTests.DaemonTests().nodePortManifest(pods: [1, 2])

        /// What kube-proxy's rules look like in this mode, as the node's own tools list them.
        func kubeProxyObjects(_ bed: Testbed, _ mode: Mode) throws -> [String] {
            let node = bed.ns("node")
            switch mode {
            case .nftables:
                return try bed.sh(node, ["nft", "list", "tables"]).split(separator: "\n").map(String.init).filter {
                    $0.hasSuffix(" kube-proxy")
                }
            case .iptablesNft, .iptablesLegacy:
                let save = try bed.sh(node, ["\(mode == .iptablesNft ? "iptables-nft" : "iptables-legacy")-save"])
                return save.split(separator: "\n").map(String.init).filter { $0.contains("KUBE-") }
            }
        }

        @Test(arguments: Mode.allCases)
        func noConnectionFailsThroughTheSwap(_ mode: Mode) throws {
            let bed = Testbed("migrate")
            defer { bed.close() }
            try bed.servedTopology(pods: 2)
            let node = bed.ns("node"), client = bed.ns("client")
            let dir = try bed.makeDirectory()
            try Self.manifest.write(toFile: dir + "/web.yaml", atomically: true, encoding: .utf8)

            // kube-proxy's rules, rendered by svcnat from the same Services: its iptables
            // mode's dump, or its nftables table.
            let save = mode == .iptablesNft ? "iptables-nft" : "iptables-legacy"
            switch mode {
            case .nftables:
                let r = try bed.svcnat(node, ["apply", "-f", dir, "--table", "kube-proxy"] + flags)
                #expect(r.code == 0, "\(r.err)")
            case .iptablesNft, .iptablesLegacy:
                let dump = try bed.svcnat(node, ["apply", "--dry-run", "--format", "iptables", "-f", dir] + flags)
                #expect(dump.code == 0, "\(dump.err)")
                try bed.sh(node, ["\(save)-restore"], stdin: dump.out)
                // Another agent's chain and the jump to it, in the same tables: they stay.
                try bed.sh(node, [save, "-t", "filter", "-N", "OTHER-AGENT"])
                try bed.sh(node, [save, "-t", "filter", "-A", "OTHER-AGENT", "-s", "198.18.50.0/24", "-j", "DROP"])
                try bed.sh(node, [save, "-t", "filter", "-I", "FORWARD", "-j", "OTHER-AGENT"])
                try bed.sh(node, [save, "-t", "nat", "-A", "POSTROUTING", "-s", "198.18.51.0/24", "-j", "MASQUERADE"])
            }
            #expect(!(try kubeProxyObjects(bed, mode)).isEmpty)
            // kube-proxy alone serves the ClusterIP and the node port.
            let before = try bed.client(in: client, "tcp", "198.18.100.20", 80, count: 20)
            #expect(before.answers.values.reduce(0, +) == 20 && Set(before.answers.keys) == ["pod1", "pod2"], "\(before)")

            // Held connections and new ones, to the ClusterIP and the node port, through every step.
            let seconds = 14
            let held = try bed.startProcess(client, ["python3", helper("held_client.py"), "198.18.100.20", "80", "20", String(seconds)])
            let heldNodePort = try bed.startProcess(
                client, ["python3", helper("held_client.py"), "198.18.0.1", "30080", "10", String(seconds)])
            let loop = try bed.startProcess(client, ["python3", helper("loop_client.py"), "198.18.100.20", "80", String(seconds)])
            let loopNodePort = try bed.startProcess(client, ["python3", helper("loop_client.py"), "198.18.0.1", "30080", String(seconds)])
            usleep(2_000_000)

            // 1. svcnat starts beside kube-proxy, in its own table, on other ports than 10249/10256.
            let daemon = try bed.startDaemon(
                node,
                ["--manifests", dir, "--metrics-bind-address", "127.0.0.1:20249", "--healthz-bind-address", "127.0.0.1:20256"] + flags)
            let deadline = Date().addingTimeInterval(10)
            while !daemon.log().contains("sync (full") && Date() < deadline { usleep(50_000) }
            #expect(daemon.log().contains("sync (full"), "\(daemon.log())")
            usleep(2_000_000)
            // 2. kube-proxy stops: its rules stay behind, as a stopped kube-proxy leaves them.
            usleep(1_000_000)
            // 3. What it left goes, and nothing else.
            let cleanup = try bed.svcnat(node, ["cleanup", "--kube-proxy"])
            #expect(cleanup.code == 0, "\(cleanup.err)")
            #expect(cleanup.out.contains("removed what kube-proxy left"), "\(cleanup.out)")
            let left = try kubeProxyObjects(bed, mode)
            #expect(left.isEmpty, "\(left)")
            let tables = try bed.sh(node, ["nft", "list", "tables"])
            #expect(tables.contains("table ip svcnat"), "\(tables)")
            if mode != .nftables {
                let rest = try bed.sh(node, ["\(save)-save"])
                #expect(rest.contains("-A FORWARD -j OTHER-AGENT") && rest.contains("-A OTHER-AGENT -s 198.18.50.0/24 -j DROP"), "\(rest)")
                #expect(rest.contains("-A POSTROUTING -s 198.18.51.0/24 -j MASQUERADE"), "\(rest)")
            }
            // A second run finds nothing to remove.
            let again = try bed.svcnat(node, ["cleanup", "--kube-proxy"])
            #expect(again.code == 0 && again.out.contains("nothing of kube-proxy's is left"), "\(again.out)\(again.err)")
            // 4. svcnat alone serves, until the clients end.
            for p in [held, heldNodePort, loop, loopNodePort] { _ = p.waitExit(seconds: Double(seconds) + 10) }
            struct Held: Decodable { var held: Int; var broken: Int; var pings: Int; var answers: [String: Int] }
            struct Loop: Decodable { var made: Int; var failed: Int; var answers: [String: Int] }
            let h = try #require(try? JSONDecoder().decode(Held.self, from: Data(held.log().utf8)), "\(held.log())")
            let hn = try #require(try? JSONDecoder().decode(Held.self, from: Data(heldNodePort.log().utf8)), "\(heldNodePort.log())")
            let l = try #require(try? JSONDecoder().decode(Loop.self, from: Data(loop.log().utf8)), "\(loop.log())")
            let ln = try #require(try? JSONDecoder().decode(Loop.self, from: Data(loopNodePort.log().utf8)), "\(loopNodePort.log())")
            print(
                "migration (\(mode.rawValue)): held \(h.held + hn.held) connections, broken \(h.broken + hn.broken), pings \(h.pings + hn.pings); new connections made \(l.made + ln.made), failed \(l.failed + ln.failed)"
            )
            #expect(h.held == 20 && h.broken == 0 && hn.held == 10 && hn.broken == 0, "\(held.log())\(heldNodePort.log())")
            #expect(l.failed == 0 && ln.failed == 0, "\(loop.log())\(loopNodePort.log())")
            #expect(l.made > 100 && ln.made > 100 && Set(l.answers.keys) == ["pod1", "pod2"], "\(loop.log())\(loopNodePort.log())")
            // Held connections pinged all along: each of them about every 0.2 s for the whole run.
            #expect(h.pings > 20 * seconds, "\(held.log())")
            let after = try bed.client(in: client, "tcp", "198.18.0.1", 30080, count: 20)
            #expect(after.answers.values.reduce(0, +) == 20, "\(after)")
            daemon.signal(SIGTERM)
            _ = daemon.waitExit(seconds: 5)
        }
    }
}
