import Foundation
import Testing

extension RootTests {
    /// kube-proxy's packet-flow tests as real packets: for each kube-proxy test name, its
    /// Services and EndpointSlices (Tests/SvcnatModelTests/Fixtures/kube-proxy) with kube-proxy's
    /// addresses mapped into this project's test plan, programmed by `svcnat apply`, and its
    /// flows sent from namespaces standing for its pods, its node and its external clients.
    ///
    /// The address map (`KubeProxyAddresses`): pod addresses (10.0.0.0/8) become pod namespaces
    /// 198.19.N.2, in order of first appearance, and the cluster CIDR 198.19.0.0/16; ClusterIPs
    /// 172.30.0.B -> 198.18.100.B (172.30.1.B -> 198.18.100.(200+B)), the service CIDR
    /// 198.18.100.0/24; the node IPs 192.168.0.2 and 192.168.1.2 -> 198.18.10.2 and 198.18.11.2
    /// (their /24s likewise); external IPs 192.168.99.X -> 198.18.200.X (kube-proxy's testExternalIP
    /// .11 is one of the node's own addresses, and is here too); the LB IPs 1.2.3.4, 5.6.7.8,
    /// 9.10.11.12 -> 198.18.200.104, .108, .112; external clients 203.0.113.X -> 198.18.0.X.
    ///
    /// Every fate is observable, so no flow passes on a timeout it did not ask for: each
    /// endpoint's server answers with kube-proxy's name for it ("10.180.0.1:80") and the source
    /// it saw (masquerade is a source other than the client's); the node runs a "host" server on
    /// every port the flows use, so a packet left un-NATed to one of its addresses answers "host"
    /// (kube-proxy's ""); the node's default route leads to a sink namespace that owns the Service
    /// and external ranges and answers "sink", so one forwarded un-NATed answers too; REJECT is a
    /// refusal; DROP is the only timeout.
    ///
    /// Not sent as packets (the packet walk covers them): SCTP flows (the test servers speak TCP
    /// and UDP), and flows whose source is a load-balancer IP ("same node to LB, SNATted to LB",
    /// which needs an outside SNAT; TrafficTests.lbIPAsSourceIsAdmittedWhenTheRangesHoldTheNode
    /// covers it).
    @Suite(.serialized)
    struct ConformanceTraffic {
        static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("SvcnatModelTests/Fixtures/kube-proxy").path

        static func file(_ name: String) throws -> String { try String(contentsOfFile: fixtures + "/" + name, encoding: .utf8) }

        @Test(arguments: [
            ("TestClusterIPGeneral", ["--service-cidr", "172.30.0.0/16"]),
            ("TestLoadBalancer", []),
            ("TestExternalTrafficPolicyLocal", []),
            ("TestExternalTrafficPolicyCluster", []),
            ("TestNoEndpointsReject", []),
            ("TestInternalExternalMasquerade", []),
            ("TestOverallNFTablesRules", ["--service-cidr", "172.30.0.0/16", "--nodeport-addresses", "192.168.0.2/32"])
        ])
        func fixture(_ name: String, _ flags: [String]) throws {
            let report = try Self.runCase(
                name, manifests: try Self.file(name + ".yaml"), flows: try Self.file(name + ".flows"), flags: flags)
            #expect(report.disagree.isEmpty, "\(name):\n\(report.disagree.joined(separator: "\n"))")
            #expect(report.sent >= 5, "\(name): \(report.sent) flows sent, \(report.skipped) skipped")
            print(
                "conformance traffic \(name): \(report.sent) flows as packets, all agree: \(report.disagree.isEmpty); \(report.skipped) left to the walk"
            )
        }

