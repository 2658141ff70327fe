import Foundation
import Testing

extension RootTests {
    /// `svcnat run --manifests DIR` in a namespace: file changes, bad files, drift, signals, metrics.
    @Suite(.serialized)
    struct DaemonTests {

        func ruleset(_ bed: Testbed, _ ns: String) -> String { (try? bed.sh(ns, ["nft", "list", "ruleset"])) ?? "" }

        func http(_ bed: Testbed, _ ns: String, _ url: String) throws -> (Int, String) {
            let out = try bed.sh(ns, ["python3", helper("fetch.py"), url])
            let lines = out.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false)
            return (Int(lines[0]) ?? 0, lines.count > 1 ? String(lines[1]) : "")
        }

        /// A node namespace whose manifest folder holds Service demo/web on `pods`, and the daemon
        /// on it, once the kernel holds the Service.
        func webDaemon(_ bed: Testbed, pods: [Int], _ extra: [String] = ["--min-sync-period", "100ms"]) throws
            -> (ns: String, dir: String, daemon: Testbed.Background)
        {
            let n = try bed.addNamespace("node")
            let dir = try bed.makeDirectory()
            try write(dir + "/web.yaml", serviceManifest(name: "web", pods: pods))
            let daemon = try bed.startDaemon(n, ["--manifests", dir] + extra)
            #expect(within(5) { ruleset(bed, n).contains("198.19.\(pods.last!).2") } != nil, "\(daemon.log())")
            return (n, dir, daemon)
        }

        func write(_ path: String, _ text: String) throws {
            // Write then rename, as editors and kubectl-style tools do.
            try text.write(toFile: path + ".tmp", atomically: false, encoding: .utf8)
            #expect(rename(path + ".tmp", path) == 0)
        }

