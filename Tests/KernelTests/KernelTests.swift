import Foundation
import Testing

extension RootTests {
    /// Apply into fresh namespaces and read the kernel back, through svcnat's own netlink reader and
    /// through nft's JSON output.
    @Suite(.serialized)
    struct KernelTests {
        let cidr = ["--cluster-cidr", "198.19.0.0/16"]

        @Test func applyThenDumpMatchesThePlan() throws {
            let bed = Testbed("dump")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            let plan = try run(["unshare", "--net", "--", svcnatPath, "apply", "-f", examples, "--dry-run"] + cidr)
            #expect(plan.code == 0)
            let applied = try bed.svcnat(n, ["apply", "-f", examples] + cidr)
            #expect(applied.code == 0, "\(applied.err)")
            #expect(applied.out.contains("1 services (1 ports), 3 endpoints"))

            // The kernel holds exactly the plan: nft reads both the applied table and the plan
            // loaded by nft itself into a namespace of its own (no svcnat reader on either side).
            let planned = try bed.addNamespace("plan")
            try bed.sh(planned, ["nft", "-f", "-"], stdin: plan.out)
            #expect(try bed.sh(n, ["nft", "list", "table", "ip", "svcnat"]) == bed.sh(planned, ["nft", "list", "table", "ip", "svcnat"]))
            #expect(try bed.svcnat(n, ["show", "--format", "json"]).code == 0)

            // nft, an independent reader, sees the dispatch element, the service chain and the
            // endpoints in the endpoint map.
            let nftJSON = try bed.sh(n, ["nft", "-j", "list", "ruleset"])
            let items = (try JSONSerialization.jsonObject(with: Data(nftJSON.utf8)) as! [String: Any])["nftables"] as! [[String: Any]]
            let rules = items.compactMap { $0["rule"] as? [String: Any] }
            let svcChain = "svc-codereview/codereviewapi/tcp/codereviewapip"
            let chainRules = rules.filter { $0["chain"] as? String == svcChain }
            #expect(chainRules.count == 2)
            let dnatText = String(describing: chainRules.last?["expr"] ?? "")
            #expect(dnatText.contains("numgen") && dnatText.contains("endpoints-"))
            let maps = items.compactMap { $0["map"] as? [String: Any] }
            let serviceIPs = try #require(maps.first { $0["name"] as? String == "service-ips" })
            let elemText = String(describing: serviceIPs["elem"] ?? "")
            #expect(elemText.contains("198.18.100.10") && elemText.contains(svcChain))
            let endpointMaps = maps.filter { ($0["name"] as? String ?? "").hasPrefix("endpoints-") }
            #expect(endpointMaps.count == 1)
            let endpointText = String(describing: endpointMaps.first?["elem"] ?? "")
            for a in ["198.19.1.2", "198.19.2.2", "198.19.3.2"] { #expect(endpointText.contains(a)) }
            #expect(endpointText.contains("8888"))

            // A second apply of the same input sends nothing.
            let again = try bed.svcnat(n, ["apply", "-f", examples] + cidr)
            #expect(again.code == 0)
            #expect(again.out.contains("no changes"))
            let diff = try bed.svcnat(n, ["diff", "-f", examples] + cidr)
            #expect(diff.code == 0)
            #expect(diff.out.isEmpty)
        }

        @Test func repairsWhatOthersChanged() throws {
            let bed = Testbed("repair")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            #expect(try bed.svcnat(n, ["apply", "-f", examples] + cidr).code == 0)
            let good = try bed.sh(n, ["nft", "list", "ruleset"])

            try bed.sh(n, ["nft", "flush", "chain", "ip", "svcnat", "svc-codereview/codereviewapi/tcp/codereviewapip"])
            try bed.sh(n, ["nft", "delete", "element", "ip", "svcnat", "hairpin", "{ 198.19.2.2 . 198.19.2.2 }"])
            try bed.sh(n, ["nft", "add", "chain", "ip", "svcnat", "intruder"])
            try bed.sh(n, ["nft", "add", "rule", "ip", "svcnat", "services", "counter", "drop"])
            #expect(try bed.sh(n, ["nft", "list", "ruleset"]) != good)

            let diff = try bed.svcnat(n, ["diff", "-f", examples] + cidr)
            #expect(diff.code == 1)
            #expect(diff.out.contains("add element ip svcnat hairpin { 198.19.2.2 . 198.19.2.2 }"))
            #expect(diff.out.contains("delete chain ip svcnat intruder"))
            let fixed = try bed.svcnat(n, ["apply", "-f", examples] + cidr)
            #expect(fixed.code == 0)
            #expect(try bed.sh(n, ["nft", "list", "ruleset"]) == good)

            // Someone deletes the whole table: it comes back.
            try bed.sh(n, ["nft", "delete", "table", "ip", "svcnat"])
            #expect(try bed.svcnat(n, ["apply", "-f", examples] + cidr).code == 0)
            #expect(try bed.sh(n, ["nft", "list", "ruleset"]) == good)
        }

        @Test func removedObjectsLeaveTheKernel() throws {
            let bed = Testbed("remove")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            let two = try bed.writeManifest(
                serviceManifest(name: "web", pods: [1, 2]) + "---\n" + serviceManifest(name: "api", ip: "198.18.100.21", pods: [3]))
            let one = try bed.writeManifest(serviceManifest(name: "web", pods: [1]))
            #expect(try bed.svcnat(n, ["apply", "-f", two]).code == 0)
            #expect(try bed.sh(n, ["nft", "list", "chains"]).contains("svc-demo/api/tcp/http"))
            let r = try bed.svcnat(n, ["apply", "-f", one])
            #expect(r.code == 0, "\(r.err)")
            let after = try bed.sh(n, ["nft", "list", "ruleset"])
            #expect(!after.contains("demo/api"))
            #expect(!after.contains("198.19.2.2"))
            #expect(!after.contains("198.18.100.21"))
            // The result equals a fresh load of the same input.
            let fresh = try bed.addNamespace("fresh")
            #expect(try bed.svcnat(fresh, ["apply", "-f", one]).code == 0)
            #expect(try bed.sh(fresh, ["nft", "list", "ruleset"]) == after)
        }

        @Test func cleanupRemovesOnlySvcnatsTable() throws {
            let bed = Testbed("cleanup")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            try bed.sh(
                n, ["nft", "-f", "-"],
                stdin: """
                    table ip other {
                      chain c {
                        type nat hook prerouting priority -100;
                        ip daddr 198.18.200.1 counter accept
                      }
                    }
                    table inet svcnat {
                      chain c {
                        type filter hook input priority 0;
                      }
                    }
                    """)
            let others = try bed.sh(n, ["nft", "list", "ruleset"])
            let dualStack = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("SvcnatModelTests/Fixtures/dualstack.yaml").path
            #expect(try bed.svcnat(n, ["apply", "-f", examples, "-f", dualStack]).code == 0)
            let r = try bed.svcnat(n, ["cleanup"])
            #expect(r.code == 0)
            #expect(r.out.contains("removed table ip svcnat and table ip6 svcnat"), "\(r.out)")
            #expect(try bed.sh(n, ["nft", "list", "ruleset"]) == others)
            #expect(try bed.svcnat(n, ["cleanup"]).out.contains("nothing to remove"))
        }

        @Test func dryRunOutputLoadsIntoTheSameRuleset() throws {
            let bed = Testbed("dryrun")
            defer { bed.close() }
            let a = try bed.addNamespace("a"), b = try bed.addNamespace("b")
            let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("SvcnatModelTests/Fixtures/services.yaml").path
            let dualStack = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("SvcnatModelTests/Fixtures/dualstack.yaml").path
            let input = try bed.writeManifest(
                serviceManifest(name: "web", pods: [1, 2, 3]) + "---\n" + serviceManifest(name: "empty", ip: "198.18.100.30", pods: [])
                    + "---\n" + (try String(contentsOfFile: fixtures, encoding: .utf8))
                    + "---\n" + (try String(contentsOfFile: dualStack, encoding: .utf8)))
            let cidr6 = ["--cluster-cidr", "2001:db8:1::/48"]
            for args in [
                cidr + cidr6, ["--masquerade-all"], [], cidr + cidr6 + ["--endpoint-selection", "cascade"],
                cidr + [
                    "--nodeport-addresses", "198.18.0.0/24", "--nodeport-addresses", "198.19.0.0/16", "--service-cidr", "198.18.100.0/24",
                    "--nodeport-addresses", "2001:db8::/64", "--service-cidr", "2001:db8:100::/112"
                ]
            ] {
                _ = try bed.svcnat(a, ["cleanup"])
                _ = try bed.exec(b, ["nft", "flush", "ruleset"])
                #expect(try bed.svcnat(a, ["apply", "-f", examples, "-f", input] + args).code == 0)
                let dry = try run(["unshare", "--net", "--", svcnatPath, "apply", "-f", examples, "-f", input, "--dry-run"] + args)
                try bed.sh(b, ["nft", "-f", "-"], stdin: dry.out)
                #expect(try bed.sh(a, ["nft", "list", "ruleset"]) == bed.sh(b, ["nft", "list", "ruleset"]))
                // And svcnat reading nft's load finds nothing to change.
                #expect(try bed.svcnat(b, ["diff", "-f", examples, "-f", input] + args).code == 0)
            }
        }

        @Test func refusedBatchLeavesTheOldRules() throws {
            let bed = Testbed("refuse")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            let v1 = try bed.writeManifest(serviceManifest(pods: [1, 2]))
            let v2 = try bed.writeManifest(
                serviceManifest(pods: [1, 2, 3]) + "---\n" + serviceManifest(name: "more", ip: "198.18.100.40", pods: [4]))
            #expect(try bed.svcnat(n, ["apply", "-f", v1]).code == 0)
            let before = try bed.sh(n, ["nft", "list", "ruleset"])
            // The debug build's refusing transport adds one message the kernel must refuse (deleting
            // a chain that does not exist) after all the real changes; the kernel aborts the batch.
            let r = try bed.svcnat(n, ["apply", "-f", v2], env: ["SVCNAT_TEST_REFUSE_BATCHES": "1"])
            #expect(r.code == 1)
            #expect(r.err.contains("the kernel refused the transaction (nothing was changed)"), "\(r.err)")
            #expect(r.err.contains("No such file or directory"))
            #expect(try bed.sh(n, ["nft", "list", "ruleset"]) == before)
            // Without the hook the same change goes through.
            #expect(try bed.svcnat(n, ["apply", "-f", v2]).code == 0)
            #expect(try bed.sh(n, ["nft", "list", "ruleset"]).contains("198.19.4.2"))
        }

        @Test func invalidInputSendsNothing() throws {
            let bed = Testbed("invalid")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            #expect(try bed.svcnat(n, ["apply", "-f", examples]).code == 0)
            let before = try bed.sh(n, ["nft", "list", "ruleset"])
            let bad = try bed.writeManifest(serviceManifest(pods: [1]).replacingOccurrences(of: "port: 80,", with: "port: 70000,"))
            let r = try bed.svcnat(n, ["apply", "-f", examples, "-f", bad])
            #expect(r.code == 2)
            #expect(r.err.contains("Service demo/web: spec.ports[0].port: 70000 is not a port"))
            #expect(r.err.contains(bad))
            #expect(try bed.sh(n, ["nft", "list", "ruleset"]) == before)
        }
    }
}

extension RootTests {
    @Suite
    struct IptablesFormat {
        /// The --format iptables output loads with iptables-restore and reads back from iptables-save
        /// line for line: it is printed exactly as iptables-save prints it.
        @Test func iptablesRestoreAcceptsItAndSaveGivesItBack() throws {
            let bed = Testbed("ipt")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("SvcnatModelTests/Fixtures/services.yaml").path
            let dualStack = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("SvcnatModelTests/Fixtures/dualstack.yaml").path
            func lines(_ s: String) -> [String] {
                s.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") }
                    .map { $0.hasPrefix(":") ? String($0.split(separator: " ").prefix(2).joined(separator: " ")) : $0 }
            }
            // Local traffic policies too (KUBE-SVL- chains, the LOCAL short-circuits, the health
            // check ACCEPT), with one endpoint on this node and one elsewhere, and one with none here.
            let local = try bed.writeManifest(
                RootTests.LocalPolicyTests().manifest(pods: [(1, "node-a"), (2, "node-b")], etp: "Local", itp: "Local")
                    + "---\n"
                    + RootTests.LocalPolicyTests().manifest(pods: [(3, "node-b")]).replacingOccurrences(of: "name: edge", with: "name: far")
                    .replacingOccurrences(of: "app: edge", with: "app: far").replacingOccurrences(
                        of: "198.18.100.60", with: "198.18.100.61"
                    )
                    .replacingOccurrences(of: "30090", with: "30091").replacingOccurrences(of: "32000", with: "32001")
                    .replacingOccurrences(of: "198.18.200.9", with: "198.18.200.10"))
            // IPv4 with iptables, IPv6 with ip6tables, as kube-proxy programs each family.
            for (format, tool) in [("iptables", "iptables"), ("ip6tables", "ip6tables")] {
                let dry = try run([
                    "unshare", "--net", "--", svcnatPath, "apply", "-f", examples, "-f", fixtures, "-f", dualStack, "-f", local,
                    "--dry-run",
                    "--format", format, "--node-name", "node-a",
                    "--cluster-cidr", "198.19.0.0/16", "--cluster-cidr", "2001:db8:1::/48"
                ])
                #expect(dry.code == 0, "\(dry.err)")
                try bed.sh(n, ["\(tool)-restore"], stdin: dry.out)
                let saved = try bed.sh(n, ["\(tool)-save"])
                #expect(lines(saved) == lines(dry.out), "\(format)")
                if format == "iptables" {
                    #expect(dry.out.contains("-j KUBE-SVL-") && dry.out.contains("has no local endpoints"), "\(dry.out)")
                }
                if format == "ip6tables" {
                    #expect(
                        dry.out.contains("-A KUBE-SERVICES -d 2001:db8:100::31/128 -p tcp")
                            && dry.out.contains("--to-destination [2001:db8:1:1::2]:8080"),
                        "\(dry.out)")
                }
            }
        }
    }
}