        /// kube-proxy's TestNodePorts, IPv4: its nftables fake proxier's node port address (the
        /// primary node IP only) and the case with both node IPs' /24s, through svcnat's rules;
        /// and its iptables test's cases (every node address when --nodeport-addresses is not
        /// given; localhost never, svcnat's deliberate difference) through svcnat's --format
        /// iptables view loaded with iptables-nft-restore.
        @Test(arguments: [
            (["192.168.0.2/32"], false, false), (["192.168.0.0/24", "192.168.1.0/24"], true, false), ([], true, true),
            (["192.168.0.0/24"], false, true)
        ])
        func testNodePorts(_ addresses: [String], _ allowAlt: Bool, _ iptablesView: Bool) throws {
            let manifests = """
                apiVersion: v1
                kind: Service
                metadata: {name: svc1, namespace: ns1}
                spec: {type: NodePort, clusterIP: 172.30.0.41, ports: [{name: p80, port: 80, protocol: TCP, nodePort: 3001}]}
                ---
                apiVersion: discovery.k8s.io/v1
                kind: EndpointSlice
                metadata: {name: svc1-1, namespace: ns1, labels: {kubernetes.io/service-name: svc1}}
                addressType: IPv4
                endpoints: [{addresses: [10.180.0.1]}, {addresses: [10.180.2.1], nodeName: test-node}]
                ports: [{name: p80, port: 80, protocol: TCP}]
                """
            let both = "10.180.0.1:80, 10.180.2.1:80"
            let flows = """
                pod to cluster IP | 10.0.0.2 | 172.30.0.41 | 80 | \(both) | false
                external to nodePort | 203.0.113.2 | 192.168.0.2 | 3001 | \(both) | true
                node to nodePort | 192.168.0.2 | 192.168.0.2 | 3001 | \(both) | true
                \(allowAlt ? "external to nodePort on secondary IP | 203.0.113.2 | 192.168.1.2 | 3001 | \(both) | true" : "secondary nodeIP ignores NodePorts | 203.0.113.2 | 192.168.1.2 | 3001 |  | false")
                """
            let report = try Self.runCase(
                "TestNodePorts", manifests: manifests, flows: flows, flags: addresses.flatMap { ["--nodeport-addresses", $0] },
                program: iptablesView ? .svcnatIptables : .svcnat)
            #expect(report.disagree.isEmpty, "\(addresses):\n\(report.disagree.joined(separator: "\n"))")
            #expect(report.sent == 4)
        }

