import Foundation
import Testing

extension RootTests {
    /// What one tenant's object or another agent's rule can do to a node: each test is named
    /// after a defect it once had (issue 12) and shows it by the kernel's own dump or by packets.
    @Suite(.serialized)
    struct HardeningTests {
        let cidrs = ["--cluster-cidr", "198.19.0.0/16", "--cluster-cidr", "2001:db8:1::/48"]

        /// A LoadBalancer Service reached at `lb`, with source ranges, on pods 1 and 2 of its family.
        func lbService(_ name: String, clusterIP: String, lb: String, ranges: [String], v6: Bool = false) -> String {
            let pods = v6 ? ["2001:db8:1:1::2", "2001:db8:1:2::2"] : ["198.19.1.2", "198.19.2.2"]
            return """
                apiVersion: v1
                kind: Service
                metadata: {name: \(name), namespace: demo}
                spec:
                  type: LoadBalancer
                  clusterIP: "\(clusterIP)"
                  clusterIPs: ["\(clusterIP)"]
                  loadBalancerSourceRanges: [\(ranges.map { "\"\($0)\"" }.joined(separator: ", "))]
                  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: \(v6 ? 30181 : 30180) }]
                status: {loadBalancer: {ingress: [{ip: "\(lb)"}]}}
                ---
                apiVersion: discovery.k8s.io/v1
                kind: EndpointSlice
                metadata: {name: \(name)-1, namespace: demo, labels: {kubernetes.io/service-name: \(name)}}
                addressType: IPv\(v6 ? 6 : 4)
                endpoints: [\(pods.map { "{addresses: [\"\($0)\"]}" }.joined(separator: ", "))]
                ports: [{name: http, protocol: TCP, port: 8080}]
                ---

                """
        }

        /// `loadBalancerSourceRanges: [0.0.0.0/0]` was encoded as a zero-length load, which the
        /// kernel refuses, so every transaction failed. Now /0, /32, /128 and ordinary prefixes
        /// go in, in both families, read back as nft prints them, and let packets through.
        @Test func zeroPrefixSourceRangesAreProgrammedInBothFamilies() throws {
            let bed = Testbed("pfx")
            defer { bed.close() }
            try bed.servedTopology(pods: 2, ipv6: true)
            let node = bed.ns("node"), pod1 = bed.ns("pod1")
            let input = try bed.writeManifest(
                lbService("open", clusterIP: "198.18.100.70", lb: "198.18.200.7", ranges: ["0.0.0.0/0"])
                    + lbService("narrow", clusterIP: "198.18.100.71", lb: "198.18.200.8", ranges: ["198.18.0.2/32", "198.18.0.0/24"])
                    + lbService("open6", clusterIP: "2001:db8:100::70", lb: "2001:db8:200::7", ranges: ["::/0"], v6: true)
                    + lbService(
                        "narrow6", clusterIP: "2001:db8:100::71", lb: "2001:db8:200::8", ranges: ["2001:db8::2/128", "2001:db8::/64"],
                        v6: true))
            let r = try bed.svcnat(node, ["apply", "-f", input] + cidrs)
            #expect(r.code == 0, "\(r.err)")

            // nft reads every prefix back as it would print its own.
            let v4 = try bed.sh(node, ["nft", "list", "table", "ip", "svcnat"])
            let v6 = try bed.sh(node, ["nft", "list", "table", "ip6", "svcnat"])
            for text in ["ip saddr 0.0.0.0/0 return", "ip saddr 198.18.0.2 return", "ip saddr 198.18.0.0/24 return"] {
                #expect(v4.contains(text), "\(text) not in:\n\(v4)")
            }
            for text in ["ip6 saddr ::/0 return", "ip6 saddr 2001:db8::2 return", "ip6 saddr 2001:db8::/64 return"] {
                #expect(v6.contains(text), "\(text) not in:\n\(v6)")
            }
            // svcnat reads them back as what it planned.
            let again = try bed.svcnat(node, ["apply", "-f", input] + cidrs)
            #expect(again.code == 0 && again.out.contains("no changes"), "\(again.out)\(again.err)")

            // By packets: a pod is inside 0.0.0.0/0 and ::/0, and outside the narrow ranges.
            let open = try bed.client(in: pod1, "tcp", "198.18.200.7", 80, count: 10)
            #expect(open.answers.values.reduce(0, +) == 10, "\(open)")
            let open6 = try bed.client(in: pod1, "tcp", "2001:db8:200::7", 80, count: 10)
            #expect(open6.answers.values.reduce(0, +) == 10, "\(open6)")
            #expect(try bed.explain(node, ["198.18.200.8:80", "--source", "198.19.1.2"]).map(\.fate) == ["dropped"])
            #expect(try bed.explain(node, ["[2001:db8:200::8]:80", "--source", "2001:db8:1:1::2"]).map(\.fate) == ["dropped"])

            // A /0 cluster CIDR goes in too (nothing is outside it, so nothing is masqueraded).
            let all = try bed.svcnat(node, ["apply", "-f", input, "--cluster-cidr", "0.0.0.0/0", "--cluster-cidr", "::/0"])
            #expect(all.code == 0, "\(all.err)")
            #expect(try bed.sh(node, ["nft", "list", "table", "ip", "svcnat"]).contains("ip saddr != 0.0.0.0/0"))
        }

