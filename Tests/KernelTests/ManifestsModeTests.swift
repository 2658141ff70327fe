import Foundation
import Testing

extension RootTests {
    /// Plain manifests (a Deployment, Services with named target ports and no clusterIP or
    /// nodePort, and the Pods) programmed with `--allocate` in a namespace test bed: the same
    /// addresses on every run, traffic to the allocated ClusterIP and node port reaching the
    /// pods, and the table remembering the flags it was applied with.
    @Suite(.serialized)
    struct ManifestsModeTests {
        let plain = URL(fileURLWithPath: examples).deletingLastPathComponent().appendingPathComponent("examples-plain").path
        let flags = ["--allocate", "--service-cidr", "198.18.100.0/24", "--cluster-cidr", "198.19.0.0/16"]

        /// "Service shop/web: clusterIP 198.18.100.31 allocated" -> ["shop/web clusterIP": "198.18.100.31"].
        func allocations(_ err: String) -> [String: String] {
            var out: [String: String] = [:]
            for line in err.split(separator: "\n") where line.hasSuffix(" allocated") {
                let w = line.split(separator: " ")  // svcnat: Service shop/web: clusterIP X allocated
                out["\(w[2].dropLast()) \(w[3])"] = String(w[4])
            }
            return out
        }

        @Test func allocatedAddressesAreStableAndCarryTraffic() throws {
            let bed = Testbed("alloc")
            defer { bed.close() }
            try bed.servedTopology(pods: 2)
            let node = bed.ns("node"), client = bed.ns("client")
            let dry = try bed.svcnat(node, ["apply", "-f", plain, "--dry-run"] + flags)
            let applied = try bed.svcnat(node, ["apply", "-f", plain] + flags)
            #expect(dry.code == 0 && applied.code == 0, "\(dry.err)\(applied.err)")
            let given = allocations(applied.err)
            #expect(given == allocations(dry.err) && given.count == 3, "\(applied.err)")
            let clusterIP = try #require(given["shop/web clusterIP"])
            let nodePort = try #require(given["shop/web-public ports[0].nodePort"].flatMap { Int($0) })

            // To the allocated ClusterIP (from the node) and the allocated node port (from the
            // external client): both pods answer, through the named target port 8080.
            let viaClusterIP = try bed.client(in: node, "tcp", clusterIP, 80, count: 60)
            #expect(viaClusterIP.refused == 0 && viaClusterIP.timeouts == 0 && Set(viaClusterIP.answers.keys) == ["pod1", "pod2"])
            let viaNodePort = try bed.client(in: client, "tcp", "198.18.0.1", nodePort, count: 60)
            #expect(viaNodePort.refused == 0 && viaNodePort.timeouts == 0 && Set(viaNodePort.answers.keys) == ["pod1", "pod2"])

            // show marks what was allocated, explain finds the Service by name.
            let show = try bed.svcnat(node, ["show"])
            #expect(show.out.contains("frontends: \(clusterIP):80 (allocated)"), "\(show.out)")
            #expect(
                show.out.contains("# applied with: --cluster-cidr 198.19.0.0/16 --service-cidr 198.18.100.0/24 --endpoint-selection map"))
            let explained = try bed.svcnat(node, ["explain", "shop/web-public"])
            #expect(
                explained.code == 0 && explained.out.contains("service-nodeports: node port \(nodePort) (allocated) -> goto ext-"),
                "\(explained.out)")