        /// kube-proxy's TestInternalTrafficPolicy, its "Local" case with one local endpoint, and
        /// its TestTerminatingEndpointsTrafficPolicyLocal case where this node has only a
        /// serving-and-terminating endpoint: the fallback to it, from outside; then the
        /// ...Cluster test's case where no endpoint anywhere is ready.
        @Test func testInternalTrafficPolicyAndTerminatingEndpoints() throws {
            let itp = """
                apiVersion: v1
                kind: Service
                metadata: {name: svc1, namespace: ns1}
                spec: {clusterIP: 172.30.1.1, internalTrafficPolicy: Local, ports: [{name: "", port: 80, protocol: TCP}]}
                ---
                apiVersion: discovery.k8s.io/v1
                kind: EndpointSlice
                metadata: {name: svc1-1, namespace: ns1, labels: {kubernetes.io/service-name: svc1}}
                addressType: IPv4
                ports: [{name: "", port: 80, protocol: TCP}]
                endpoints: [{addresses: [10.0.1.1], nodeName: test-node}, {addresses: [10.0.1.2], nodeName: node1}, {addresses: [10.0.1.3], nodeName: node2}]
                """
            let r1 = try Self.runCase(
                "TestInternalTrafficPolicy", manifests: itp, flows: "pod to ClusterIP | 10.0.0.2 | 172.30.1.1 | 80 | 10.0.1.1:80 | false",
                flags: [])
            #expect(r1.disagree.isEmpty && r1.sent == 1, "\(r1.disagree)")
            let term = """
                apiVersion: v1
                kind: Service
                metadata: {name: svc1, namespace: ns1}
                spec:
                  type: LoadBalancer
                  clusterIP: 172.30.1.1
                  externalTrafficPolicy: Local
                  healthCheckNodePort: 30000
                  ports: [{name: "", protocol: TCP, port: 80, targetPort: 80, nodePort: 3001}]
                status: {loadBalancer: {ingress: [{ip: 1.2.3.4}]}}
                ---
                apiVersion: discovery.k8s.io/v1
                kind: EndpointSlice
                metadata: {name: svc1-1, namespace: ns1, labels: {kubernetes.io/service-name: svc1}}
                addressType: IPv4
                ports: [{name: "", port: 80, protocol: TCP}]
                endpoints:
                  - {addresses: [10.0.1.1], nodeName: test-node, conditions: {ready: false, serving: true, terminating: true}}
                  - {addresses: [10.0.1.2], nodeName: host-1, conditions: {ready: true, serving: true, terminating: false}}
                """
            let r2 = try Self.runCase(
                "TestTerminatingEndpointsTrafficPolicyLocal", manifests: term,
                flows: """
                    external to LB, only a terminating endpoint here | 203.0.113.2 | 1.2.3.4 | 80 | 10.0.1.1:80 | false
                    external to node port, only a terminating endpoint here | 203.0.113.2 | 192.168.0.2 | 3001 | 10.0.1.1:80 | false
                    pod to ClusterIP: the ready one elsewhere | 10.0.0.2 | 172.30.1.1 | 80 | 10.0.1.2:80 | false
                    """, flags: [])
            #expect(r2.disagree.isEmpty && r2.sent == 3, "\(r2.disagree)")
            // TestTerminatingEndpointsTrafficPolicyCluster, "only terminating endpoints exist": no
            // ready endpoint anywhere, so every serving-and-terminating one, on any node, from
            // inside and outside (masqueraded: Cluster policy).
            let cluster =
                term.replacingOccurrences(of: "externalTrafficPolicy: Local", with: "externalTrafficPolicy: Cluster")
                .replacingOccurrences(of: "  healthCheckNodePort: 30000\n", with: "")
                .replacingOccurrences(
                    of: "{ready: true, serving: true, terminating: false}", with: "{ready: false, serving: true, terminating: true}")
                + "\n  - {addresses: [10.0.1.3], nodeName: host-1, conditions: {ready: false, serving: false, terminating: true}}"
            let both = "10.0.1.1:80, 10.0.1.2:80"
            let r3 = try Self.runCase(
                "TestTerminatingEndpointsTrafficPolicyCluster", manifests: cluster,
                flows: """
                    pod to ClusterIP | 10.0.0.2 | 172.30.1.1 | 80 | \(both) | false
                    external to LB | 203.0.113.2 | 1.2.3.4 | 80 | \(both) | true
                    """, flags: [])
            #expect(r3.disagree.isEmpty && r3.sent == 2, "\(r3.disagree)")
        }