extension RootTests {
    /// svcnat needs CAP_NET_ADMIN and nothing more, and says so when it lacks it.
    @Suite
    struct LeastPrivilege {
        @Test func capNetAdminAloneIsEnoughAndItsAbsenceIsNamed() throws {
            let bed = Testbed("priv")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            // A copy the unprivileged user can reach (the build folder may not be).
            let dir = try bed.makeDirectory()
            chmod(dir, 0o755)
            try FileManager.default.copyItem(atPath: svcnatPath, toPath: dir + "/svcnat")
            try FileManager.default.copyItem(atPath: examples + "/codereview.yaml", toPath: dir + "/codereview.yaml")
            chmod(dir + "/codereview.yaml", 0o644)
            let asNobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            let without = try bed.exec(n, asNobody + ["--inh-caps=-all", dir + "/svcnat", "apply", "-f", dir + "/codereview.yaml"])
            #expect(without.code == 1)
            #expect(without.err.contains("Operation not permitted") && without.err.contains("needs CAP_NET_ADMIN"), "\(without.err)")
            #expect(!(try bed.sh(n, ["nft", "list", "tables"]).contains("svcnat")))
            let with = try bed.exec(
                n,
                asNobody + ["--inh-caps=+net_admin", "--ambient-caps=+net_admin", dir + "/svcnat", "apply", "-f", dir + "/codereview.yaml"])
            #expect(with.code == 0, "\(with.err)")
            #expect(try bed.sh(n, ["nft", "list", "tables"]).contains("table ip svcnat"))
        }
    }
}