        /// A Service whose external IP is another Service's ClusterIP and port (CVE-2020-8554)
        /// used to refuse the whole input. Now the ClusterIP keeps it, the squatter keeps the
        /// rest of its Service, and both are programmed.
        @Test func anExternalIPSquatterLosesToTheClusterIPAndEverythingElseIsProgrammed() throws {
            let bed = Testbed("squat")
            defer { bed.close() }
            try bed.servedTopology(pods: 2)
            let node = bed.ns("node"), client = bed.ns("client")
            let squatter = serviceManifest(name: "squat", ip: "198.18.100.21", pods: [2])
                .replacingOccurrences(
                    of: "  clusterIP: 198.18.100.21\n", with: "  clusterIP: 198.18.100.21\n  externalIPs: [198.18.100.20]\n")
            let input = try bed.writeManifest(serviceManifest(name: "web", pods: [1]) + "---\n" + squatter)
            let r = try bed.svcnat(node, ["apply", "-f", input, "--cluster-cidr", "198.19.0.0/16"])
            #expect(r.code == 0, "\(r.err)")
            #expect(
                r.err.contains(
                    "conflict: Service demo/squat port http: its ExternalIP 198.18.100.20:80/TCP is skipped, Service demo/web holds it"),
                "\(r.err)")
            // The victim's ClusterIP reaches only the victim's pod; the squatter's own ClusterIP works.
            let victim = try bed.client(in: client, "tcp", "198.18.100.20", 80, count: 20)
            #expect(victim.answers == ["pod1": 20], "\(victim)")
            let own = try bed.client(in: client, "tcp", "198.18.100.21", 80, count: 10)
            #expect(own.answers == ["pod2": 10], "\(own)")
        }

        /// A foreign rule with an anonymous set (`tcp dport { 80, 443 }`) inside svcnat's table
        /// made every apply fail: svcnat planned to delete `__set0`, which the kernel frees with
        /// its rule. Now the rule goes and its set with it; so do foreign objects of the kinds
        /// svcnat never makes (named counters and quotas), which it did not see.
        @Test func aForeignRuleWithAnAnonymousSetIsRemovedWithoutTouchingTheSet() throws {
            let bed = Testbed("anon")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            let cidr = ["--cluster-cidr", "198.19.0.0/16"]
            #expect(try bed.svcnat(n, ["apply", "-f", examples] + cidr).code == 0)
            let good = try bed.sh(n, ["nft", "list", "ruleset"])
            try bed.sh(n, ["nft", "add", "rule", "ip", "svcnat", "services", "tcp", "dport", "{ 80, 443 }", "counter"])
            try bed.sh(n, ["nft", "add", "chain", "ip", "svcnat", "intruder"])
            try bed.sh(n, ["nft", "add", "rule", "ip", "svcnat", "intruder", "ip", "saddr", "{ 198.18.0.9, 198.18.0.10 }", "drop"])
            // Objects of kinds svcnat never makes: a named counter used by a rule, and a quota.
            // (Flowtables are deleted the same way; this kernel cannot make one to test it.)
            try bed.sh(n, ["nft", "add", "counter", "ip", "svcnat", "spy"])
            try bed.sh(n, ["nft", "add", "quota", "ip", "svcnat", "cap", "{ over 1 mbytes }"])
            try bed.sh(n, ["nft", "add", "rule", "ip", "svcnat", "services", "counter", "name", "spy"])
            #expect(try bed.sh(n, ["nft", "list", "ruleset"]) != good)
            let diff = try bed.svcnat(n, ["diff", "-f", examples] + cidr)
            #expect(diff.code == 1 && !diff.out.contains("__set"), "\(diff.out)\(diff.err)")
            for line in ["delete counter ip svcnat spy", "delete quota ip svcnat cap"] {
                #expect(diff.out.contains(line), "\(line) not in:\n\(diff.out)")
            }
            let fixed = try bed.svcnat(n, ["apply", "-f", examples] + cidr)
            #expect(fixed.code == 0, "\(fixed.err)")
            #expect(try bed.sh(n, ["nft", "list", "ruleset"]) == good)
        }