        /// kube-proxy's iptables tests as real packets, over the Services they share with
        /// TestOverallNFTablesRules (the same six): kube-proxy's own expected TestOverallIPTablesRules
        /// rules, loaded into the node with iptables-nft-restore, and svcnat's --format iptables
        /// view of the same manifests, loaded the same way, each meet the flows of
        /// TestOverallNFTablesRules.flows. kube-proxy's iptables mode differs from its nftables
        /// mode in three of them, and those are expected as iptables does them: node ports answer
        /// on every node address (its fake proxier has no --nodeport-addresses), and it neither
        /// rejects a ClusterIP's unknown port nor drops an unallocated ClusterIP (both go on
        /// un-NATed: "" here, the sink). kube-proxy's rules are taken as its test prints them,
        /// with the jumps from the built-in chains that its proxier adds (iptablesJumpChains),
        /// without its localhost node port rules (no route_localnet here) and nfacct counters.
        @Test(arguments: ["kube-proxy's rules", "svcnat's --format iptables"])
        func testOverallIPTablesRules(_ whose: String) throws {
            var flows = try Self.file("TestOverallNFTablesRules.flows")
            for (line, iptables) in [
                (
                    "svc3 node port on the alternate node IP is not served | 203.0.113.2 | 192.168.1.2 | 3003 |  | false",
                    "10.180.0.3:80 | true"
                ),
                ("svc1 unknown port | 10.0.0.2 | 172.30.0.41 | 443 | REJECT | false", " | false"),
                ("unallocated ClusterIP | 10.0.0.2 | 172.30.0.50 | 80 | DROP | false", " | false")
            ] {
                #expect(flows.contains(line))
                let head = line.split(separator: "|").prefix(4).joined(separator: "|")
                flows = flows.replacingOccurrences(of: line, with: head + "| " + iptables)
            }
            var program = Program.svcnatIptables
            if whose == "kube-proxy's rules" {
                let dump = try Self.file("TestOverallIPTablesRules.iptables").split(separator: "\n")
                    .filter { !$0.hasPrefix("#") && !($0.hasPrefix("-A KUBE-NODEPORTS") && $0.contains("127.0.0.0/8")) }
                    .filter { !($0.hasPrefix("-A KUBE-FIREWALL") && $0.contains("localnet")) }
                    .map { $0.replacing(#/ -m nfacct --nfacct-name \S+/#, with: "") }
                // The built-in chains declared after each table's line, the jumps before its COMMIT.
                var out = "", table = ""
                for line in dump {
                    if line == "COMMIT" { out += (table == "filter" ? Self.jumps.filter : Self.jumps.nat) + "\n" }
                    out += line + "\n"
                    if line.hasPrefix("*") {
                        table = String(line.dropFirst())
                        let builtins = table == "filter" ? ["INPUT", "FORWARD", "OUTPUT"] : ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]
                        out += builtins.map { ":\($0) ACCEPT [0:0]\n" }.joined()
                    }
                }
                program = .kubeProxyIptables(out)
            }
            let report = try Self.runCase(
                "TestOverallIPTablesRules", manifests: try Self.file("TestOverallIPTablesRules.yaml"), flows: flows, flags: [],
                program: program)
            #expect(report.disagree.isEmpty, "\(whose):\n\(report.disagree.joined(separator: "\n"))")
            #expect(report.sent == 28)
            print(
                "conformance traffic TestOverallIPTablesRules (\(whose)): \(report.sent) flows as packets, all agree: \(report.disagree.isEmpty)"
            )
        }

        /// kube-proxy's TestSyncProxyRulesRepeated, TestDropInvalidRule and TestMasqueradeRule with
        /// the kernel as the oracle of iptables-restore: kube-proxy's nine partial inputs go, one
        /// after the other, into one namespace with `iptables-nft-restore --noflush` (what it runs);
        /// svcnat's whole --format iptables view of each step's cluster goes into another with a
        /// plain restore. After every step `iptables-nft-save` of both must hold the same KUBE-*
        /// chains, rule by rule, each rule's options compared as a set (option order is each
        /// tool's own), endpoint chains named by their DNAT target, with kube-proxy's localnet guard and nfacct counters and svcnat's
        /// --random-fully set aside. KUBE-FORWARD's INVALID drop and KUBE-POSTROUTING are among
        /// them at every step; with --conntrack-tcp-be-liberal the drop is gone from the kernel.
        @Test func iptablesDumpsInTheKernel() throws {
            let bed = Testbed("kpdump")
            defer { bed.close() }
            let kp = try bed.addNamespace("kp"), sv = try bed.addNamespace("sv")
            var map = KubeProxyAddresses()
            let clusters = try Self.file("TestSyncProxyRulesRepeated.yaml").components(separatedBy: "\n#### step ").dropFirst()
                .map { try map.translate(String($0.drop { $0 != "\n" })) }
            let inputs = try Self.file("TestSyncProxyRulesRepeated.iptables").components(separatedBy: "\n## step ").dropFirst()
                .map { try map.translate(String($0.drop { $0 != "\n" }).replacing(#/ -m nfacct --nfacct-name \S+/#, with: "")) }
            #expect(clusters.count == 9 && inputs.count == 9)
            let flags = ["--cluster-cidr", "198.19.0.0/16", "--node-name", "test-node"]
            for (i, (input, cluster)) in zip(inputs, clusters).enumerated() {
                let k = try bed.exec(kp, ["iptables-nft-restore", "--noflush"], stdin: input)
                #expect(k.code == 0, "step \(i + 1): kube-proxy's input: \(k.err)")
                let view = try bed.svcnat(sv, ["apply", "--dry-run", "--format", "iptables", "-f", try bed.writeManifest(cluster)] + flags)
                #expect(view.code == 0, "\(view.err)")
                let s = try bed.exec(sv, ["iptables-nft-restore"], stdin: view.out)
                #expect(s.code == 0, "step \(i + 1): svcnat's view: \(s.err)")
                let want = Self.kubeChains(try bed.sh(kp, ["iptables-nft-save"]))
                    .mapValues { $0.filter { !$0.contains("--comment block incoming localnet connections") } }
                let got = Self.kubeChains(try bed.sh(sv, ["iptables-nft-save"]).replacingOccurrences(of: " --random-fully", with: ""))
                let difference = Self.difference(want, got)
                #expect(difference.isEmpty, "step \(i + 1):\n\(difference)")
                #expect(got["filter KUBE-FORWARD"]?.contains { $0.contains("--ctstate INVALID") } == true)
                #expect(got["nat KUBE-POSTROUTING"]?.count == 3)
            }
            let liberal = try bed.svcnat(
                sv,
                ["apply", "--dry-run", "--format", "iptables", "-f", try bed.writeManifest(clusters[0]), "--conntrack-tcp-be-liberal"]
                    + flags)
            #expect(try bed.exec(sv, ["iptables-nft-restore"], stdin: liberal.out).code == 0)
            let forward = Self.kubeChains(try bed.sh(sv, ["iptables-nft-save"]))["filter KUBE-FORWARD"] ?? []
            #expect(forward.count == 2 && !forward.contains { $0.contains("INVALID") }, "\(forward)")
        }

        /// iptables-save's KUBE-* chains: "table chain" -> its rules, each as its option groups
        /// sorted (quotes dropped).
        /// An endpoint chain is named by its DNAT target ("KUBE-SEP[198.19.1.2:80]"): its hash
        /// covers the endpoint's address, which the address map changed (the unit test compares
        /// the names over kube-proxy's own addresses).
        static func kubeChains(_ save: String) -> [String: [String]] {
            var text = save
            for line in save.split(separator: "\n") where line.hasPrefix("-A KUBE-SEP-") && line.contains("--to-destination ") {
                let sep = line.split(separator: " ")[1]
                let target = line.split(separator: " ").drop { $0 != "--to-destination" }.dropFirst().first ?? ""
                text = text.replacingOccurrences(of: sep + " ", with: "KUBE-SEP[\(target)] ")
                    .replacingOccurrences(of: sep + "\n", with: "KUBE-SEP[\(target)]\n")
            }
            var out: [String: [String]] = [:], table = ""
            for line in text.split(separator: "\n") {
                if line.hasPrefix("*") { table = String(line.dropFirst()) }
                if line.hasPrefix(":KUBE-") { out[table + " " + line.dropFirst().split(separator: " ")[0], default: []] += [] }
                guard line.hasPrefix("-A KUBE-") else { continue }
                let words = line.replacingOccurrences(of: "\"", with: "").split(separator: " ").map(String.init)
                var groups: [String] = [], negate = false
                for w in words.dropFirst(2) {
                    if w == "!" {
                        negate = true
                    } else if w.hasPrefix("-") {
                        groups.append((negate ? "! " : "") + w)
                        negate = false
                    } else {
                        groups[groups.count - 1] += " " + w
                    }
                }
                out[table + " " + words[1], default: []].append(groups.sorted().joined(separator: " "))
            }
            return out
        }

        static func difference(_ want: [String: [String]], _ got: [String: [String]]) -> String {
            Set(want.keys).union(got.keys).sorted().filter { want[$0] != got[$0] }
                .map { "\($0):\n  kube-proxy: \(want[$0] ?? ["(no chain)"])\n  svcnat:     \(got[$0] ?? ["(no chain)"])" }
                .joined(separator: "\n")
        }

        /// kube-proxy's jumps from the built-in chains into its own (iptablesJumpChains in
        /// pkg/proxy/iptables/proxier.go), which its tests' dumps leave out.
        static let jumps = (
            filter: """
            -A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
            -A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
            -A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
            -A INPUT -j KUBE-FIREWALL
            -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
            -A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
            -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
            -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
            -A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
            -A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
            -A OUTPUT -j KUBE-FIREWALL
            """,
            nat: """
            -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
            -A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
            -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
            """
        )

        struct Report {
            var sent = 0, skipped = 0
            var disagree: [String] = []
        }

        /// Builds the namespaces for one kube-proxy test, applies its Services, sends its flows.
        /// What programs the node: `svcnat apply`; kube-proxy's own iptables-restore text (its
        /// addresses, mapped here); or svcnat's --format iptables view of the case. Both iptables
        /// texts are loaded with iptables-nft-restore.
        enum Program {
            case svcnat, kubeProxyIptables(String), svcnatIptables
        }

        static func runCase(_ name: String, manifests: String, flows text: String, flags: [String], program: Program = .svcnat) throws
            -> Report
        {
            var map = KubeProxyAddresses()
            let flows = text.split(separator: "\n").filter { !$0.hasPrefix("#") && !$0.trimmingCharacters(in: .whitespaces).isEmpty }
                .map { $0.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) } }
            // Pod namespaces in order of first appearance: the manifests' endpoints, then the flows.
            let yaml = try map.translate(manifests)
            for f in flows { _ = try map.translate(f[1] + " " + f[2] + " " + f[4]) }
            let args = try flags.map { try map.translate($0) }

            let bed = Testbed("kp")
            defer { bed.close() }
            let node = try bed.addNamespace("node"), client = try bed.addNamespace("cl"), sink = try bed.addNamespace("sk")
            func link(_ a: String, _ aName: String, _ b: String) throws {
                try run(["ip", "-n", a, "link", "add", aName, "type", "veth", "peer", "name", "eth0", "netns", b])
                try bed.sh(a, ["ip", "link", "set", aName, "up"])
                try bed.sh(b, ["ip", "link", "set", "eth0", "up"])
            }
            try link(node, "cl", client)
            for a in ["198.18.0.254/24", "198.18.10.2/24", "198.18.11.2/24", "198.18.200.11/32"] {
                try bed.sh(node, ["ip", "addr", "add", a, "dev", "cl"])
            }
            for a in ["198.18.0.2/24", "198.18.0.130/24"] { try bed.sh(client, ["ip", "addr", "add", a, "dev", "eth0"]) }
            for r in ["198.18.100.0/24", "198.18.200.0/24", "198.18.10.0/23"] {
                try bed.sh(client, ["ip", "route", "add", r, "via", "198.18.0.254"])
            }
            try link(node, "sk", sink)
            try bed.sh(node, ["ip", "addr", "add", "198.18.250.1/24", "dev", "sk"])
            try bed.sh(sink, ["ip", "addr", "add", "198.18.250.2/24", "dev", "eth0"])
            try bed.sh(sink, ["ip", "route", "add", "default", "via", "198.18.250.1"])
            for r in ["198.18.100.0/24", "198.18.200.0/24"] { try bed.sh(sink, ["ip", "route", "add", "local", r, "dev", "lo"]) }
            try bed.sh(node, ["ip", "route", "add", "default", "via", "198.18.250.2"])
            try bed.sh(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            try bed.sh(node, ["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"])
            var podNamespace: [String: String] = [:]  // kube-proxy pod address -> namespace
            for (original, n) in map.pods.sorted(by: { $0.value < $1.value }) {
                let pod = try bed.addNamespace("p\(n)")
                try link(node, "p\(n)", pod)
                try bed.sh(node, ["ip", "addr", "add", "198.19.\(n).1/24", "dev", "p\(n)"])
                try bed.sh(pod, ["ip", "addr", "add", "198.19.\(n).2/24", "dev", "eth0"])
                try bed.sh(pod, ["ip", "route", "add", "default", "via", "198.19.\(n).1"])
                podNamespace[original] = pod
            }
            // Servers: every pod on every endpoint port the flows name, as kube-proxy names the
            // endpoint; the node ("host") and the sink on every destination port.
            let endpointPorts = Set(
                flows.flatMap { $0[4].split(separator: ",").compactMap { $0.split(separator: ":").last.flatMap { Int($0) } } })
            for (original, pod) in podNamespace {
                for p in endpointPorts { try bed.startServer(in: pod, name: "\(original):\(p)", port: p) }
            }
            for p in Set(flows.map { Int($0[3])! }) {
                try bed.startServer(in: node, name: "host", port: p)
                try bed.startServer(in: sink, name: "sink", port: p)
            }

            let input = try bed.writeManifest(yaml)
            let common = ["--cluster-cidr", "198.19.0.0/16", "--node-name", "test-node"] + args
            var report = Report()
            switch program {
            case .svcnat:
                let applied = try bed.svcnat(node, ["apply", "-f", input] + common)
                guard applied.code == 0 else {
                    report.disagree.append("svcnat apply: exit \(applied.code): \(applied.err)")
                    return report
                }
            case .kubeProxyIptables, .svcnatIptables:
                var text: String
                if case .kubeProxyIptables(let rules) = program {
                    text = try map.translate(rules)
                } else {
                    text = try bed.svcnat(node, ["apply", "--dry-run", "--format", "iptables", "-f", input] + common).out
                }
                let loaded = try bed.exec(node, ["iptables-nft-restore"], stdin: text)
                guard loaded.code == 0 else {
                    report.disagree.append("iptables-nft-restore: exit \(loaded.code): \(loaded.err)")
                    return report
                }
            }
            // The controls: a packet forwarded un-NATed reaches the sink, one delivered to the
            // node un-NATed its host server, so neither would look like a DROP.
            let probe = Int(flows[0][3])!
            for (dst, want) in [("198.18.200.250", "sink"), ("198.18.0.254", "host")] {
                let got = try bed.client(in: client, "tcp", dst, probe, count: 1)
                if got.answers != [want: 1] { report.disagree.append("control \(dst):\(probe) should answer \(want): \(got)") }
            }
            for f in flows {
                let (flow, source, destination, port, output, masq) = (f[0], f[1], f[2], Int(f[3])!, f[4], f[5] == "true")
                let proto = f.count > 6 ? f[6] : "tcp"
                let from: String
                if source.hasPrefix("203.0.113.") {
                    from = client
                } else if source == "192.168.0.2" {
                    from = node
                } else if let pod = podNamespace[source] {
                    from = pod
                } else {
                    report.skipped += 1
                    continue
                }
                guard proto != "sctp" else {
                    report.skipped += 1
                    continue
                }
                let src = try map.translate(source), dst = try map.translate(destination)
                let wanted = Set(output.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
                let count = output == "DROP" ? 1 : wanted.count > 1 ? 16 : 3
                let got = try bed.client(in: from, proto, dst, port, count: count, from: src)
                report.sent += 1
                let ok: Bool
                switch output {
                case "DROP": ok = got.timeouts == count && got.answers.isEmpty && got.refused == 0
                case "REJECT": ok = got.refused == count && got.answers.isEmpty
                case "": ok = got.answers == [KubeProxyAddresses.nodeIPs.contains(destination) ? "host" : "sink": count]
                default:
                    let seen = Set(got.sources.keys)
                    ok =
                        Set(got.answers.keys) == wanted && got.answers.values.reduce(0, +) == count
                        && (masq ? !seen.contains(src) : seen == [src])
                }
                if !ok {
                    report.disagree.append(
                        "\(flow) (\(proto) \(src) -> \(dst):\(port)): kube-proxy \(output.isEmpty ? "\"\"" : output), masq \(masq); got \(got)"
                    )
                }
            }
            return report
        }
    }
}

/// kube-proxy's test addresses mapped into this project's test plan (see ConformanceTraffic).
struct KubeProxyAddresses {
    /// kube-proxy pod address -> pod link number N (198.19.N.2).
    var pods: [String: Int] = [:]
    static let nodeIPs: Set<String> = ["192.168.0.2", "192.168.1.2", "192.168.99.11"]

    mutating func address(_ ip: String) throws -> String {
        let o = ip.split(separator: ".").map { Int($0)! }
        switch (o[0], o[1], o[2]) {
        case (10, _, _):
            if pods[ip] == nil { pods[ip] = pods.count + 1 }
            return "198.19.\(pods[ip]!).2"
        case (172, 30, 0): return "198.18.100.\(o[3])"
        case (172, 30, 1) where o[3] < 56: return "198.18.100.\(200 + o[3])"
        case (192, 168, 0): return "198.18.10.\(o[3])"
        case (192, 168, 1): return "198.18.11.\(o[3])"
        case (192, 168, 99): return "198.18.200.\(o[3])"
        case (203, 0, 113): return "198.18.0.\(o[3])"
        default:
            switch ip {
            case "1.2.3.4": return "198.18.200.104"
            case "5.6.7.8": return "198.18.200.108"
            case "9.10.11.12": return "198.18.200.112"
            default: throw TestbedError("kube-proxy address \(ip) has no place in the test plan")
            }
        }
    }

    /// Every IPv4 address and CIDR in `text`, mapped (a CIDR by its network: 10.0.0.0/8 is the
    /// cluster CIDR 198.19.0.0/16, 172.30.0.0/16 the service CIDR 198.18.100.0/24).
    mutating func translate(_ text: String) throws -> String {
        let cidrs = [
            "10.0.0.0/8": "198.19.0.0/16", "172.30.0.0/16": "198.18.100.0/24", "192.168.0.0/24": "198.18.10.0/24",
            "192.168.1.0/24": "198.18.11.0/24", "203.0.113.0/25": "198.18.0.0/25", "192.168.0.2/32": "198.18.10.2/32",
            // Loopback is loopback (kube-proxy's localnet guard).
            "127.0.0.0/8": "127.0.0.0/8"
        ]
        // Runs of digits, dots and slashes; those shaped like an address or a CIDR are mapped.
        var out = "", run = ""
        func flush() throws {
            // A sentence's full stop is not part of the address before it.
            var tail = ""
            while run.hasSuffix(".") { run.removeLast(); tail += "." }
            defer { run = ""; out += tail }
            let parts = run.split(separator: "/", omittingEmptySubsequences: false)
            let octets = parts[0].split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count <= 2, octets.count == 4, octets.allSatisfy({ !$0.isEmpty && Int($0).map { $0 < 256 } == true }) else {
                out += run
                return
            }
            if parts.count == 2 {
                guard let c = cidrs[run] else { throw TestbedError("kube-proxy CIDR \(run) has no place in the test plan") }
                out += c
            } else {
                out += try address(run)
            }
        }
        for ch in text {
            if ch.isASCII && (ch.isNumber || ch == "." || ch == "/") {
                run.append(ch)
            } else {
                try flush()
                out.append(ch)
            }
        }
        try flush()
        return out
    }
}
