import Foundation
import NFTModel
import SvcnatCore
import SvcnatExplain
import SvcnatModel
import SvcnatSources
import Testing

/// kube-proxy's iptables dumps against svcnat's `--format iptables`, rule by rule (issue 11).
/// Each case is a kube-proxy test's Services and EndpointSlices as manifests, its fake
/// proxier's settings as svcnat's flags, and its expected dump, all as data under
/// Fixtures/kube-proxy/.
///
/// The normalisation, stated once: only KUBE-* chains are compared (kube-proxy's tests leave
/// out the jumps from the built-in chains); each chain's rules in order; within a rule, its
/// option groups (`-m tcp`, `-d 1.2.3.4`, `! -s 10.0.0.0/8`, `--comment X`) as a sorted list,
/// so argument order does not count; quotes, a /32 host mask and iptables-save's printed
/// defaults (`--reject-with icmp-port-unreachable`, `--mask 255.255.255.255 --rsource`) dropped;
/// `--or-mark M` and `--xor-mark M` read as the `--set-xmark M/M` and `M/0x0` iptables-save
/// prints; probabilities compared to five places; nfacct counters (`-m nfacct`, an optional
/// kube-proxy metric) dropped; `MASQUERADE --random-fully` read as `MASQUERADE` (kube-proxy's
/// fake iptables lacks random-fully; svcnat always asks for it).
///
/// Deliberate differences, removed from kube-proxy's side with the reason:
/// - localhost NodePorts (`-d 127.0.0.0/8` rules in nat KUBE-NODEPORTS): svcnat serves node ports
///   on the node's addresses only, never on 127.0.0.0/8, as kube-proxy's nftables mode does
///   (route_localnet exposes localhost services to the network); with them goes the KUBE-FIREWALL
///   "block incoming localnet connections" guard, which kube-proxy installs only while it
///   serves them (its `--iptables-localhost-nodeports=false` leaves the chain empty, as svcnat).
@Suite struct Conformance {
    static let dir = fixtures + "/kube-proxy"

    /// "table/chain" -> its rules, normalised.
    typealias Dump = [String: [[String]]]

    static func words(_ line: Substring) -> [String] {
        var out: [String] = [], cur = "", quoted = false, any = false
        for c in line {
            if c == "\"" { quoted.toggle(); any = true; continue }
            if c == " " && !quoted {
                if any || !cur.isEmpty { out.append(cur) }
                cur = ""; any = false
            } else {
                cur.append(c)
            }
        }
        if any || !cur.isEmpty { out.append(cur) }
        return out
    }

    static func normalised(_ args: [String]) -> [String] {
        var groups: [[String]] = []
        var i = 0
        while i < args.count {
            var g: [String] = []
            if args[i] == "!" { g.append("!"); i += 1 }
            guard i < args.count else { break }
            g.append(args[i]); i += 1
            while i < args.count, !args[i].hasPrefix("-"), args[i] != "!" { g.append(args[i]); i += 1 }
            groups.append(g)
        }
        var out: [String] = []
        for var g in groups {
            if let opt = g.first(where: { $0 != "!" }), ["-s", "-d"].contains(opt), g.last?.hasSuffix("/32") == true {
                g[g.count - 1] = String(g[g.count - 1].dropLast(3))
            }
            switch g {
            case ["--reject-with", "icmp-port-unreachable"], ["--mask", "255.255.255.255"], ["--rsource"], ["-m", "nfacct"],
                ["--random-fully"]:
                continue
            default: break
            }
            if g.first == "--nfacct-name" { continue }
            if g.first == "--or-mark", g.count == 2 { g = ["--set-xmark", "\(g[1])/\(g[1])"] }
            if g.first == "--xor-mark", g.count == 2 { g = ["--set-xmark", "\(g[1])/0x0"] }
            if g.first == "--probability", g.count == 2, let p = Double(g[1]) { g[1] = String(format: "%.5f", p) }
            out.append(g.joined(separator: " "))
        }
        return out.sorted()
    }