        /// Drift repair saw neither a base chain's policy nor the table's flags: `policy drop`
        /// on a filter chain dropped every packet into the node, `flags dormant` unhooked every
        /// chain, and `apply` said "the kernel already matches". By packets and by nft's dump.
        @Test func aDropPolicyAndADormantTableAreRepaired() throws {
            let bed = Testbed("policy")
            defer { bed.close() }
            try bed.servedTopology(pods: 1)
            let node = bed.ns("node"), client = bed.ns("client")
            let input = try bed.writeManifest(serviceManifest(name: "web", pods: [1]))
            let cidr = ["--cluster-cidr", "198.19.0.0/16"]
            #expect(try bed.svcnat(node, ["apply", "-f", input] + cidr).code == 0)
            let good = try bed.sh(node, ["nft", "list", "ruleset"])
            #expect(try bed.client(in: client, "tcp", "198.18.100.20", 80, count: 5).answers == ["pod1": 5])

            try bed.sh(
                node, ["nft", "add", "chain", "ip", "svcnat", "filter-forward", "{ type filter hook forward priority -110; policy drop; }"])
            let dropped = try bed.client(in: client, "tcp", "198.18.100.20", 80, count: 2)
            #expect(dropped.answers.isEmpty, "the damage is real: \(dropped)")
            let diff = try bed.svcnat(node, ["diff", "-f", input] + cidr)
            #expect(
                diff.code == 1 && diff.out.contains("add chain ip svcnat filter-forward") && diff.out.contains("policy accept"),
                "\(diff.out)")
            #expect(try bed.svcnat(node, ["apply", "-f", input] + cidr).code == 0)
            #expect(try bed.sh(node, ["nft", "list", "ruleset"]) == good)
            #expect(try bed.client(in: client, "tcp", "198.18.100.20", 80, count: 5).answers == ["pod1": 5])

            // A base chain made again at another priority: the table is rebuilt to svcnat's.
            try bed.sh(node, ["nft", "flush", "chain", "ip", "svcnat", "nat-output"])
            try bed.sh(node, ["nft", "delete", "chain", "ip", "svcnat", "nat-output"])
            try bed.sh(node, ["nft", "add", "chain", "ip", "svcnat", "nat-output", "{ type nat hook output priority 50; }"])
            #expect(try bed.svcnat(node, ["apply", "-f", input] + cidr).code == 0)
            #expect(try bed.sh(node, ["nft", "list", "ruleset"]) == good)