            // The table remembers its flags: a diff without them changes nothing; with other
            // ones it says so.
            let same = try bed.svcnat(node, ["diff", "-f", plain, "--allocate", "--service-cidr", "198.18.100.0/24"])
            #expect(same.code == 0 && same.out.isEmpty, "\(same.out)\(same.err)")
            let other = try bed.svcnat(
                node, ["diff", "-f", plain, "--allocate", "--service-cidr", "198.18.100.0/24", "--cluster-cidr", "198.19.0.0/17"])
            #expect(other.code == 1, "\(other.err)")
            #expect(
                other.err.contains(
                    "svcnat: note: the table was applied with --cluster-cidr 198.19.0.0/16; this uses --cluster-cidr 198.19.0.0/17 as given"
                ),
                "\(other.err)")
            // Applied again from the kernel's state: the same addresses, nothing to change.
            let again = try bed.svcnat(node, ["apply", "-f", plain] + flags)
            #expect(allocations(again.err) == given && again.out.contains("no changes, the kernel already matches"), "\(again.out)")
            // A Service added later whose first place is shop/web's (shop/api hashes there, and
            // sorts first) gets the next one: what the kernel holds stays its Service's.
            let api = try bed.writeManifest(
                "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec: {ports: [{port: 80}]}\n")
            let added = try bed.svcnat(node, ["apply", "-f", plain, "-f", api] + flags)
            #expect(added.code == 0, "\(added.err)")
            let now = allocations(added.err)
            #expect(now["shop/web clusterIP"] == clusterIP && now["shop/api clusterIP"] != clusterIP, "\(added.err)")
        }

        @Test func explainSaysWhatTheRulesDoWithWhatMatchesNoServicePort() throws {
            let bed = Testbed("explain-miss")
            defer { bed.close() }
            try bed.topology(pods: 0)
            let node = bed.ns("node")
            let applied = try bed.svcnat(node, ["apply", "-f", plain] + flags)
            #expect(applied.code == 0, "\(applied.err)")
            let clusterIP = try #require(allocations(applied.err)["shop/web clusterIP"])
            let wrongPort = try bed.svcnat(node, ["explain", "\(clusterIP):81"])
            #expect(wrongPort.code == 1)
            #expect(
                wrongPort.err.contains(
                    "\(clusterIP) is the ClusterIP of Service shop/web, which has no port 81/TCP: new connections are rejected"),
                "\(wrongPort.err)")
            let unused = try bed.svcnat(node, ["explain", "198.18.100.250:80"])
            #expect(unused.code == 1)
            #expect(
                unused.err.contains(
                    "198.18.100.250 is in the Service CIDR 198.18.100.0/24, and no Service has it: packets to it are dropped"),
                "\(unused.err)")
            let headless = try bed.writeManifest(
                """
                apiVersion: v1
                kind: Service
                metadata: {name: db, namespace: shop}
                spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}
                """)
            let dns = try bed.svcnat(node, ["explain", "shop/db", "-f", headless])
            #expect(dns.code == 1 && dns.err.contains("Service shop/db is headless (clusterIP: None): no proxy programs it"), "\(dns.err)")
            // The header names the map that really sends each frontend, not both.
            let ok = try bed.svcnat(node, ["explain", "shop/web"])
            #expect(ok.out.contains("├─ service-ips: \(clusterIP):80 (allocated) -> goto svc-shop/web/tcp/http"), "\(ok.out)")
            #expect(!ok.out.contains("service-nodeports"), "\(ok.out)")
        }

        /// The daemon allocates by the same rule as apply, and a Service added later gets its
        /// address in a partial sync; what a new file leaves a Service without is logged.
        @Test func theDaemonAllocatesAsApplyDoes() throws {
            let bed = Testbed("alloc-run")
            defer { bed.close() }
            let node = try bed.addNamespace("node")
            let dry = try bed.svcnat(node, ["apply", "-f", plain, "--dry-run"] + flags)
            let given = allocations(dry.err)
            let dir = try bed.makeDirectory()
            for f in ["app.yaml", "pods.yaml"] { try FileManager.default.copyItem(atPath: plain + "/" + f, toPath: dir + "/" + f) }
            let daemon = try bed.startDaemon(node, ["--manifests", dir, "--min-sync-period", "100ms"] + flags)
            func ruleset() -> String { (try? bed.sh(node, ["nft", "list", "ruleset"])) ?? "" }
            func within(_ seconds: Double, _ check: () -> Bool) -> Bool {
                let end = Date().addingTimeInterval(seconds)
                while Date() < end { if check() { return true }; usleep(50_000) }
                return false
            }
            let clusterIP = try #require(given["shop/web clusterIP"])
            #expect(within(5) { ruleset().contains("\(clusterIP) . tcp . 80 comment \"shop/web:http (allocated)\"") }, "\(daemon.log())")
            try """
            apiVersion: v1
            kind: Service
            metadata: {name: api, namespace: shop}
            spec: {selector: {app: api}, ports: [{port: 80}]}
            """.write(toFile: dir + "/api.yaml", atomically: true, encoding: .utf8)
            #expect(within(5) { ruleset().contains("comment \"shop/api (allocated)\"") }, "\(daemon.log())")
            #expect(
                within(2) {
                    daemon.log().contains(
                        "\(dir)/api.yaml: Service shop/api: spec.selector app=api matches no Pod in namespace shop")
                }, "\(daemon.log())")
            #expect(daemon.log().contains("sync (partial, manifests changed: api.yaml)"), "\(daemon.log())")
            #expect(daemon.log().contains("skipped 3 objects of 3 kinds not used by svcnat; -v lists them"), "\(daemon.log())")
            // The earlier Services kept their addresses.
            #expect(ruleset().contains("\(clusterIP) . tcp . 80 comment \"shop/web:http (allocated)\""))
        }
    }
}