    /// The KUBE-* chains of an iptables-restore text, normalised; `declared` lists them.
    static func dump(_ text: String) -> (rules: Dump, declared: Set<String>) {
        var rules: Dump = [:], declared = Set<String>()
        var table = ""
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            if line.hasPrefix("*") { table = String(line.dropFirst()); continue }
            if line.hasPrefix(":KUBE-") { declared.insert(table + "/" + String(line.dropFirst().split(separator: " ")[0])) }
            guard line.hasPrefix("-A KUBE-") else { continue }
            let w = words(line)
            rules[table + "/" + w[1], default: []].append(normalised(Array(w.dropFirst(2))))
        }
        return (rules, declared)
    }

    /// What svcnat renders for a case's manifests and flags.
    static func rendered(_ name: String, _ config: ProxyConfig) throws -> String {
        let input = try ManifestSource.load([dir + "/\(name).yaml"])
        let tables = try Reconciler.desiredTables(input.state, config: config)
        return IptablesRenderer(config.translator).render(tables[0].proxy)
    }

    static func expected(_ name: String, removing deliberate: (String) -> Bool) throws -> String {
        try String(contentsOfFile: dir + "/\(name).iptables", encoding: .utf8).split(separator: "\n").filter { !deliberate(String($0)) }
            .joined(separator: "\n")
    }

    /// Every chain of both, rule by rule: the differences, one line each.
    static func differences(_ want: String, _ got: String) -> [String] {
        let (w, wd) = dump(want), (g, gd) = dump(got)
        var out: [String] = []
        for c in wd.symmetricDifference(gd).sorted() { out.append("\(c): declared by \(wd.contains(c) ? "kube-proxy" : "svcnat") only") }
        for c in Set(w.keys).union(g.keys).sorted() where w[c] != g[c] {
            out.append("\(c):\n  kube-proxy: \(w[c] ?? [])\n  svcnat:     \(g[c] ?? [])")
        }
        return out
    }

    /// kube-proxy's localhost node port rules, and the KUBE-FIREWALL guard it installs because it
    /// serves them (route_localnet).
    static func localhostNodePorts(_ line: String) -> Bool {
        (line.hasPrefix("-A KUBE-NODEPORTS") && line.contains("-d 127.0.0.0/8"))
            || (line.hasPrefix("-A KUBE-FIREWALL") && line.contains("block incoming localnet connections"))
    }

    @Test func testOverallIPTablesRules() throws {
        let config = ProxyConfig(clusterCIDRs: [IPPrefix("10.0.0.0/8")!], nodeName: "test-node")
        let got = try Self.rendered("TestOverallIPTablesRules", config)
        let want = try Self.expected("TestOverallIPTablesRules", removing: Self.localhostNodePorts)
        let diff = Self.differences(want, got)
        #expect(diff.isEmpty, "\(diff.joined(separator: "\n"))")
        // The comparison can fail: one rule's argument changed is one difference.
        #expect(Self.differences(want, got.replacingOccurrences(of: "--dport 3003", with: "--dport 3004")).count == 1)
    }

    // MARK: - packet flows

    /// One of kube-proxy's packetFlowTest rows.
    struct Flow: CustomStringConvertible {
        var name: String, source: String, destination: String, port: UInt16, output: String, masq: Bool
        var proto: TransportProtocol = .tcp
        var description: String { name }
    }

    static func flows(_ name: String) throws -> [Flow] {
        try String(contentsOfFile: dir + "/\(name).flows", encoding: .utf8).split(separator: "\n").filter { !$0.hasPrefix("#") }.map {
            let f = $0.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            var flow = Flow(name: f[0], source: f[1], destination: f[2], port: UInt16(f[3])!, output: f[4], masq: f[5] == "true")
            if f.count > 6 { flow.proto = f[6] == "udp" ? .udp : f[6] == "sctp" ? .sctp : .tcp }
            return flow
        }
    }

    /// kube-proxy's fake node addresses (its testNodeIPs, IPv4).
    static let nodeIPs = Set(["192.168.0.2", "192.168.1.2", "192.168.99.11"].map { IPAddress($0)! })

    /// What svcnat's ruleset does with a flow, as kube-proxy's tests write it: the endpoints
    /// reached ("a:80, b:80", sorted) or DROP / REJECT, and whether it is masqueraded.
    static func walk(_ r: Ruleset, _ f: Flow, local: Set<IPAddress> = nodeIPs) -> (String, Bool) {
        let o = PacketWalk.walk(
            .init(source: IPAddress(f.source)!, destination: IPAddress(f.destination)!, port: f.port, proto: f.proto), in: r,
            local: local)
        var eps = Set<String>()
        for x in o {
            switch x.fate {
            case .accepted(let ep?): eps.insert(ep.description)
            case .dropped: return ("DROP", false)
            case .rejected: return ("REJECT", false)
            case .accepted(nil): return ("not NATed", false)
            case .unknownRule(let r): return ("walk stopped at \(r)", false)
            }
        }
        return (eps.sorted().joined(separator: ", "), o.contains { $0.masqueraded })
    }

    /// kube-proxy's four cases: with and without its local traffic detector (svcnat's
    /// --cluster-cidr), with and without --masquerade-all; each changes the named flows.
    @Test(arguments: ["base", "no LocalTrafficDetector", "masqueradeAll", "masqueradeAll, no LocalTrafficDetector"])
    func testInternalExternalMasquerade(_ variant: String) throws {
        let detector = !variant.contains("no LocalTrafficDetector"), masqAll = variant.hasPrefix("masqueradeAll")
        let config = ProxyConfig(
            clusterCIDRs: detector ? [IPPrefix("10.0.0.0/8")!] : [], masqueradeAll: masqAll, nodeName: "test-node")
        let input = try ManifestSource.load([Self.dir + "/TestInternalExternalMasquerade.yaml"])
        let r = try Reconciler.desired(input.state, config: config).1
        var flows = try Self.flows("TestInternalExternalMasquerade")
        #expect(flows.count == 27)
        for i in flows.indices {
            let n = flows[i].name
            if !detector {
                // No detector: ClusterIP traffic is taken for pod traffic, and there is no
                // short-circuit for pods to external destinations of eTP:Local Services.
                if n.hasPrefix("node to ClusterIP") || n.hasPrefix("external to ClusterIP") {
                    flows[i].masq = masqAll ? flows[i].masq : false
                }
                if n == "pod to NodePort with eTP:Local" || n == "pod to LB with eTP:Local" { flows[i].output = "10.180.0.2:80" }
            }
            if masqAll, n.hasPrefix("pod to ClusterIP") { flows[i].masq = true }
        }
        let d = Self.disagreements(r, flows)
        #expect(d.isEmpty, "\(variant):\n\(Self.lines(d, flows))")
    }

    /// The flows of one kube-proxy test that disagree, by flow name.
    static func disagreements(_ name: String, _ config: ProxyConfig) throws -> [String: String] {
        let input = try ManifestSource.load([dir + "/\(name).yaml"])
        return disagreements(try Reconciler.desired(input.state, config: config).1, try flows(name))
    }

    /// The flows whose fate in `r` is not kube-proxy's, by flow name: "kube-proxy X, masq Y;
    /// svcnat Z, masq W". `notNATed` is how the test writes a flow that is not NATed (its
    /// TestNodePorts cases write "").
    static func disagreements(_ r: Ruleset, _ flows: [Flow], local: Set<IPAddress> = nodeIPs, notNATed: String = "not NATed")
        -> [String: String]
    {
        var out: [String: String] = [:]
        for f in flows {
            var (output, masq) = walk(r, f, local: local)
            if output == "not NATed" { output = notNATed }
            if output != f.output || masq != f.masq {
                out[f.name] = "kube-proxy \(f.output), masq \(f.masq); svcnat \(output), masq \(masq)"
            }
        }
        return out
    }

    /// The disagreements one per line, in flow order.
    static func lines(_ d: [String: String], _ flows: [Flow]) -> String {
        flows.compactMap { f in d[f.name].map { "\(f.name): \($0)" } }.joined(separator: "\n")
    }

    @Test func testClusterIPGeneral() throws {
        let config = ProxyConfig(clusterCIDRs: [IPPrefix("10.0.0.0/8")!], nodeName: "test-node", serviceCIDRs: [IPPrefix("172.30.0.0/16")!])
        let d = try Self.disagreements("TestClusterIPGeneral", config)
        #expect(d.isEmpty, "\(d)")
    }

    /// With source ranges that hold a node IP (kube-proxy's testNodeIP 192.168.0.2, in svcnat
    /// the namespace's own addresses), the load-balancer IPs themselves are admitted as
    /// sources too (a VIP-like LB's address on the node, reaching itself). Without the node
    /// IP, those two flows are dropped: the comparison tells.
    @Test func testLoadBalancer() throws {
        var config = ProxyConfig(clusterCIDRs: [IPPrefix("10.0.0.0/8")!], nodeName: "test-node")
        config.nodeIPs = Set(Self.nodeIPs)
        let d = try Self.disagreements("TestLoadBalancer", config)
        #expect(d.isEmpty, "\(d)")
        // The iptables view: one firewall chain for both LB IPs, as kube-proxy writes it (two
        // ranges, the two LB IPs as sources, the closing comment rule).
        let fw = Self.dump(try Self.rendered("TestLoadBalancer", config)).rules["nat/KUBE-FW-XPGD46QRK7WJZT7O"]
        #expect(fw?.count == 5, "\(fw ?? [])")
        config.nodeIPs = []
        #expect(
            Set(try Self.disagreements("TestLoadBalancer", config).keys) == [
                "same node to LB1, SNATted to LB1 (implicitly allowed)", "same node to LB2, SNATted to LB2 (implicitly allowed)"
            ])
    }

    @Test(arguments: [
        ("TestExternalTrafficPolicyLocal", 7), ("TestExternalTrafficPolicyCluster", 7), ("TestNoEndpointsReject", 6)
    ])
    func flowTable(_ name: String, _ count: Int) throws {
        let d = try Self.disagreements(name, ProxyConfig(clusterCIDRs: [IPPrefix("10.0.0.0/8")!], nodeName: "test-node"))
        #expect(try Self.flows(name).count == count)
        #expect(d.isEmpty, "\(d)")
    }

    /// kube-proxy's TestInternalTrafficPolicy: its four cases (policy, endpoints with their nodes,
    /// the one flow from a pod to the ClusterIP), then the same after the slice is deleted.
    @Test(arguments: [
        ("Cluster", [("10.0.1.1", "test-node"), ("10.0.1.2", "node1"), ("10.0.1.3", "node2")], "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80"),
        ("Local", [("10.0.1.1", "test-node"), ("10.0.1.2", "node1"), ("10.0.1.3", "node2")], "10.0.1.1:80"),
        ("Local", [("10.0.1.1", "test-node"), ("10.0.1.2", "test-node"), ("10.0.1.3", "node2")], "10.0.1.1:80, 10.0.1.2:80"),
        ("Local", [("10.0.1.1", "node0"), ("10.0.1.2", "node1"), ("10.0.1.3", "node2")], "DROP")
    ])
    func testInternalTrafficPolicy(_ policy: String, _ endpoints: [(String, String)], _ output: String) throws {
        let service = """
            apiVersion: v1
            kind: Service
            metadata: {name: svc1, namespace: ns1}
            spec:
              clusterIP: 172.30.1.1
              internalTrafficPolicy: \(policy)
              selector: {foo: bar}
              ports: [{name: "", port: 80, protocol: TCP}]

            """
        let slice = """
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: svc1-1, namespace: ns1, labels: {kubernetes.io/service-name: svc1}}
            addressType: IPv4
            ports: [{name: "", port: 80, protocol: TCP}]
            endpoints: [\(endpoints.map { "{addresses: [\($0.0)], conditions: {ready: true}, nodeName: \($0.1)}" }.joined(separator: ", "))]

            """
        let config = ProxyConfig(clusterCIDRs: [IPPrefix("10.0.0.0/8")!], nodeName: "test-node")
        let flow = Flow(name: "pod to ClusterIP", source: "10.0.0.2", destination: "172.30.1.1", port: 80, output: output, masq: false)
        for (text, want) in [(service + slice, output), (service, "REJECT")] {
            var d = ManifestDecoder()
            d.decode(text, file: "svc1.yaml")
            #expect(d.errors.isEmpty, "\(d.errors)")
            let r = try Reconciler.desired(d.state, config: config).1
            #expect(Self.walk(r, flow) == (want, false))
        }
    }
}