            try bed.sh(node, ["nft", "add", "table", "ip", "svcnat", "{ flags dormant; }"])
            #expect(try bed.sh(node, ["nft", "list", "table", "ip", "svcnat"]).contains("flags dormant"))
            let dormant = try bed.client(in: client, "tcp", "198.18.100.20", 80, count: 2)
            #expect(dormant.answers.isEmpty, "the damage is real: \(dormant)")
            let fixed = try bed.svcnat(node, ["apply", "-f", input] + cidr)
            #expect(fixed.code == 0 && !fixed.out.contains("no changes"), "\(fixed.out)\(fixed.err)")
            #expect(try bed.sh(node, ["nft", "list", "ruleset"]) == good)
            #expect(try bed.client(in: client, "tcp", "198.18.100.20", 80, count: 5).answers == ["pod1": 5])
        }

        /// `--table filter` took over iptables-nft's `ip filter` table, and `cleanup --table
        /// filter` deleted it. A table is svcnat's only when it carries svcnat's comment.
        @Test func aTableSvcnatDidNotMakeIsNeitherChangedNorDeleted() throws {
            let bed = Testbed("foreign")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            try bed.sh(n, ["nft", "add", "table", "ip", "filter"])
            try bed.sh(n, ["nft", "add", "chain", "ip", "filter", "INPUT", "{ type filter hook input priority 0; policy accept; }"])
            try bed.sh(n, ["nft", "add", "rule", "ip", "filter", "INPUT", "counter", "accept"])
            let theirs = try bed.sh(n, ["nft", "list", "ruleset"])
            let apply = try bed.svcnat(n, ["apply", "-f", examples, "--table", "filter"])
            #expect(apply.code == 2 && apply.err.contains("table ip filter exists and is not svcnat's"), "\(apply.code) \(apply.err)")
            let cleanup = try bed.svcnat(n, ["cleanup", "--table", "filter"])
            #expect(cleanup.code == 2, "\(cleanup.code) \(cleanup.err)")
            #expect(try bed.sh(n, ["nft", "list", "ruleset"]) == theirs)
            // svcnat's own table under that name is still fine elsewhere.
            let own = try bed.addNamespace("own")
            #expect(try bed.svcnat(own, ["apply", "-f", examples, "--table", "filter"]).code == 0)
            #expect(try bed.svcnat(own, ["cleanup", "--table", "filter"]).code == 0)
            #expect(try bed.sh(own, ["nft", "list", "ruleset"]).isEmpty)
        }

        /// `externalIPs: [127.0.0.1]` was programmed and caught the node's own connections to
        /// 127.0.0.1. Now special addresses are refused as the API server refuses them, naming
        /// the field, and the kernel keeps what it had.
        @Test func aLoopbackExternalIPIsRefusedAndTheKernelKeepsItsRules() throws {
            let bed = Testbed("lo")
            defer { bed.close() }
            let n = try bed.addNamespace("node")
            let good = try bed.writeManifest(serviceManifest(name: "web", pods: [1]))
            #expect(try bed.svcnat(n, ["apply", "-f", good]).code == 0)
            let before = try bed.sh(n, ["nft", "list", "ruleset"])
            for ip in ["127.0.0.1", "0.0.0.0", "255.255.255.255", "224.0.0.1", "169.254.169.254", "\"::ffff:127.0.0.1\""] {
                let bad = try bed.writeManifest(
                    serviceManifest(name: "web", pods: [1]).replacingOccurrences(
                        of: "  clusterIP: 198.18.100.20\n", with: "  clusterIP: 198.18.100.20\n  externalIPs: [\(ip)]\n"))
                let r = try bed.svcnat(n, ["apply", "-f", bad])
                #expect(r.code == 2 && r.err.contains("Service demo/web: spec.externalIPs[0]:"), "\(ip): \(r.code) \(r.err)")
                #expect(try bed.sh(n, ["nft", "list", "ruleset"]) == before, "\(ip)")
            }
        }

        /// Element comments are `namespace/name:port`, up to 143 bytes for valid names, and were
        /// written whole: nft refuses comments over 128 bytes, so neither the dry run nor any
        /// `nft list ruleset` backup of the node loaded again. Now they are cut to 128.
        @Test func longNamesGiveCommentsThatNftLoadsAgain() throws {
            let bed = Testbed("longc")
            defer { bed.close() }
            let n = try bed.addNamespace("node"), copy = try bed.addNamespace("copy")
            let ns = String(repeating: "n", count: 63), name = "s" + String(repeating: "e", count: 62)
            let input = try bed.writeManifest(
                """
                apiVersion: v1
                kind: Service
                metadata: {name: \(name), namespace: \(ns)}
                spec: {clusterIP: 198.18.100.40, ports: [{name: a-very-long-nam, port: 80}, {name: b, port: 81}]}
                """)
            let dry = try bed.svcnat(n, ["apply", "--dry-run", "-f", input])
            #expect(dry.code == 0)
            let dryFile = try bed.writeManifest(dry.out)
            let check = try bed.exec(copy, ["nft", "-c", "-f", dryFile])
            #expect(check.code == 0, "the dry run does not load: \(check.err)")
            #expect(try bed.svcnat(n, ["apply", "-f", input]).code == 0)
            let backup = try bed.writeManifest(try bed.sh(n, ["nft", "list", "ruleset"]))
            let restore = try bed.exec(copy, ["nft", "-f", backup])
            #expect(restore.code == 0, "the node's backup does not load: \(restore.err)")
            // Cut in the middle: the start of the namespace and the end with the port stay.
            let listed = try bed.sh(copy, ["nft", "list", "ruleset"])
            #expect(
                listed.contains("comment \"nnnnnnnnnn") && listed.contains("...eeee") && listed.contains("eee:a-very-long-nam\""),
                "\(listed)")
        }

        /// One Service the kernel refused made the whole batch fail, so no Service on the node
        /// was updated. Now the refusals name their Services, those are left out (exit 1, each
        /// named), and every other Service is programmed. The kernel refuses the poisoned
        /// Service's messages through a debug-build transport; a refused element message that
        /// holds several Services is sent again one element per message.
        @Test func aServiceTheKernelRefusesIsLeftOutAndTheRestIsProgrammed() throws {
            let bed = Testbed("refuse1")
            defer { bed.close() }
            try bed.servedTopology(pods: 2)
            let node = bed.ns("node"), client = bed.ns("client")
            let input = try bed.writeManifest(
                serviceManifest(name: "web", pods: [1]) + "---\n" + serviceManifest(name: "poison", ip: "198.18.100.21", pods: [2]))
            let r = try bed.svcnat(
                node, ["apply", "-f", input, "--cluster-cidr", "198.19.0.0/16"], env: ["SVCNAT_TEST_REFUSE_CONTAINING": "demo/poison"])
            #expect(r.code == 1, "\(r.out)\(r.err)")
            #expect(r.err.contains("Service demo/poison was left out"), "\(r.err)")
            let table = try bed.sh(node, ["nft", "list", "table", "ip", "svcnat"])
            #expect(table.contains("svc-demo/web/tcp/http") && !table.contains("demo/poison"), "\(table)")
            #expect(try bed.client(in: client, "tcp", "198.18.100.20", 80, count: 10).answers == ["pod1": 10])
        }
    }
}