        @Test func followsNewEditedAndDeletedFiles() throws {
            let bed = Testbed("dfiles")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            let dir = try bed.makeDirectory()
            try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1, 2]))
            let daemon = try bed.startDaemon(n, ["--manifests", dir, "--min-sync-period", "100ms"])
            #expect(within(5) { ruleset(bed, n).contains("svc-demo/web/tcp/http") } != nil, "\(daemon.log())")

            // A new file.
            try write(dir + "/api.yaml", serviceManifest(name: "api", ip: "198.18.100.21", pods: [3]))
            #expect(within(3) { ruleset(bed, n).contains("svc-demo/api/tcp/http") } != nil)
            // An edited file: pod 2 goes, pod 4 comes.
            try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1, 4]))
            #expect(
                within(3) {
                    let r = ruleset(bed, n); return r.contains("198.19.4.2") && !r.contains("198.19.2.2")
                } != nil)
            // A file in a new subfolder.
            try FileManager.default.createDirectory(atPath: dir + "/more", withIntermediateDirectories: true)
            try write(dir + "/more/db.yaml", serviceManifest(name: "db", ip: "198.18.100.22", pods: [5]))
            #expect(within(3) { ruleset(bed, n).contains("svc-demo/db/tcp/http") } != nil)
            // A deleted file.
            try FileManager.default.removeItem(atPath: dir + "/api.yaml")
            #expect(within(3) { !ruleset(bed, n).contains("demo/api") } != nil)
            // What the daemon converged to is what a one-shot apply of the folder wants: nothing to
            // change (endpoint map slots depend on history, so compare through svcnat's planner).
            let diff = try bed.svcnat(n, ["diff", "-f", dir])
            #expect(diff.code == 0, "\(diff.out)")
            // Each sync line names the files that made it.
            #expect(daemon.log().contains("sync (partial, manifests changed: api.yaml)"), "\(daemon.log())")
        }

        /// An empty folder never wipes the table by accident: `apply` refuses it (exit 2) and the
        /// daemon holds its syncs, both leaving the kernel byte-identical, until the folder holds
        /// manifests again; `--allow-empty` is the way to mean it.
        @Test func anEmptyFolderOrStandardInputLeavesTheRulesAsTheyWere() throws {
            let bed = Testbed("dempty")
            defer { bed.close() }
            let (n, dir, daemon) = try webDaemon(bed, pods: [1, 2])
            let before = try bed.sh(n, ["nft", "list", "ruleset"])
            let empty = try bed.makeDirectory()
            try "not a manifest\n".write(toFile: empty + "/notes.txt", atomically: true, encoding: .utf8)
            for (args, stdin) in [(["apply", "-f", empty], nil), (["apply", "-f", "-"], ""), (["apply", "-f", "-"], "\n  \n")] {
                let r = try bed.svcnat(n, args, stdin: stdin)
                #expect(r.code == 2, "\(args) \(r.out) \(r.err)")
                let input = args.last == "-" ? "standard input" : empty
                #expect(
                    r.err.contains(
                        "no manifest in \(input) (no *.yaml, *.yml or *.json file, or empty standard input); svcnat's tables hold 1 "
                            + "Services now, and applying nothing would remove them all. Give --allow-empty"), "\(r.err)")
                #expect(try bed.sh(n, ["nft", "list", "ruleset"]) == before)
            }
            // The daemon's folder is emptied: it holds its syncs and says so.
            try FileManager.default.removeItem(atPath: dir + "/web.yaml")
            #expect(within(5) { daemon.log().contains("sync held: \(dir) holds no manifest file") } != nil, "\(daemon.log())")
            Thread.sleep(forTimeInterval: 0.5)
            #expect(try bed.sh(n, ["nft", "list", "ruleset"]) == before)
            let (status, body) = try http(bed, n, "http://127.0.0.1:10256/healthz")
            #expect(status == 503 && body.contains("source stale: manifests: \(dir) holds no manifest file"), "\(body)")
            // Manifests again: applied in full.
            try write(dir + "/api.yaml", serviceManifest(name: "api", ip: "198.18.100.21", pods: [3]))
            #expect(
                within(5) {
                    let r = ruleset(bed, n); return r.contains("svc-demo/api/tcp/http") && !r.contains("svc-demo/web/tcp/http")
                } != nil, "\(daemon.log())")
            #expect(daemon.log().contains("the folder holds manifests again: syncing in full"))
            #expect(try within(3) { try http(bed, n, "http://127.0.0.1:10256/healthz").0 == 200 } != nil)
            // --allow-empty means it (with the daemon stopped, which would repair its table).
            daemon.signal(SIGTERM)
            #expect(daemon.waitExit(seconds: 10) == 0)
            let wiped = try bed.svcnat(n, ["apply", "-f", empty, "--allow-empty"])
            #expect(wiped.code == 0, "\(wiped.err)")
            #expect(!ruleset(bed, n).contains("svc-demo/"))
        }

        /// `run --manifests` on a folder as the kubelet mounts a ConfigMap: each object is read
        /// once through its link, and the kubelet's update (a new `..2026_...` folder, `..data`
        /// re-pointed by rename, a link for the new key, the old folder removed) is applied.
        @Test func aConfigMapMountedFolderIsFollowedThroughItsDataLink() throws {
            let bed = Testbed("dcm")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            let dir = try bed.makeDirectory()
            let fm = FileManager.default
            try fm.createDirectory(atPath: dir + "/..2026_12_02_a", withIntermediateDirectories: true)
            try serviceManifest(name: "web", pods: [1, 2]).write(
                toFile: dir + "/..2026_12_02_a/web.yaml", atomically: true, encoding: .utf8)
            try fm.createSymbolicLink(atPath: dir + "/..data", withDestinationPath: "..2026_12_02_a")
            try fm.createSymbolicLink(atPath: dir + "/web.yaml", withDestinationPath: "..data/web.yaml")
            let daemon = try bed.startDaemon(n, ["--manifests", dir, "--min-sync-period", "100ms"])
            #expect(within(5) { ruleset(bed, n).contains("198.19.2.2") } != nil, "\(daemon.log())")
            #expect(try bed.svcnat(n, ["apply", "-f", dir, "--dry-run"]).code == 0)

            try fm.createDirectory(atPath: dir + "/..2026_12_02_b", withIntermediateDirectories: true)
            try serviceManifest(name: "web", pods: [1, 3]).write(
                toFile: dir + "/..2026_12_02_b/web.yaml", atomically: true, encoding: .utf8)
            try serviceManifest(name: "api", ip: "198.18.100.21", pods: [4]).write(
                toFile: dir + "/..2026_12_02_b/api.yaml", atomically: true, encoding: .utf8)
            try fm.createSymbolicLink(atPath: dir + "/..data_tmp", withDestinationPath: "..2026_12_02_b")
            #expect(rename(dir + "/..data_tmp", dir + "/..data") == 0)
            #expect(
                within(5) {
                    let r = ruleset(bed, n); return r.contains("198.19.3.2") && !r.contains("198.19.2.2")
                } != nil, "\(daemon.log())")
            try fm.createSymbolicLink(atPath: dir + "/api.yaml", withDestinationPath: "..data/api.yaml")
            try fm.removeItem(atPath: dir + "/..2026_12_02_a")
            #expect(within(5) { ruleset(bed, n).contains("svc-demo/api/tcp/http") } != nil, "\(daemon.log())")
            #expect(!daemon.log().contains("defined twice"), "\(daemon.log())")
            #expect(try http(bed, n, "http://127.0.0.1:10256/healthz").0 == 200)
            // What the daemon converged to is what a one-shot apply of the mount wants.
            let diff = try bed.svcnat(n, ["diff", "-f", dir])
            #expect(diff.code == 0, "\(diff.out)")
        }

        @Test func badFileKeepsLastGoodStateAndShowsInHealthAndMetrics() throws {
            let bed = Testbed("dbad")
            defer { bed.close() }
            let (n, dir, daemon) = try webDaemon(bed, pods: [1, 2])
            let good = ruleset(bed, n)

            // The file turns bad: the old rules stay, health and metrics say which file and why.
            try write(
                dir + "/web.yaml", serviceManifest(name: "web", pods: [1, 3]).replacingOccurrences(of: "port: 80,", with: "port: 99999,"))
            #expect(try within(3) { try http(bed, n, "http://127.0.0.1:10256/healthz").1.contains("99999 is not a port") } != nil)
            let (status, body) = try http(bed, n, "http://127.0.0.1:10256/healthz")
            #expect(status == 200)
            #expect(body.contains("web.yaml") && body.contains("Service demo/web: spec.ports[0].port"))
            #expect(try http(bed, n, "http://127.0.0.1:10249/metrics").1.contains("svcnat_rejected_input_files 1"))
            #expect(daemon.log().contains("rejected input (its last good version stays in force): \(dir)/web.yaml"), "\(daemon.log())")
            usleep(300_000)
            #expect(ruleset(bed, n) == good)
            // Another file's change does not log the same rejection again; a file that was never
            // good is not said to have a last good version.
            try write(dir + "/new.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: new}\nspec: {ports: [{port: 0}]}\n")
            #expect(
                within(3) {
                    daemon.log().contains("rejected input (it has no good version, so nothing of it is programmed): \(dir)/new.yaml")
                } != nil, "\(daemon.log())")
            #expect(
                daemon.log().components(separatedBy: "rejected input (its last good version stays in force)").count == 2, "\(daemon.log())")
            try FileManager.default.removeItem(atPath: dir + "/new.yaml")

            // Fixed: applied, and the rejection clears.
            try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1, 3]))
            #expect(within(3) { ruleset(bed, n).contains("198.19.3.2") } != nil)
            #expect(try within(2) { try http(bed, n, "http://127.0.0.1:10249/metrics").1.contains("svcnat_rejected_input_files 0") } != nil)
        }

        @Test func repairsOutsideChangesWithinTwoSeconds() throws {
            let bed = Testbed("ddrift")
            defer { bed.close() }
            let (n, _, daemon) = try webDaemon(bed, pods: [1, 2])
            let good = ruleset(bed, n)
            for damage in [
                "flush table ip svcnat",
                // One transaction: the daemon repairs at each commit's event, so three commands
                // one after another would race its repair of the first (the chain then in use
                // again, and its deletion refused).
                "flush chain ip svcnat svc-demo/web/udp/dns\ndelete element ip svcnat service-ips { 198.18.100.20 . udp . 53 }\n"
                    + "delete chain ip svcnat svc-demo/web/udp/dns",
                "delete table ip svcnat"
            ] {
                // The change event brings the repair at once, often before `nft list` could see
                // the damage; the repair counter below shows each was seen.
                try bed.sh(n, ["nft", "-f", "-"], stdin: damage + "\n")
                let took = within(2) { ruleset(bed, n) == good }
                #expect(took != nil, "not repaired within 2 s after \(damage): \(daemon.log())")
            }
            #expect(daemon.log().contains("drift"))
            #expect(try http(bed, n, "http://127.0.0.1:10249/metrics").1.contains("svcnat_drift_repairs_total 3"))
        }

        @Test func sigtermLeavesRulesAndCleanupOnExitRemovesThem() throws {
            let bed = Testbed("dsig")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            let dir = try bed.makeDirectory()
            try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1]))
            let first = try bed.startDaemon(n, ["--manifests", dir])
            #expect(within(5) { ruleset(bed, n).contains("198.19.1.2") } != nil)
            first.signal(SIGTERM)
            #expect(first.waitExit(seconds: 5) == 0)
            #expect(ruleset(bed, n).contains("198.19.1.2"))
            #expect(first.log().contains("SIGTERM: stopping; the rules stay in place"))

            let second = try bed.startDaemon(n, ["--manifests", dir, "--cleanup-on-exit"])
            #expect(within(5) { second.log().contains("sync (") } != nil)
            second.signal(SIGINT)
            #expect(second.waitExit(seconds: 5) == 0)
            #expect(!ruleset(bed, n).contains("svcnat"))
        }

        @Test func metricsAndAOneEndpointChangeInFewMessages() throws {
            let bed = Testbed("dmetrics")
            defer { bed.close() }
            let (n, dir, daemon) = try webDaemon(bed, pods: [1, 2, 3], ["--min-sync-period", "0"])

            // An independent observer: nft monitor prints every object the kernel commits.
            let monitor = try bed.startProcess(n, ["nft", "monitor"])
            usleep(300_000)
            try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1, 2, 4]))
            #expect(within(3) { ruleset(bed, n).contains("198.19.4.2") } != nil)
            usleep(300_000)
            monitor.signal(SIGTERM)
            _ = monitor.waitExit(seconds: 2)
            let events = monitor.log().split(separator: "\n").filter { $0.hasPrefix("add ") || $0.hasPrefix("delete ") }
            // Pod 3 -> pod 4 in both services ports (TCP and UDP share the endpoint IPs): endpoint
            // map elements and the hairpin element, nothing else.
            #expect(events.allSatisfy { $0.contains("element") }, "\(events)")
            #expect(events.count <= 6, "\(events)")

            let (status, m) = try http(bed, n, "http://127.0.0.1:10249/metrics")
            #expect(status == 200)
            for name in [
                "kubeproxy_sync_proxy_rules_duration_seconds_count", "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
                "kubeproxy_sync_partial_proxy_rules_duration_seconds_count", "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total 0", "svcnat_services 1", "svcnat_endpoints 6",
                "svcnat_drift_repairs_total", "svcnat_rejected_input_files 0"
            ] {
                #expect(m.contains(name), "metrics lack \(name)")
            }
            let partialCount = m.split(separator: "\n").first { $0.hasPrefix("kubeproxy_sync_partial_proxy_rules_duration_seconds_count") }
            #expect(partialCount.map { Int($0.split(separator: " ").last!)! >= 1 } == true)
            let batch = m.split(separator: "\n").first { $0.hasPrefix("svcnat_sync_last_batch_netlink_messages") }
            #expect(batch.map { Double($0.split(separator: " ").last!)! <= 6 } == true, "\(batch ?? "")")
            let (hs, hb) = try http(bed, n, "http://127.0.0.1:10256/healthz")
            #expect(hs == 200 && hb.contains("\"status\": \"ok\""))
            #expect(try http(bed, n, "http://127.0.0.1:10256/livez").0 == 200)
            #expect(daemon.log().contains("sync (partial"))
        }

        /// kube-proxy's metrics and health fields: every metric family has `# HELP` and
        /// `# TYPE`; an EndpointSlice's last-change-trigger-time gives the network programming
        /// latency; changes are counted and none stays pending; a Local Service without a local
        /// endpoint is counted; process metrics; /proxyMode; /healthz's kube-proxy fields.
        @Test func kubeProxysMetricsAndHealthFields() throws {
            let bed = Testbed("dkpm")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            let dir = try bed.makeDirectory()
            // Each change began seconds before its file is written.
            let f = ISO8601DateFormatter()
            func slice(_ pods: [Int], trigger: Date) -> String {
                """
                apiVersion: v1
                kind: Service
                metadata: {name: api, namespace: demo}
                spec:
                  type: NodePort
                  clusterIP: 198.18.100.40
                  externalTrafficPolicy: Local
                  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30040}]
                ---
                apiVersion: discovery.k8s.io/v1
                kind: EndpointSlice
                metadata:
                  name: api-1
                  namespace: demo
                  labels: {kubernetes.io/service-name: api}
                  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "\(f.string(from: trigger))"}
                addressType: IPv4
                endpoints: [\(pods.map { "{addresses: [198.19.\($0).2], nodeName: node-b}" }.joined(separator: ", "))]
                ports: [{name: http, protocol: TCP, port: 8080}]

                """
            }
            try write(dir + "/api.yaml", slice([1], trigger: Date().addingTimeInterval(-5)))
            let daemon = try bed.startDaemon(n, ["--manifests", dir, "--min-sync-period", "0", "--node-name", "node-a"])
            #expect(within(5) { ruleset(bed, n).contains("198.19.1.2") } != nil, "\(daemon.log())")
            try write(dir + "/api.yaml", slice([1, 2], trigger: Date().addingTimeInterval(-3)))
            #expect(within(5) { ruleset(bed, n).contains("198.19.2.2") } != nil, "\(daemon.log())")
            usleep(200_000)

            let (status, m) = try http(bed, n, "http://127.0.0.1:10249/metrics")
            #expect(status == 200)
            let lines = m.split(separator: "\n").map(String.init)
            func value(_ prefix: String) -> Double? {
                lines.first { $0.hasPrefix(prefix + " ") }.flatMap { Double($0.split(separator: " ").last!) }
            }
            // Every family: HELP, then TYPE, once each; every sample belongs to a declared family.
            var helped = Set<String>(), typed = Set<String>()
            for (i, line) in lines.enumerated() where line.hasPrefix("# TYPE ") {
                let name = String(line.split(separator: " ")[2])
                typed.insert(name)
                if i > 0, lines[i - 1].hasPrefix("# HELP \(name) "), lines[i - 1].count > "# HELP \(name) ".count { helped.insert(name) }
            }
            #expect(typed == helped && typed.count >= 20, "\(typed.subtracting(helped))")
            for sample in lines where !sample.hasPrefix("#") && !sample.isEmpty {
                let name = String(sample.prefix { $0 != " " && $0 != "{" })
                let family = ["_bucket", "_sum", "_count"].reduce(name) { n, s in
                    typed.contains(n) ? n : (n.hasSuffix(s) ? String(n.dropLast(s.count)) : n)
                }
                #expect(typed.contains(family), "\(sample) has no # TYPE")
            }
            // Two slice versions, 5 s and 3 s after their trigger times (give or take the sync
            // and the times' whole seconds).
            #expect(value("kubeproxy_network_programming_duration_seconds_count") == 2, "\(m)")
            let sum = value("kubeproxy_network_programming_duration_seconds_sum") ?? 0
            #expect(sum >= 7 && sum < 12, "\(sum)")
            #expect((value("kubeproxy_sync_proxy_rules_endpoint_changes_total") ?? 0) >= 2)
            #expect((value("kubeproxy_sync_proxy_rules_service_changes_total") ?? 0) >= 1)
            #expect(value("kubeproxy_sync_proxy_rules_endpoint_changes_pending") == 0)
            #expect(value("kubeproxy_sync_proxy_rules_service_changes_pending") == 0)
            // externalTrafficPolicy Local, both endpoints on node-b: this node has none.
            #expect(value("kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\"}") == 1, "\(m)")
            #expect(value("kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\"}") == 0)
            #expect((value("process_resident_memory_bytes") ?? 0) > 1_000_000)
            #expect((value("process_open_fds") ?? 0) > 3)
            let start = value("process_start_time_seconds") ?? 0
            #expect(abs(start - Date().timeIntervalSince1970) < 60)
            let (ps, mode) = try http(bed, n, "http://127.0.0.1:10249/proxyMode")
            #expect(ps == 200 && mode.trimmingCharacters(in: .whitespacesAndNewlines) == "nftables", "\(mode)")

            let (hs, hb) = try http(bed, n, "http://127.0.0.1:10256/healthz")
            #expect(hs == 200, "\(hb)")
            let health = try JSONSerialization.jsonObject(with: Data(hb.utf8)) as? [String: Any]
            #expect(health?["nodeEligible"] as? Bool == true, "\(hb)")
            let rfc = ISO8601DateFormatter()
            rfc.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            let updated = (health?["lastUpdated"] as? String).flatMap(rfc.date(from:))
            let now = (health?["currentTime"] as? String).flatMap(rfc.date(from:))
            #expect(updated != nil && now != nil && now! >= updated! && now!.timeIntervalSince(updated!) < 10, "\(hb)")
        }

        @Test func healthCheckNodePortFollowsLocalEndpoints() throws {
            let bed = Testbed("dhc")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            let dir = try bed.makeDirectory()
            let local = LocalPolicyTests().manifest(pods: [(1, "node-a"), (2, "node-b")])
            try write(dir + "/edge.yaml", local)
            _ = try bed.startDaemon(n, ["--manifests", dir, "--min-sync-period", "0", "--node-name", "node-a"])
            #expect(try within(5) { try http(bed, n, "http://127.0.0.1:32000/").0 == 200 } != nil)
            let (_, body) = try http(bed, n, "http://127.0.0.1:32000/")
            #expect(body.contains("\"localEndpoints\": 1") && body.contains("\"name\": \"edge\""), "\(body)")
            // The local endpoint goes: 503, so a load balancer stops sending traffic to this node.
            try write(dir + "/edge.yaml", LocalPolicyTests().manifest(pods: [(2, "node-b")]))
            #expect(try within(3) { try http(bed, n, "http://127.0.0.1:32000/").0 == 503 } != nil)
            #expect(try http(bed, n, "http://127.0.0.1:32000/").1.contains("\"localEndpoints\": 0"))
            // The Service goes: so does its health check server. (A folder left with no manifest
            // file at all would hold the rules; a file with no Service in it is a choice.)
            try write(dir + "/empty.yaml", "# no Service here\n")
            try FileManager.default.removeItem(atPath: dir + "/edge.yaml")
            #expect(try within(3) { try http(bed, n, "http://127.0.0.1:32000/").0 == 0 } != nil)
        }

        /// 1,000 updates (endpoints coming and going, another Service created and deleted) while a
        /// client keeps opening connections to a Service that always has a ready endpoint: each
        /// change takes effect in one atomic batch, and map entries a packet on the old rules may
        /// still read go only after it, so no connection may fail. (Without the second step, about
        /// one run in five lost a connection.)
        @Test func churnUnderTrafficFailsNoConnection() throws {
            let bed = Testbed("churn")
            defer { bed.close() }
            try bed.servedTopology(pods: 3)
            let node = bed.ns("node")
            let dir = try bed.makeDirectory()
            try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1]))
            // Poison beside it: a squatter on web's ClusterIP and port (no endpoints, so a
            // connection it won would be refused), and a /0 source range.
            try write(dir + "/poison.yaml", Self.poison)
            let daemon = try bed.startDaemon(node, ["--manifests", dir, "--min-sync-period", "0", "--cluster-cidr", "198.19.0.0/16"])
            #expect(within(5) { ruleset(bed, node).contains("198.19.1.2") } != nil)
            #expect(ruleset(bed, node).contains("ip saddr 0.0.0.0/0"), "\(daemon.log())")
            let (_, health) = try http(bed, node, "http://127.0.0.1:10256/healthz")
            #expect(health.contains("Service demo/squat port http: its ExternalIP 198.18.100.20:80/TCP is skipped"), "\(health)")
            #expect(try http(bed, node, "http://127.0.0.1:10249/metrics").1.contains("svcnat_skipped_frontends 1"))
            // Some 25,000 connections in 25 s, each leaving a TIME_WAIT socket: give the client
            // more than the default 28,232 local ports, so a fast machine cannot run out.
            _ = try bed.sh(bed.ns("client"), ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"])
            let client = try bed.startProcess(bed.ns("client"), ["python3", helper("loop_client.py"), "198.18.100.20", "80", "25"])
            let shapes: [[Int]] = [[1], [1, 2], [1, 3], [1, 2, 3], [1, 3, 2].reversed()]
            let start = Date()
            for i in 0..<1000 where Date().timeIntervalSince(start) < 20 {
                if i % 5 == 4 {
                    if i % 10 == 4 {
                        try write(dir + "/other.yaml", serviceManifest(name: "other", ip: "198.18.100.21", pods: [2, 3]))
                    } else {
                        try? FileManager.default.removeItem(atPath: dir + "/other.yaml")
                    }
                } else {
                    try write(dir + "/web.yaml", serviceManifest(name: "web", pods: shapes[i % shapes.count]))
                }
                usleep(10_000)
            }
            let updates = min(1000, Int(Date().timeIntervalSince(start) / 0.0101) + 1)
            _ = client.waitExit(seconds: 40)
            let result = try JSONDecoder().decode(LoopResult.self, from: Data(client.log().utf8))
            let syncs = daemon.log().components(separatedBy: "sync (partial").count - 1
            print(
                "churn: \(updates) updates written, \(syncs) partial syncs, \(result.made) connections made, \(result.failed) "
                    + "failed \(result.errors), answers \(result.answers)"
            )
            #expect(result.failed == 0, "\(result)")
            #expect(result.made > 100)
            #expect(syncs > 60)
            #expect(!daemon.log().contains("sync failed"))
        }

        static let poison = """
            apiVersion: v1
            kind: Service
            metadata: {name: squat, namespace: demo, creationTimestamp: "2020-01-01T00:00:00Z"}
            spec:
              clusterIP: 198.18.100.30
              externalIPs: [198.18.100.20]
              selector: {app: nothing}
              ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: open, namespace: demo}
            spec:
              type: LoadBalancer
              clusterIP: 198.18.100.31
              loadBalancerSourceRanges: [0.0.0.0/0]
              selector: {app: nothing}
              ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30099}]
            status: {loadBalancer: {ingress: [{ip: 198.18.200.31}]}}

            """

        struct LoopResult: Decodable {
            var made: Int
            var failed: Int
            var answers: [String: Int]
            var errors: [String: Int]
        }

        /// A kernel that refuses every batch: the daemon keeps the previous rules, retries with
        /// backoff, and says so in /healthz and the metrics.
        @Test func refusedBatchesAreRetriedAndReported() throws {
            let bed = Testbed("drefuse")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            let dir = try bed.makeDirectory()
            try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1]))
            let daemon = try bed.startProcessWithEnv(
                n, [svcnatPath, "run", "--manifests", dir, "--min-sync-period", "0"],
                env: ["SVCNAT_TEST_REFUSE_BATCHES": "1"])
            #expect(try within(5) { try http(bed, n, "http://127.0.0.1:10256/healthz").0 == 503 } != nil)
            let (_, body) = try http(bed, n, "http://127.0.0.1:10256/healthz")
            #expect(
                body.contains("last sync failed") && body.contains("the kernel refused the transaction")
                    && body.contains("No such file or directory"), "\(body)")
            // Retried with backoff (0.5 s, 1 s, 2 s, ...): several failures within a few seconds.
            #expect(
                try within(6) {
                    let m = try http(bed, n, "http://127.0.0.1:10249/metrics").1
                    let line = m.split(separator: "\n").first { $0.hasPrefix("kubeproxy_sync_proxy_rules_nftables_sync_failures_total") }
                    return (line.flatMap { Int($0.split(separator: " ").last!) } ?? 0) >= 3
                } != nil)
            #expect(daemon.log().contains("retrying in"))
            // Nothing half-applied: the table was never created.
            #expect(!ruleset(bed, n).contains("svcnat"))
        }

        /// SIGKILL in the middle of a large first sync leaves the kernel with no table or the whole
        /// one, never part of it; the next start converges.
        @Test func killedMidSyncLeavesOldOrNewAndTheNextStartConverges() throws {
            let bed = Testbed("dkill")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            let dir = try bed.makeDirectory()
            for i in 0..<400 {
                try serviceManifest(name: "s\(i)", ip: "198.18.\(100 + i / 200).\(i % 200 + 20)", pods: [1, 2, 3])
                    .write(toFile: dir + "/s\(i).yaml", atomically: true, encoding: .utf8)
            }
            var outcomes = Set<String>()
            // Killed at several moments of the first sync, and (last) just as the table appears.
            for delay in [50_000, 150_000, 300_000, 600_000, 0] as [UInt32] {
                _ = try? bed.exec(n, ["nft", "delete", "table", "ip", "svcnat"])
                let d = try bed.startDaemon(n, ["--manifests", dir, "--min-sync-period", "0"])
                if delay > 0 { usleep(delay) } else { _ = within(20) { ruleset(bed, n).contains("table ip svcnat") } }
                d.signal(SIGKILL)
                _ = d.waitExit(seconds: 5)
                let tables = try bed.sh(n, ["nft", "list", "tables"])
                if tables.contains("svcnat") {
                    // All or nothing: what is there is exactly what svcnat wanted.
                    #expect(try bed.svcnat(n, ["diff", "-f", dir]).code == 0, "a partial ruleset after SIGKILL at \(delay) us")
                    outcomes.insert("new")
                } else {
                    outcomes.insert("none")
                }
            }
            print("kill mid-sync: outcomes \(outcomes.sorted())")
            #expect(outcomes.contains("new"))
            // The next start converges.
            _ = try bed.startDaemon(n, ["--manifests", dir, "--min-sync-period", "0"])
            #expect(try within(20) { try bed.svcnat(n, ["diff", "-f", dir]).code == 0 } != nil)
        }
    }
}
